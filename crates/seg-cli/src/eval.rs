//! `seg-cli eval`: probability maps against ground truth, paired by case ID.

use anyhow::{bail, Context, Result};
use clap::Args;
use seg_data::dataset::case_id;
use seg_data::io::image2d::read_mask;
use seg_data::spec::{files_by_case, DatasetSpec};
use seg_data::{read_image, FileKind};
use seg_train::metrics::{self, image_metrics, summarise};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Probability maps (PNG; value / max of the bit depth).
    #[arg(long)]
    pred: PathBuf,
    /// Ground-truth masks (any non-zero is foreground): a folder of masks, or a
    /// dataset folder (DRIVE, images/ + masks/ [+ fov/]) whose labels and FOV masks are used.
    #[arg(long)]
    gt: PathBuf,
    /// Field-of-view masks: only pixels inside count.
    #[arg(long)]
    fov: Option<PathBuf>,
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Pixel spacing `row,col` for HD95 (default 1,1: pixels).
    #[arg(long, default_value = "1,1")]
    spacing: String,
    /// Write the JSON report to FILE, or `-` for standard output.
    #[arg(long)]
    json: Option<String>,
    /// Write per-image rows as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
}

fn by_case(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    if !dir.is_dir() {
        bail!("{}: no such folder", dir.display());
    }
    Ok(files_by_case(dir, FileKind::Image)?)
}

/// Case ID → file maps of the ground truth and, when the ground truth is a
/// dataset folder, its FOV masks.
type Truth = (BTreeMap<String, PathBuf>, Option<BTreeMap<String, PathBuf>>);

/// The ground truth by case ID: the labels (and FOV masks) of a dataset
/// folder (DRIVE, paired folders), else the images of a plain folder.
fn ground_truth(dir: &Path) -> Result<Truth> {
    if !dir.is_dir() {
        bail!("{}: no such folder", dir.display());
    }
    let spec = match DatasetSpec::detect(dir) {
        Ok(s) => s,
        Err(seg_data::Error::NoLayout { .. }) => return Ok((by_case(dir)?, None)),
        Err(e) => return Err(e.into()),
    };
    if let DatasetSpec::Msd(m) = spec {
        return Err(seg_data::Error::NotSupportedYet {
            name: m.name(),
            path: m.root,
            layout: "MSD/nnU-Net",
            what: "evaluating label volumes".into(),
        }
        .into());
    }
    let (mut gts, mut fovs) = (BTreeMap::new(), BTreeMap::new());
    for c in spec.cases()?.cases {
        let Some(label) = c.label else { continue };
        let id = case_id(&label);
        if let Some(prev) = gts.insert(id.clone(), label.clone()) {
            bail!(seg_data::Error::DuplicateCase {
                case: id,
                a: prev,
                b: label
            });
        }
        if let Some(f) = c.fov {
            fovs.insert(id, f);
        }
    }
    Ok((gts, (!fovs.is_empty()).then_some(fovs)))
}

