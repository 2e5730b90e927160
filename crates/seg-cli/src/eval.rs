//! `seg-cli eval`: predictions against ground truth, paired by case, in one
//! of two modes: binary probability maps of 2D images (`seg_train::metrics`)
//! or multi-class label maps, 2D or 3D (`seg_train::eval`). The rule that
//! picks the mode is [`LABEL_RULE`], printed by `--help`.

use anyhow::{bail, Context, Result};
use clap::Args;
use seg_data::dataset::{case_id, file_stem};
use seg_data::io::file_kind;
use seg_data::io::image2d::read_mask;
use seg_data::spec::{files_by_case, DatasetSpec};
use seg_data::{read_image, FileKind};
use seg_train::eval::{evaluate_labels, summarise_labels, LabelMap, LabelSummary};
use seg_train::metrics::{self, image_metrics, summarise};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How the mode is chosen, for `--help`.
const LABEL_RULE: &str = "Modes:
  label maps (multi-class): integer class maps, 2D (PNG ...) or 3D (NIfTI .nii/.nii.gz), any
    stored type holding integers (uint8, int16, float32 ...). Per case and per class (every
    non-zero label found in any file; 0 is background): Dice, IoU, HD95 and ASD (average
    symmetric surface distance) in mm from the voxel spacing (NIfTI pixdim; images 1, or
    --spacing), NSD (normalised surface Dice at --tolerance-mm), volume difference
    (predicted - reference, mm3 and ml, and relative). Means per class over cases and
    overall (mean of the class means).
    Empty masks: both empty -> Dice 1, IoU 1, HD95/ASD/NSD null; one empty -> Dice 0,
    IoU 0, HD95/ASD null, NSD 0. Null values are left out of the means.
  probability maps (binary): 2D probability PNGs (value / max of the bit depth) against
    masks (any non-zero is foreground), at --threshold, inside --fov: Dice, IoU,
    sensitivity, specificity, precision, accuracy, AUC, AP, HD95; per image, mean, pooled.

Which mode (unless --labels or --probabilities says):
  label maps when --pred holds a NIfTI file, or --gt is an MSD/nnU-Net dataset folder, or
  every prediction is a one-channel 8-bit image with values 0..127, not all 0 (label
  PNGs 0, 1, 2 ...); probability maps otherwise (16-bit probability PNGs from predict,
  8-bit probability maps, 0/255 masks).

Pairing in label mode: the same file stem (hippocampus_001.nii.gz in both folders), else
  a prediction stem that extends a reference stem by _... (case_001_seg), else the case
  ID (the stem up to its first '_') when it names one file on each side.
  Probability mode pairs by case ID.

Examples:
  seg-cli eval --pred out/ --gt DRIVE/training/1st_manual --fov DRIVE/training/mask --json report.json
  seg-cli eval --pred out/ --gt Task04_Hippocampus --json report.json --csv report.csv
  seg-cli eval --pred out/ --gt labelsTr/ --tolerance-mm 2 --json -
  seg-cli eval --labels --pred pred_png/ --gt gt_png/ --spacing 0.5,0.5";

