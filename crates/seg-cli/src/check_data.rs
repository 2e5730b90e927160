//! `seg-cli check-data`: checks a dataset before a long run and lists every problem.

use anyhow::{bail, Result};
use clap::Args;
use seg_data::check::check_cases;
use seg_data::io::image2d::read_mask;
use seg_data::msd::MsdDataset;
use seg_data::read_image;
use seg_data::spec::{Case, DatasetKind, DatasetSpec};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct CheckDataArgs {
    /// Dataset folder (DRIVE layout, images/ + masks/ or labels/ [+ fov/], or MSD/nnU-Net imagesTr/ + labelsTr/ [+ dataset.json]).
    #[arg(long)]
    data: PathBuf,
    /// Dataset layout (detected from the folder when omitted).
    #[arg(long, value_parser = ["drive", "folders", "msd"])]
    dataset: Option<String>,
}

pub fn run(a: CheckDataArgs) -> Result<()> {
    let spec = match a.dataset.as_deref() {
        Some(k) => DatasetSpec::open(
            DatasetKind::from_name(k).expect("value checked by clap"),
            &a.data,
        )?,
        None => DatasetSpec::detect(&a.data)?,
    };
    if let DatasetSpec::Msd(m) = &spec {
        return check_msd(m);
    }
    let kind = spec.kind().name();
    let mut problems: Vec<String> = Vec::new();
    let list = match spec.cases() {
        Ok(l) => l,
        Err(e) => bail!("{e}"),
    };
    for u in list.unpaired {
        problems.push(format!(
            "{}: unpaired (no matching image or mask)",
            u.display()
        ));
    }
    let cases: Vec<Case> = list.cases;
    let r = check_cases(&cases, &[]);
    if r.volumes || r.values().len() > 2 {
        // volumes or multi-class label maps: the label-map checks
        println!(
            "{} cases ({kind}), {}",
            cases.len(),
            if r.volumes {
                "volumes"
            } else {
                "2D label maps"
            }
        );
        summary(&r);
        problems.extend(r.problems.iter().map(|p| p.to_string()));
        return report(&problems);
    }
    let mut channels: Option<(usize, PathBuf)> = None;
    let (mut fg, mut px) = (0u64, 0u64);
    let mut with_fov = 0;
    for c in &cases {
        let image = &c.images[0];
        let img = match read_image(image) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{e}"));
                continue;
            }
        };
        let (h, w, ch) = (img.shape[0], img.shape[1], img.shape[2]);
        match &channels {
            Some((n, first)) if *n != ch => problems.push(format!(
                "{}: {ch} channel(s), but {} has {n}",
                image.display(),
                first.display()
            )),
            None => channels = Some((ch, image.clone())),
            _ => {}
        }
        if let Some(i) = img.values.iter().position(|v| !v.is_finite()) {
            problems.push(format!(
                "{}: value {} at index {i} is not finite",
                image.display(),
                img.values[i]
            ));
        }
        let check_size = |p: &Path, hh: usize, ww: usize, problems: &mut Vec<String>| {
            if (hh, ww) != (h, w) {
                problems.push(format!(
                    "{}: {hh}x{ww} but its image is {h}x{w}",
                    p.display()
                ));
            }
        };
        match &c.label {
            None => problems.push(format!("{}: case {} has no label", image.display(), c.id)),
            Some(lp) => match read_image(lp) {
                Err(e) => problems.push(format!("{e}")),
                Ok(l) => {
                    check_size(lp, l.shape[0], l.shape[1], &mut problems);
                    let mut distinct: Vec<f32> = Vec::new();
                    for &v in &l.values {
                        if !distinct.contains(&v) {
                            distinct.push(v);
                            if distinct.len() > 2 {
                                break;
                            }
                        }
                    }
                    if distinct.len() > 2 {
                        problems.push(format!(
                            "{}: not a binary label (more than two distinct values)",
                            lp.display()
                        ));
                    }
                    if let Ok(m) = read_mask(lp) {
                        let f = m.data.iter().filter(|&&v| v != 0).count() as u64;
                        if f == 0 {
                            problems.push(format!("{}: empty label (no foreground)", lp.display()));
                        }
                        fg += f;
                        px += m.data.len() as u64;
                    }
                }
            },
        }
        match &c.fov {
            None => {}
            Some(fp) => match read_mask(fp) {
                Err(e) => problems.push(format!("{e}")),
                Ok(m) => {
                    with_fov += 1;
                    check_size(fp, m.height, m.width, &mut problems);
                }
            },
        }
    }
    println!(
        "{} cases ({kind}), {} channel(s), FOV masks for {with_fov}, foreground {:.2}% of labelled pixels",
        cases.len(),
        channels.map(|c| c.0).unwrap_or(0),
        if px > 0 { 100.0 * fg as f64 / px as f64 } else { 0.0 }
    );
    if kind == "drive" && with_fov < cases.len() {
        problems.push(format!(
            "{} of {} cases have no FOV mask",
            cases.len() - with_fov,
            cases.len()
        ));
    }
    report(&problems)
}