pub fn run(a: EvalArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.threshold) {
        bail!("--threshold must be in [0, 1]");
    }
    let spacing: Vec<f64> = a
        .spacing
        .split(',')
        .map(|s| s.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--spacing {:?}: expected ROW,COL", a.spacing))?;
    if spacing.len() != 2 || spacing.iter().any(|s| s.is_nan() || *s <= 0.0) {
        bail!("--spacing needs two positive numbers ROW,COL");
    }
    let preds = by_case(&a.pred)?;
    let (gts, dataset_fovs) = ground_truth(&a.gt)?;
    let fovs = match &a.fov {
        Some(d) => Some(by_case(d)?),
        None => dataset_fovs,
    };
    let mut unpaired: Vec<String> = Vec::new();
    for (id, p) in &preds {
        if !gts.contains_key(id) {
            unpaired.push(format!("{} (no ground truth)", p.display()));
        }
    }
    for (id, p) in &gts {
        if !preds.contains_key(id) {
            unpaired.push(format!("{} (no prediction)", p.display()));
        }
    }
    let mut images = Vec::new();
    let (mut all_p, mut all_g) = (Vec::new(), Vec::new());
    for (id, pp) in &preds {
        let Some(gp) = gts.get(id) else { continue };
        let pv = read_image(pp)?;
        if pv.shape[2] != 1 {
            bail!(
                "{}: a probability map must have one channel, found {}",
                pp.display(),
                pv.shape[2]
            );
        }
        let max = match pv.stored {
            seg_data::StoredType::Uint16 => 65535.0,
            seg_data::StoredType::Uint8 => 255.0,
            _ => 1.0,
        };
        let prob: Vec<f32> = pv.values.iter().map(|v| v / max).collect();
        let gt = read_mask(gp)?;
        let (h, w) = (pv.shape[0], pv.shape[1]);
        if (gt.height, gt.width) != (h, w) {
            bail!(
                "{} is {}x{} but {} is {h}x{w}",
                gp.display(),
                gt.height,
                gt.width,
                pp.display()
            );
        }
        let fov = match fovs.as_ref().and_then(|f| f.get(id)) {
            Some(fp) => {
                let m = read_mask(fp)?;
                if (m.height, m.width) != (h, w) {
                    bail!(
                        "{} is {}x{} but {} is {h}x{w}",
                        fp.display(),
                        m.height,
                        m.width,
                        pp.display()
                    );
                }
                Some(m.data)
            }
            None => {
                if fovs.is_some() {
                    unpaired.push(format!(
                        "{} (no FOV mask; all pixels counted)",
                        pp.display()
                    ));
                }
                None
            }
        };
        images.push(image_metrics(
            id,
            &prob,
            &gt.data,
            fov.as_deref(),
            h,
            w,
            a.threshold,
            [spacing[0], spacing[1]],
        ));
        let (p, g) = metrics::in_fov(&prob, &gt.data, fov.as_deref());
        all_p.extend(p);
        all_g.extend(g);
    }
    for u in &unpaired {
        eprintln!("unpaired: {u}");
    }
    if images.is_empty() {
        bail!("no prediction/ground-truth pairs (case IDs: the file stem up to its first '_')");
    }
    let summary = summarise(
        a.threshold,
        images,
        metrics::auc_roc(&all_p, &all_g),
        metrics::average_precision(&all_p, &all_g),
    );
    let mut report = serde_json::to_value(&summary)?;
    report["unpaired"] = serde_json::json!(unpaired);
    let text = serde_json::to_string_pretty(&report)?;
    match a.json.as_deref() {
        Some("-") => println!("{text}"),
        Some(f) => seg_data::io::atomic_write(Path::new(f), text.as_bytes())?,
        None => {}
    }
    if let Some(c) = &a.csv {
        let mut s = String::from("id,tp,fp,fn,tn,dice,iou,sensitivity,specificity,precision,accuracy,auc_roc,average_precision,hd95\n");
        let o = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        for m in &summary.images {
            let sc = m.scores;
            s.push_str(&format!(
                "{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{},{},{}\n",
                m.id,
                m.counts.tp,
                m.counts.fp,
                m.counts.fn_,
                m.counts.tn,
                sc.dice,
                sc.iou,
                sc.sensitivity,
                sc.specificity,
                sc.precision,
                sc.accuracy,
                o(m.auc_roc),
                o(m.average_precision),
                o(m.hd95)
            ));
        }
        seg_data::io::atomic_write(c, s.as_bytes())?;
    }
    if a.json.as_deref() != Some("-") {
        let p = &summary.pooled;
        let m = &summary.mean;
        println!(
            "{} images at threshold {}: pooled Dice {:.4} sensitivity {:.4} specificity {:.4} accuracy {:.4} AUC {}; mean Dice {:.4}",
            summary.images.len(),
            a.threshold,
            p["dice"].as_f64().unwrap_or(0.0),
            p["sensitivity"].as_f64().unwrap_or(0.0),
            p["specificity"].as_f64().unwrap_or(0.0),
            p["accuracy"].as_f64().unwrap_or(0.0),
            p["auc_roc"].as_f64().map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
            m["dice"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
