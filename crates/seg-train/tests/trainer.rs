//! The training loop on tiny synthetic runs: determinism, exact resumption
//! after an interruption mid-epoch, a clear stop on divergence with the last
//! good checkpoint kept, and the run's outputs.

use seg_core::Device;
use seg_data::synthetic::SyntheticConfig;
use seg_models::ModelConfig;
use seg_train::checkpoint::load_bundle;
use seg_train::infer::SlidingWindow;
use seg_train::schedule::Schedule;
use seg_train::trainer::{DataSource, Observer, Outcome, Silent, TrainConfig, Trainer};
use seg_train::Error;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seg-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tiny(out: PathBuf) -> TrainConfig {
    let mut cfg = TrainConfig {
        model: ModelConfig::from_name("resunet")
            .unwrap()
            .with_base(2)
            .with_in_channels(1),
        data: DataSource::Synthetic(SyntheticConfig {
            count: 5,
            size: 40,
            seed: 3,
            noise: 0.02,
        }),
        epochs: 3,
        steps_per_epoch: 3,
        batch: 2,
        val_count: 2,
        sliding_window: SlidingWindow {
            roi: 32,
            overlap: 0.25,
            ..Default::default()
        },
        out_dir: out,
        ..TrainConfig::default()
    };
    cfg.sampler.size = 32;
    cfg
}

