//! The cost of the gradient allreduce of data-parallel training:
//! `mpirun -np 2 target/release/examples/allreduce_cost [N...]` times a
//! sum-allreduce of N f32 (default: the gradient sizes of U-Net base 16,
//! 32 and 64) as the training loop calls it (docs/scaling.md).

use seg_train::comm::{Comm, MpiRuntime};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = MpiRuntime::init()?;
    let comm = runtime.world();
    let args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let sizes = match args.collect::<Result<Vec<_>, _>>() {
        Ok(v) if !v.is_empty() => v,
        _ => vec![1_942_577, 7_763_041, 31_037_633],
    };
    for n in sizes {
        let mut buf = vec![1.0f32; n];
        comm.allreduce_sum_f32(&mut buf)?; // warm-up
        let reps = 10;
        let mut times = Vec::new();
        for _ in 0..reps {
            buf.fill(1.0);
            let t = Instant::now();
            comm.allreduce_sum_f32(&mut buf)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        assert_eq!(buf[n - 1], comm.size() as f32);
        times.sort_by(f64::total_cmp);
        if comm.is_root() {
            println!(
                "{} ranks: allreduce of {n} f32 ({:.1} MB): median {:.2} ms, min {:.2} ms",
                comm.size(),
                n as f64 * 4.0 / 1e6,
                times[reps / 2],
                times[0]
            );
        }
    }
    Ok(())
}
