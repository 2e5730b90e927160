//! `cargo xtask conv-layers`: times every 3×3 convolution of a U-Net on its
//! own (forward, weight gradient, input gradient), a profiling aid for the
//! CPU kernels. The gradient columns are differences of whole timed passes
//! (forward + backward of a sum, with and without the input's gradient), so
//! the time of the sum's backward alone is taken off. `--layer I
//! --repeat R` runs only layer I's forward and weight gradient R times
//! (`--forward-only`: the forward alone), for `perf record`.

use seg_core::{ops, Device, Tensor, Var};
use std::time::Instant;

fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut v: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[0]
}

/// Prints one line per layer (minimum of 9 runs after one warm-up).
pub fn run(
    base: usize,
    n: usize,
    s: usize,
    only: Option<usize>,
    repeat: Option<usize>,
    forward_only: bool,
) {
    // SEG_PRECISION=bf16 times the bf16 kernels
    if let Ok(p) = std::env::var("SEG_PRECISION") {
        let p = p
            .parse::<seg_core::PrecisionChoice>()
            .and_then(|c| c.resolve());
        match p {
            Ok(p) => seg_core::precision::set(p),
            Err(e) => {
                eprintln!("error: SEG_PRECISION: {e}");
                std::process::exit(2);
            }
        }
    }
    let mut layers = vec![];
    let mut c = 3;
    let mut hw = s;
    for l in 0..5 {
        let o = base << l;
        layers.push((c, o, hw));
        layers.push((o, o, hw));
        c = o;
        hw /= 2;
    }
    for l in (0..4).rev() {
        let o = base << l;
        hw = s >> l;
        layers.push((2 * o, o, hw));
        layers.push((o, o, hw));
    }
    let (mut tf, mut tb) = (0.0, 0.0);

    for (i, (c, o, hw)) in layers.into_iter().enumerate() {
        if only.is_some_and(|l| l != i) {
            continue;
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, hw, hw), &Device::Cpu).unwrap())
            .unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (o, c, 3, 3), &Device::Cpu).unwrap())
            .unwrap();
        // the input without a gradient: forward + weight gradient only
        let xt = x.as_tensor().detach();
        if let Some(r) = repeat {
            for _ in 0..r {
                let y = ops::conv2d(&xt, w.as_tensor(), None, 1).unwrap();
                if !forward_only {
                    y.sum_all().unwrap().backward().unwrap();
                }
            }
            return;
        }
        let f = time(|| {
            ops::conv2d(x.as_tensor(), w.as_tensor(), None, 1).unwrap();
        });
        let fb = time(|| {
            let y = ops::conv2d(x.as_tensor(), w.as_tensor(), None, 1).unwrap();
            y.sum_all().unwrap().backward().unwrap();
        });
        let fw = time(|| {
            let y = ops::conv2d(&xt, w.as_tensor(), None, 1).unwrap();
            y.sum_all().unwrap().backward().unwrap();
        });
        // the backward of the sum alone (a gradient of ones the size of the
        // output), taken off both gradient columns
        let yv = Var::from_tensor(
            &Tensor::zeros((n, o, hw, hw), seg_core::DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let s0 = time(|| {
            yv.as_tensor().sum_all().unwrap().backward().unwrap();
        });
        let (fw, fb) = (fw - s0, fb - s0);
        let gflop = 2.0 * (n * hw * hw * c * o * 9) as f64 / 1e9;
        println!("{c:4}->{o:4} {hw:4}  fwd {f:6.2} ms ({:4.0})  wgrad {:6.2} ms ({:4.0})  igrad {:6.2} ms ({:4.0})  all {fb:6.2} ms ({:4.0} GF/s)", gflop / f * 1e3, fw - f, gflop / (fw - f) * 1e3, fb - fw, gflop / (fb - fw) * 1e3, 3.0 * gflop / fb * 1e3);
        tf += f;
        tb += fb;
    }
    println!("total fwd {tf:.1} ms, fwd+bwd {tb:.1} ms");
}
