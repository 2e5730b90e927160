//! `seg-cli check-data`: checks a dataset before a long run and lists every problem.

use anyhow::{bail, Result};
use clap::Args;
use seg_data::io::image2d::read_mask;
use seg_data::msd::MsdDataset;
use seg_data::spec::{Case, DatasetKind, DatasetSpec};
use seg_data::{read_any, read_image};
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

/// Cases of an MSD dataset read in full (voxel values checked); the others
/// are checked from their headers.
const MSD_FULL_READS: usize = 3;

/// An MSD/nnU-Net dataset: every case paired (a missing label or image is an
/// error naming the case), every case's image and label headers agree in
/// shape and channel count, `numTraining` matches, and the first, middle and
/// last cases are read in full: finite image values, label values that
/// dataset.json names.
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
    let mut full: Vec<usize> = vec![0, cases.len() / 2, cases.len().saturating_sub(1)];
    full.dedup();
    full.truncate(MSD_FULL_READS);
    let allowed = json.map(|j| j.label_values()).unwrap_or_default();
    for &i in &full {
        let c = &cases[i];
        for p in &c.images {
            match read_any(p) {
                Err(e) => problems.push(format!("{e}")),
                Ok(v) => {
                    if let Some(k) = v.values.iter().position(|v| !v.is_finite()) {
                        problems.push(format!(
                            "{}: value {} at index {k} is not finite",
                            p.display(),
                            v.values[k]
                        ));
                    }
                }
            }
        }
        let Some(lp) = &c.label else { continue };
        match read_any(lp) {
            Err(e) => problems.push(format!("{e}")),
            Ok(v) => {
                let bad = v.values.iter().find(|&&x| {
                    x < 0.0
                        || x.fract() != 0.0
                        || (!allowed.is_empty() && !allowed.contains(&(x as u32)))
                });
                if let Some(x) = bad {
                    problems.push(format!(
                        "{}: label value {x} is not one of the label values {allowed:?} of dataset.json",
                        lp.display()
                    ));
                }
            }
        }
    }
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
        "{} cases (msd) {:?}, {} channel(s) [{}], labels [{}]; every image/label header checked, {} case(s) read in full",
        cases.len(),
        m.name(),
        channels.map(|c| c.0).unwrap_or(0),
        names(json.map(|j| j.channels.as_slice()).unwrap_or(&[])),
        names(&labels),
        full.len()
    );
    report(&problems)
}
