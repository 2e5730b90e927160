//! `seg-cli check-data`: checks a dataset before a long run and lists every problem.

use anyhow::{bail, Result};
use clap::Args;
use seg_data::dataset::{drive_cases, paired_cases, DriveSplit};
use seg_data::io::image2d::read_mask;
use seg_data::read_image;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct CheckDataArgs {
    /// Dataset folder (DRIVE layout, or images/ + masks/ [+ fov/]).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_parser = ["drive", "folders"])]
    dataset: Option<String>,
}

struct Case {
    id: String,
    image: PathBuf,
    label: Option<PathBuf>,
    fov: Option<PathBuf>,
}

pub fn run(a: CheckDataArgs) -> Result<()> {
    let kind = match a.dataset.as_deref() {
        Some(k) => k.to_string(),
        None if a.data.join("training/images").is_dir() || a.data.join("1st_manual").is_dir() => {
            "drive".into()
        }
        None => "folders".into(),
    };
    let mut problems: Vec<String> = Vec::new();
    let cases: Vec<Case> = if kind == "drive" {
        match drive_cases(&a.data, DriveSplit::Training) {
            Ok(c) => c
                .into_iter()
                .map(|c| Case {
                    id: c.id,
                    image: c.image,
                    label: c.label,
                    fov: c.mask,
                })
                .collect(),
            Err(e) => bail!("{e}"),
        }
    } else {
        let (c, unpaired) = paired_cases(&a.data)?;
        for u in unpaired {
            problems.push(format!(
                "{}: unpaired (no matching image or mask)",
                u.display()
            ));
        }
        c.into_iter()
            .map(|c| Case {
                id: c.id,
                image: c.image,
                label: c.label,
                fov: c.fov,
            })
            .collect()
    };
    let mut channels: Option<(usize, PathBuf)> = None;
    let (mut fg, mut px) = (0u64, 0u64);
    let mut with_fov = 0;
    for c in &cases {
        let img = match read_image(&c.image) {
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
                c.image.display(),
                first.display()
            )),
            None => channels = Some((ch, c.image.clone())),
            _ => {}
        }
        if let Some(i) = img.values.iter().position(|v| !v.is_finite()) {
            problems.push(format!(
                "{}: value {} at index {i} is not finite",
                c.image.display(),
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
            None => problems.push(format!("{}: case {} has no label", c.image.display(), c.id)),
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
    if problems.is_empty() {
        println!("no problems found");
        Ok(())
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        bail!("{} problem(s) found", problems.len())
    }
}