/// Label values, their share of the voxels, and the median spacing.
fn summary(r: &seg_data::check::Report) {
    let total: u64 = r.label_voxels.values().sum();
    let vals: Vec<String> = r
        .label_voxels
        .iter()
        .map(|(v, n)| format!("{v}: {:.3}%", 100.0 * *n as f64 / total.max(1) as f64))
        .collect();
    println!(
        "label values (share of voxels): {}; median spacing {:?} mm",
        vals.join(", "),
        r.median_spacing
    );
}

fn report(problems: &[String]) -> Result<()> {
    if problems.is_empty() {
        println!("no problems found");
        Ok(())
    } else {
        for p in problems {
            println!("problem: {p}");
        }
        bail!("{} problem(s) found", problems.len())
    }
}

/// An MSD/nnU-Net dataset: every case paired (a missing label or image is an
/// error naming the case), every case's headers agree in channel count,
/// `numTraining` matches, and every case is read in full
/// ([`seg_data::check::check_cases`]: shapes, affines, finite values, label
/// values that dataset.json names, empty labels, spacings).
fn check_msd(m: &MsdDataset) -> Result<()> {
    let cases = m.training_cases()?;
    let json = m.json.as_ref();
    let mut problems: Vec<String> = Vec::new();
    if let Some(n) = json.and_then(|j| j.num_training) {
        if n != cases.len() {
            problems.push(format!(
                "{}: numTraining is {n}, but imagesTr/ and labelsTr/ hold {} cases",
                m.root.join("dataset.json").display(),
                cases.len()
            ));
        }
    }
    let mut channels: Option<(usize, &str)> = None;
    for c in &cases {
        match m.case_shape(c) {
            Err(e) => problems.push(format!("{e}")),
            Ok(s) => match channels {
                Some((n, first)) if n != s.channels => problems.push(format!(
                    "case {}: {} channel(s), but case {first} has {n}",
                    c.id, s.channels
                )),
                None => channels = Some((s.channels, &c.id)),
                _ => {}
            },
        }
    }
    let allowed: Vec<i64> = json
        .map(|j| j.label_values().iter().map(|&v| v as i64).collect())
        .unwrap_or_default();
    let as_cases: Vec<Case> = cases
        .iter()
        .map(|c| Case {
            id: c.id.clone(),
            images: c.images.clone(),
            label: c.label.clone(),
            fov: None,
        })
        .collect();
    let r = check_cases(&as_cases, &allowed);
    problems.extend(r.problems.iter().map(|p| p.to_string()));
    let names = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    let labels: Vec<String> = json
        .map(|j| {
            j.labels
                .iter()
                .map(|l| {
                    let vals: Vec<String> = l.values.iter().map(|v| v.to_string()).collect();
                    format!("{} {}", vals.join("+"), l.name)
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{} cases (msd) {:?}, {} channel(s) [{}], labels [{}]; every case read in full",
        cases.len(),
        m.name(),
        channels.map(|c| c.0).unwrap_or(0),
        names(json.map(|j| j.channels.as_slice()).unwrap_or(&[])),
        names(&labels),
    );
    summary(&r);
    report(&problems)
}