#[derive(Args, Debug)]
#[command(after_long_help = LABEL_RULE)]
pub struct EvalArgs {
    /// Predictions: probability maps (PNG) or label maps (PNG, NIfTI); the
    /// mode is chosen from the files (see below) unless --labels or
    /// --probabilities says.
    #[arg(long)]
    pred: PathBuf,
    /// Ground truth: a folder of masks or label maps, or a dataset folder
    /// (DRIVE, images/ + masks/ or labels/ [+ fov/], MSD/nnU-Net: its labelsTr).
    #[arg(long)]
    gt: PathBuf,
    /// Evaluate label maps (integer class maps) per class, whatever the files look like.
    #[arg(long, conflicts_with = "probabilities")]
    labels: bool,
    /// Evaluate binary probability maps, whatever the files look like.
    #[arg(long)]
    probabilities: bool,
    /// Field-of-view masks: only pixels inside count (probability maps only).
    #[arg(long)]
    fov: Option<PathBuf>,
    /// Probability threshold (probability maps only) [default: 0.5]
    #[arg(long)]
    threshold: Option<f32>,
    /// Pixel spacing `ROW,COL` (mm) of 2D images, for distances (and areas of
    /// label maps) [default: 1,1]. NIfTI volumes use their own spacing.
    #[arg(long)]
    spacing: Option<String>,
    /// Tolerance (mm) of the normalised surface Dice (label maps only) [default: 1]
    #[arg(long = "tolerance-mm")]
    tolerance_mm: Option<f64>,
    /// Write the JSON report to FILE, or `-` for standard output.
    #[arg(long)]
    json: Option<String>,
    /// Write per-image (probability maps) or per case and class (label maps) rows as CSV.
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
        bail!(
            "{}: an MSD/nnU-Net dataset holds label maps; evaluate them as label maps (without --probabilities)",
            m.root.display()
        );
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

/// `--spacing ROW,COL`.
fn parse_spacing(text: &str) -> Result<[f64; 2]> {
    let spacing: Vec<f64> = text
        .split(',')
        .map(|s| s.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--spacing {text:?}: expected ROW,COL"))?;
    match spacing[..] {
        [r, c] if r.is_finite() && c.is_finite() && r > 0.0 && c > 0.0 => Ok([r, c]),
        _ => bail!("--spacing needs two positive numbers ROW,COL"),
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    for (dir, flag) in [(&a.pred, "--pred"), (&a.gt, "--gt")] {
        if !dir.is_dir() {
            bail!("{flag} {}: no such folder", dir.display());
        }
    }
    let labels = if a.labels || a.probabilities {
        a.labels
    } else {
        holds_label_maps(&a.pred, &a.gt)?
    };
    if labels {
        run_labels(a)
    } else {
        run_probabilities(a)
    }
}

fn run_probabilities(a: EvalArgs) -> Result<()> {
    if a.tolerance_mm.is_some() {
        bail!("--tolerance-mm applies to label maps (--labels)");
    }
    let threshold = a.threshold.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&threshold) {
        bail!("--threshold must be in [0, 1]");
    }
    let spacing = a.spacing.as_deref().map_or(Ok([1.0, 1.0]), parse_spacing)?;
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
            threshold,
            [spacing[0], spacing[1]],
        ));
        let (p, g) = metrics::in_fov(&prob, &gt.data, fov.as_deref());
        all_p.extend(p);
        all_g.extend(g);
    }
    for u in &unpaired {
        say!("unpaired: {u}");
    }
    if images.is_empty() {
        bail!("no prediction/ground-truth pairs (case IDs: the file stem up to its first '_')");
    }
    let summary = summarise(
        threshold,
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
            threshold,
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

// ---- label maps ----

/// The label-map files (2D images and NIfTI) of a folder, sorted, hidden ones left out.
fn label_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && matches!(file_kind(p), Some(FileKind::Image | FileKind::Nifti))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The mode rule of [`LABEL_RULE`]: label maps when `pred` holds a NIfTI
/// file, `gt` is an MSD/nnU-Net dataset, or every prediction is a
/// one-channel 8-bit image with values 0..=127, not all 0.
fn holds_label_maps(pred: &Path, gt: &Path) -> Result<bool> {
    if matches!(DatasetSpec::detect(gt), Ok(DatasetSpec::Msd(_))) {
        return Ok(true);
    }
    let files = label_files(pred)?;
    if files.iter().any(|p| file_kind(p) == Some(FileKind::Nifti)) {
        return Ok(true);
    }
    let mut any_label = false;
    for p in &files {
        let v = read_image(p)?;
        let small =
            v.stored == seg_data::StoredType::Uint8 && v.shape[2] == 1 && v.raw.max <= 127.0;
        if !small {
            return Ok(false);
        }
        any_label |= v.raw.max >= 1.0;
    }
    Ok(any_label)
}

/// The reference label maps: a dataset folder's labels (MSD/nnU-Net
/// `labelsTr`, paired folders, DRIVE), else the label files of the folder;
/// and whether the dataset has FOV masks (not used for label maps).
fn label_truth(dir: &Path) -> Result<(Vec<PathBuf>, bool)> {
    match DatasetSpec::detect(dir) {
        Ok(spec) => {
            let cases = spec.cases()?.cases;
            let fov = cases.iter().any(|c| c.fov.is_some());
            Ok((cases.into_iter().filter_map(|c| c.label).collect(), fov))
        }
        Err(seg_data::Error::NoLayout { .. }) => Ok((label_files(dir)?, false)),
        Err(e) => Err(e.into()),
    }
}

/// One evaluated pair: the case's ID, the prediction, the reference.
type Pair = (String, PathBuf, PathBuf);

/// Pairs predictions with references by the rules of [`LABEL_RULE`]: the
/// same stem, else a prediction stem extending a reference stem by `_…`,
/// else the case ID when it names one file on each side. Returns the pairs
/// (by ID) and a notice per unpaired file.
fn pair_labels(preds: &[PathBuf], gts: &[PathBuf]) -> Result<(Vec<Pair>, Vec<String>)> {
    let by_stem = |files: &[PathBuf]| -> Result<BTreeMap<String, PathBuf>> {
        let mut m = BTreeMap::new();
        for f in files {
            if let Some(prev) = m.insert(file_stem(f), f.clone()) {
                bail!(seg_data::Error::DuplicateCase {
                    case: file_stem(f),
                    a: prev,
                    b: f.clone(),
                });
            }
        }
        Ok(m)
    };
    let (mut p, mut g) = (by_stem(preds)?, by_stem(gts)?);
    let mut pairs = Vec::new();
    let mut take = |id: String,
                    ps: &str,
                    gs: &str,
                    p: &mut BTreeMap<String, PathBuf>,
                    g: &mut BTreeMap<String, PathBuf>| {
        if let (Some(a), Some(b)) = (p.remove(ps), g.remove(gs)) {
            pairs.push((id, a, b));
        }
    };
    let same: Vec<String> = p.keys().filter(|k| g.contains_key(*k)).cloned().collect();
    for s in same {
        take(s.clone(), &s, &s, &mut p, &mut g);
    }
    let rest: Vec<String> = p.keys().cloned().collect();
    for s in rest {
        let longest = g
            .keys()
            .filter(|r| {
                s.len() > r.len() && s.starts_with(r.as_str()) && s.as_bytes()[r.len()] == b'_'
            })
            .max_by_key(|r| r.len())
            .cloned();
        if let Some(r) = longest {
            take(r.clone(), &s, &r, &mut p, &mut g);
        }
    }
    let ids = |m: &BTreeMap<String, PathBuf>| {
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (stem, f) in m {
            by.entry(case_id(f)).or_default().push(stem.clone());
        }
        by
    };
    let gid = ids(&g);
    for (id, ps) in ids(&p) {
        if let (Some([gs]), [s]) = (gid.get(&id).map(|v| v.as_slice()), ps.as_slice()) {
            take(id.clone(), s, gs, &mut p, &mut g);
        }
    }
    pairs.sort();
    let mut unpaired: Vec<String> = p
        .values()
        .map(|f| format!("{} (no ground truth)", f.display()))
        .collect();
    unpaired.extend(
        g.values()
            .map(|f| format!("{} (no prediction)", f.display())),
    );
    Ok((pairs, unpaired))
}

fn run_labels(a: EvalArgs) -> Result<()> {
    if a.fov.is_some() {
        bail!("--fov applies to probability maps (label maps are evaluated on every voxel)");
    }
    if a.threshold.is_some() {
        bail!("--threshold applies to probability maps (label maps hold classes)");
    }
    let tolerance = a.tolerance_mm.unwrap_or(1.0);
    if !(tolerance.is_finite() && tolerance >= 0.0) {
        bail!("--tolerance-mm must be a number ≥ 0, got {tolerance}");
    }
    let spacing = a.spacing.as_deref().map(parse_spacing).transpose()?;
    let preds = label_files(&a.pred)?;
    let (gts, fov) = label_truth(&a.gt)?;
    if spacing.is_some() {
        if let Some(f) = preds
            .iter()
            .chain(&gts)
            .find(|p| file_kind(p) == Some(FileKind::Nifti))
        {
            bail!(
                "--spacing applies to 2D images; {} is a NIfTI volume with its own spacing",
                f.display()
            );
        }
    }
    if fov {
        say!("note: label maps are evaluated on every voxel; the dataset's FOV masks are not used");
    }
    let (pairs, unpaired) = pair_labels(&preds, &gts)?;
    let read = |p: &Path| -> Result<LabelMap> {
        let m = LabelMap::read(p)?;
        Ok(match spacing {
            Some([r, c]) => m.with_spacing([1.0, r, c])?,
            None => m,
        })
    };
    let mut cases = Vec::with_capacity(pairs.len());
    for (id, pp, gp) in &pairs {
        cases.push(evaluate_labels(id, &read(pp)?, &read(gp)?, tolerance)?);
    }
    for u in &unpaired {
        say!("unpaired: {u}");
    }
    if cases.is_empty() {
        bail!("no prediction/ground-truth pairs (label maps pair by file stem, then by case ID: the stem up to its first '_')");
    }
    let summary = summarise_labels(cases, tolerance);
    let mut report = serde_json::to_value(&summary)?;
    report["mode"] = serde_json::json!("labels");
    report["unpaired"] = serde_json::json!(unpaired);
    let text = serde_json::to_string_pretty(&report)?;
    match a.json.as_deref() {
        Some("-") => println!("{text}"),
        Some(f) => seg_data::io::atomic_write(Path::new(f), text.as_bytes())?,
        None => {}
    }
    if let Some(c) = &a.csv {
        seg_data::io::atomic_write(c, summary.to_csv().as_bytes())?;
    }
    if a.json.as_deref() != Some("-") {
        print_labels(&summary);
    }
    Ok(())
}

/// The per-class and overall means, one line each.
fn print_labels(s: &LabelSummary) {
    let f = |v: Option<f64>, d: usize| v.map_or_else(|| "-".into(), |x| format!("{x:.d$}"));
    println!(
        "{} cases, {} classes (NSD tolerance {} mm)",
        s.cases.len(),
        s.classes.len(),
        s.tolerance_mm
    );
    for c in &s.per_class {
        println!(
            "class {}: Dice {:.4} IoU {:.4} HD95 {} mm ASD {} mm NSD {} volume diff {:+.3} ml ({} cases, distances over {})",
            c.class,
            c.dice,
            c.iou,
            f(c.hd95, 2),
            f(c.asd, 2),
            f(c.nsd, 4),
            c.volume_diff_ml,
            c.cases,
            c.distance_cases
        );
    }
    let m = &s.mean;
    println!(
        "mean of the classes: Dice {} IoU {} HD95 {} mm ASD {} mm NSD {}",
        f(m.dice, 4),
        f(m.iou, 4),
        f(m.hd95, 2),
        f(m.asd, 2),
        f(m.nsd, 4)
    );
}
