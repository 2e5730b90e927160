//! Patches per second through the data pipeline: DRIVE loading +
//! preprocessing (green channel, CLAHE, z-score in the FOV), then patch
//! sampling + augmentation + batch assembly. Uses ../shared/datasets/DRIVE
//! when present, else synthetic images of DRIVE's size.
//!
//! `cargo bench -p seg-data --bench pipeline`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seg_data::augment::AugmentConfig;
use seg_data::dataset::{drive_cases, load_drive, load_synthetic, DriveSplit};
use seg_data::sampling::{random_batch, PatchSampler};
use seg_data::synthetic::SyntheticConfig;
use seg_data::{Preprocess, Sample};
use std::path::PathBuf;

fn images(plan: &Preprocess) -> (Vec<Sample>, &'static str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/DRIVE");
    if let Ok(cases) = drive_cases(&root, DriveSplit::Training) {
        (load_drive(&cases, plan).expect("DRIVE loads"), "drive")
    } else {
        let cfg = SyntheticConfig {
            count: 20,
            size: 584,
            ..Default::default()
        };
        (load_synthetic(&cfg, plan).expect("synthetic"), "synthetic")
    }
}

fn bench(c: &mut Criterion) {
    let plan = Preprocess::fundus();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/DRIVE");
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    if let Ok(cases) = drive_cases(&root, DriveSplit::Training) {
        g.throughput(Throughput::Elements(cases.len() as u64));
        g.bench_function("load_and_preprocess_drive_20_images", |b| {
            b.iter(|| load_drive(&cases, &plan).unwrap())
        });
    }
    let (imgs, source) = images(&plan);
    let sampler = PatchSampler {
        size: 64,
        foreground_ratio: 0.5,
        inside_fov: true,
    };
    for (name, aug) in [
        ("default_aug", AugmentConfig::default()),
        (
            "heavy_aug",
            AugmentConfig {
                elastic_p: 1.0,
                grid_p: 1.0,
                rotate_p: 1.0,
                ..AugmentConfig::default()
            },
        ),
    ] {
        let batch = 32;
        g.throughput(Throughput::Elements(batch as u64));
        let mut k = 0u64;
        g.bench_function(format!("{source}_batch32_patch64_{name}"), |b| {
            b.iter(|| {
                k += 1;
                random_batch(&imgs, &sampler, &aug, batch, 0, k).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