fn weights(t: &Trainer) -> BTreeMap<String, Vec<f32>> {
    t.net
        .params()
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.flatten_all()
                    .unwrap()
                    .to_dtype(seg_core::DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

/// Raises the stop flag after `at` steps in total.
struct StopAt {
    at: usize,
    seen: usize,
    flag: &'static AtomicBool,
}

impl Observer for StopAt {
    fn on_step(&mut self, _e: usize, _s: usize, _l: f32, _lr: f64) {
        self.seen += 1;
        if self.seen == self.at {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn same_seed_same_weights_and_resume_matches_an_uninterrupted_run() {
    let never = AtomicBool::new(false);
    let mut a = Trainer::new(tiny(tmp("a")), &Device::Cpu, false).unwrap();
    assert_eq!(a.run(&mut Silent, &never).unwrap(), Outcome::Finished);
    let mut b = Trainer::new(tiny(tmp("b")), &Device::Cpu, false).unwrap();
    b.run(&mut Silent, &never).unwrap();
    assert_eq!(weights(&a), weights(&b), "same seed, different weights");

    // interrupted in the middle of epoch 2, then resumed in a new Trainer
    static FLAG: AtomicBool = AtomicBool::new(false);
    let dir = tmp("c");
    let mut c = Trainer::new(tiny(dir.clone()), &Device::Cpu, false).unwrap();
    let out = c
        .run(
            &mut StopAt {
                at: 5,
                seen: 0,
                flag: &FLAG,
            },
            &FLAG,
        )
        .unwrap();
    assert_eq!(out, Outcome::Interrupted { epoch: 1, step: 2 });
    drop(c);
    FLAG.store(false, Ordering::SeqCst);
    let mut r = Trainer::new(tiny(dir.clone()), &Device::Cpu, true).unwrap();
    assert_eq!((r.state.epoch, r.state.step), (1, 2));
    assert_eq!(r.run(&mut Silent, &never).unwrap(), Outcome::Finished);
    assert_eq!(
        weights(&a),
        weights(&r),
        "resumed run ends elsewhere than the uninterrupted one"
    );
    assert_eq!(a.state.history.len(), r.state.history.len());

    // outputs: bundles that load on their own, metrics files
    for f in [
        "best.safetensors",
        "last.safetensors",
        "last.state.safetensors",
        "metrics.csv",
        "metrics.json",
        "config.json",
    ] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    let (net, info) = load_bundle(&dir.join("best.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(net.config(), &tiny(dir.clone()).model);
    assert_eq!(info.patch, 32);
    assert!(info.val_dice.is_some());
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
}

/// The weights of a bundle file.
fn bundle_weights(path: &std::path::Path) -> BTreeMap<String, Vec<f32>> {
    let (net, _) = load_bundle(path, &Device::Cpu).unwrap();
    net.params()
        .tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype().is_float())
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn a_weight_average_is_shipped_and_resumes_exactly() {
    let averaged = |dir: PathBuf| TrainConfig {
        weight_average: Some(0.9),
        ..tiny(dir)
    };
    let never = AtomicBool::new(false);
    let dir_a = tmp("avg-a");
    let mut a = Trainer::new(averaged(dir_a.clone()), &Device::Cpu, false).unwrap();
    assert_eq!(a.run(&mut Silent, &never).unwrap(), Outcome::Finished);
    assert_eq!(a.state.average_updates, 9);
    // the bundles hold the average, which differs from the live weights;
    // training itself is unchanged by keeping one
    let live: BTreeMap<String, Vec<f32>> = weights(&a)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    let last = bundle_weights(&dir_a.join("last.safetensors"));
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        last.keys().collect::<Vec<_>>()
    );
    assert_ne!(live, last, "last.safetensors holds the live weights");
    let dir_plain = tmp("avg-plain");
    let mut plain = Trainer::new(tiny(dir_plain.clone()), &Device::Cpu, false).unwrap();
    plain.run(&mut Silent, &never).unwrap();
    assert_eq!(weights(&a), weights(&plain), "the average changed training");

    // interrupted mid-epoch 2 and resumed: the same live weights and average
    static FLAG: AtomicBool = AtomicBool::new(false);
    let dir_c = tmp("avg-c");
    let mut c = Trainer::new(averaged(dir_c.clone()), &Device::Cpu, false).unwrap();
    let stop = &mut StopAt {
        at: 5,
        seen: 0,
        flag: &FLAG,
    };
    assert_eq!(
        c.run(stop, &FLAG).unwrap(),
        Outcome::Interrupted { epoch: 1, step: 2 }
    );
    drop(c);
    FLAG.store(false, Ordering::SeqCst);
    let mut r = Trainer::new(averaged(dir_c.clone()), &Device::Cpu, true).unwrap();
    assert_eq!(r.state.average_updates, 5);
    r.run(&mut Silent, &never).unwrap();
    assert_eq!(weights(&a), weights(&r));
    assert_eq!(last, bundle_weights(&dir_c.join("last.safetensors")));
    assert_eq!(
        bundle_weights(&dir_a.join("best.safetensors")),
        bundle_weights(&dir_c.join("best.safetensors"))
    );
    let dice =
        |t: &Trainer| -> Vec<_> { t.state.history.iter().map(|h| h.val_dice_best).collect() };
    assert_eq!(
        dice(&a),
        dice(&r),
        "validation (of the average) differs after resuming"
    );

    // a sidecar without the average cannot resume an averaged run
    let err = Trainer::new(averaged(dir_plain), &Device::Cpu, true)
        .err()
        .expect("no average to resume");
    assert!(err.to_string().contains("average"), "{err}");
    // the decay is checked
    let bad = TrainConfig {
        weight_average: Some(1.0),
        ..tiny(tmp("avg-bad"))
    };
    assert!(Trainer::new(bad, &Device::Cpu, false).is_err());
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let dir = tmp("nan");
    let mut cfg = tiny(dir.clone());
    cfg.optimizer.clip_grad_norm = None;
    cfg.optimizer.kind = seg_train::optim::OptimizerKind::Sgd;
    cfg.optimizer.lr = 1e-3;
    // epoch 1 trains normally, then the learning rate explodes
    cfg.schedule = Schedule::Step {
        step_size: 1,
        gamma: 1e30,
    };
    let mut t = Trainer::new(cfg, &Device::Cpu, false).unwrap();
    let err = t.run(&mut Silent, &AtomicBool::new(false)).unwrap_err();
    assert!(
        matches!(err, Error::NonFiniteLoss { epoch: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("last good checkpoint"), "{err}");
    let (_, info) = load_bundle(&dir.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(info.epoch, 1);
}

#[test]
fn bad_configurations_fail_before_training() {
    let mut cfg = tiny(tmp("bad"));
    cfg.model = cfg.model.with_in_channels(3);
    let err = Trainer::new(cfg, &Device::Cpu, false)
        .err()
        .expect("channel mismatch refused");
    assert!(err.to_string().contains("channel"), "{err}");
    let err = Trainer::new(tiny(tmp("noresume")), &Device::Cpu, true)
        .err()
        .expect("nothing to resume");
    assert!(err.to_string().contains("nothing to resume"), "{err}");
}

#[test]
fn a_time_budget_ends_the_run_inside_it_and_the_schedule_spans_it() {
    let mut cfg = tiny(tmp("budget"));
    cfg.epochs = 1000;
    cfg.early_stop_patience = None;
    cfg.max_seconds = Some(5.0);
    let started = std::time::Instant::now();
    let mut t = Trainer::new(cfg, &Device::Cpu, false).unwrap();
    let never = AtomicBool::new(false);
    let out = t.run(&mut Silent, &never).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let Outcome::TimeUp { epoch } = out else {
        panic!("expected TimeUp, got {out:?}")
    };
    // the stop rule keeps the run inside the limit when steps and validation
    // take what they took before; 2 s of slack for a loaded machine
    assert!(secs < 7.0, "{secs:.2} s for a 5 s budget");
    assert_eq!(epoch, t.state.history.len());
    assert!(epoch >= 2, "only {epoch} epochs in 5 s");
    assert!(
        t.state.scheduler.epochs < 1000,
        "the cosine schedule was not re-spanned to the budget"
    );
    // the cosine schedule ran over the budget: the last epoch's rate is far down its tail
    let lrs: Vec<f64> = t.state.history.iter().map(|r| r.lr).collect();
    let base = t.cfg.optimizer.lr;
    assert!(
        *lrs.last().unwrap() < 0.5 * base,
        "last lr {:?} of base {base}: the schedule did not decay within the budget",
        lrs.last()
    );
    assert!(t.paths.best.is_file() && t.paths.last.is_file());
}

#[test]
fn a_budget_spent_before_the_first_step_is_a_typed_error() {
    let mut cfg = tiny(tmp("budget-spent"));
    cfg.max_seconds = Some(1e-6);
    let mut t = Trainer::new(cfg, &Device::Cpu, false).unwrap();
    let never = AtomicBool::new(false);
    let e = t.run(&mut Silent, &never).unwrap_err();
    assert!(matches!(e, Error::BudgetExhausted { .. }), "{e}");
}

#[test]
fn init_from_loads_matching_weights_and_reinitialises_a_new_head() {
    let never = AtomicBool::new(false);
    let src_dir = tmp("init-src");
    let mut src = Trainer::new(tiny(src_dir.clone()), &Device::Cpu, false).unwrap();
    src.run(&mut Silent, &never).unwrap();
    let src_w = weights(&src);
    // the same network with two output classes (softmax), another seed
    let mut cfg = tiny(tmp("init-dst"));
    cfg.model = cfg.model.with_out_channels(2);
    cfg.loss = seg_train::losses::Loss::CeDice;
    cfg.seed = 99;
    cfg.init_from = Some(src_dir.join("last.safetensors"));
    let dst = Trainer::new(cfg.clone(), &Device::Cpu, false).unwrap();
    let dst_w = weights(&dst);
    let (mut same, mut reinit) = (0, Vec::new());
    for (name, w) in &dst_w {
        match src_w.get(name) {
            Some(s) if s.len() == w.len() => {
                assert_eq!(s, w, "{name} was not loaded");
                same += 1;
            }
            _ => reinit.push(name.clone()),
        }
    }
    assert!(same > 10, "only {same} tensors loaded");
    assert!(
        !reinit.is_empty() && reinit.iter().all(|n| n.starts_with("final")),
        "re-initialised: {reinit:?}"
    );
    // a file that matches nothing is an error naming it
    let mut bad = cfg;
    bad.model = ModelConfig::from_name("unet")
        .unwrap()
        .with_base(2)
        .with_in_channels(1);
    bad.out_dir = tmp("init-bad");
    let junk = bad.out_dir.join("junk.safetensors");
    std::fs::create_dir_all(&bad.out_dir).unwrap();
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    bad.init_from = Some(junk);
    assert!(Trainer::new(bad, &Device::Cpu, false).is_err());
}
