//! Data-parallel training over [`crate::comm::Comm`]: one step on this
//! rank's share of the global batch, exactly what one process computes on
//! the whole batch, and rank 0's validation shared with the others.
//!
//! A step: (1) rank `r` of `N` draws items `r, r + N, ...` of the global
//! batch (each patch keyed by (seed, step, item)), runs the network on
//! them and reduces the loss's statistics ([`crate::losses::Loss::stats`]:
//! sums over its items); (2) the statistics are summed over the ranks, the
//! whole batch's loss follows ([`crate::losses::Loss::loss_of_stats`]) with its
//! derivative `c` by each statistic, and `sum(c · local statistics)`
//! backpropagated gives this rank's exact share of the batch gradient
//! (uneven shares included); (3) the gradients are summed over the ranks
//! and the optimiser steps (gradient clipping sees the summed gradient).
//! An error on a rank is announced by a flag after each phase, so every
//! rank leaves the same step. Normalisation layers that use batch
//! statistics (BatchNorm in training) see only the rank's items: the
//! result is then not the one-process result (GroupNorm and InstanceNorm
//! are per sample, and exact).

use super::batch::batch;
use super::run::Trainer;
use crate::comm::Comm;
use crate::error::{Error, Result};
use seg_core::{DType, GradStore, Tensor, Var};

/// Refuses ranks whose configurations (`cfg_json`) differ from rank 0's:
/// they would draw other batches or call other collectives (and wait in
/// them forever).
pub(super) fn check_same_config(comm: &dyn Comm, cfg_json: &[u8]) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    // FNV-1a, as two 32-bit halves (exact in f64)
    let h = cfg_json.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mine = [(h >> 32) as f64, (h & 0xffff_ffff) as f64];
    let mut root = mine;
    comm.broadcast_f64(&mut root, 0)?;
    let mut differ = [(root != mine) as u8 as f64];
    comm.allreduce_sum_f64(&mut differ)?;
    if differ[0] > 0.0 {
        return Err(Error::Setting {
            setting: format!("the training configuration of rank {}", comm.rank()),
            expected: "the same on every rank (one command for all ranks)".into(),
            got: format!("{} rank(s) differing from rank 0", differ[0]),
        });
    }
    Ok(())
}

/// A fault for tests of the stop on an error: `SEG_FAULT_AT=RANK:STEP`
/// fails that rank's global step (0-based).
fn injected_fault(rank: usize, step: u64) -> Result<()> {
    let Ok(v) = std::env::var("SEG_FAULT_AT") else {
        return Ok(());
    };
    if v.split_once(':')
        .and_then(|(r, s)| Some((r.parse::<usize>().ok()?, s.parse::<u64>().ok()?)))
        == Some((rank, step))
    {
        return Err(Error::Collective {
            op: "SEG_FAULT_AT",
            reason: format!("fault injected on rank {rank} at global step {step}"),
        });
    }
    Ok(())
}

/// Validation results: Dice at 0.5, best Dice, its threshold, AUC, and
/// the per-class Dice of multi-class runs.
pub(super) type Validated = (f64, f64, f32, Option<f64>, Option<Vec<f64>>);

/// A rank's loss and, when it is finite, its share of the gradients (and
/// them flattened for the allreduce).
type Share = (f32, Option<(GradStore, Vec<f32>)>);

impl Trainer {
    /// Sums `failed` over the ranks: `Ok` when no rank failed, else this
    /// rank's error or [`Error::PeerFailed`].
    fn agree<T>(&self, local: Result<T>) -> Result<T> {
        let mut flag = [local.is_err() as u8 as f64];
        self.comm.allreduce_sum_f64(&mut flag)?;
        match local {
            Err(e) => Err(e),
            Ok(_) if flag[0] > 0.0 => Err(Error::PeerFailed {
                step: self.state.global_step,
            }),
            Ok(v) => Ok(v),
        }
    }

    /// One optimiser step of a data-parallel run; returns the whole
    /// batch's loss (the same on every rank). A non-finite loss skips the
    /// update on every rank.
    pub(super) fn parallel_step(&mut self, lr: f64) -> Result<f32> {
        let items = self.comm.share(self.cfg.batch);
        let (cfg, train, labelled, device) = (
            &self.cfg,
            &self.train[..],
            self.labelled.as_ref(),
            &self.device,
        );
        let step = self.state.global_step;
        let rank = self.comm.rank();
        // synchronised BatchNorm: the norms' sums over the ranks, from
        // inside the passes below (on_worker carries the reducer)
        let reducer = if cfg.sync_bn {
            self.comm.stat_reducer()
        } else {
            None
        };
        let _sync = seg_core::collective::scoped(reducer);
        // (1) this rank's items, agreed on before the forward pass, whose
        // synchronised norms are collectives every rank must reach
        let local = seg_core::on_worker(|| -> Result<(Tensor, Tensor)> {
            injected_fault(rank, step)?;
            batch(cfg, train, labelled, device, step, &items)
        });
        let (x, y) = self.agree(local)?;
        let (cfg, net) = (&self.cfg, &self.net);
        // (2) the forward pass, the loss's statistics
        let local = seg_core::on_worker(|| -> Result<(Tensor, Vec<f32>)> {
            let logits = net.forward_t(&x, true)?;
            let stats = cfg.loss.stats(&logits, &y)?;
            let values = stats
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok((stats, values))
        });
        let (stats, values) = self.agree(local)?;
        let mut total: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        self.comm.allreduce_sum_f64(&mut total)?;
        // (3) the batch's loss and this rank's share of its gradient
        let (cfg, net) = (&self.cfg, &self.net);
        let local = seg_core::on_worker(|| -> Result<Share> {
            let total: Vec<f32> = total.iter().map(|&v| v as f32).collect();
            let summed = Var::from_tensor(
                &Tensor::from_vec(total, stats.shape(), stats.device())?.to_dtype(stats.dtype())?,
            )?;
            let loss = cfg.loss.loss_of_stats(summed.as_tensor())?;
            let lv = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !lv.is_finite() {
                return Ok((lv, None));
            }
            let dl = loss.backward()?;
            let c = dl
                .get(summed.as_tensor())
                .ok_or(Error::Collective {
                    op: "loss statistics",
                    reason: "the loss does not depend on its statistics".into(),
                })?
                .detach();
            let grads = (&stats * &c)?.sum_all()?.backward()?;
            let mut flat = Vec::new();
            for (_, var) in net.params().trainable() {
                if let Some(g) = grads.get(var.as_tensor()) {
                    flat.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
                }
            }
            Ok((lv, Some((grads, flat))))
        });
        let (lv, grads) = self.agree(local)?;
        let Some((mut grads, mut flat)) = grads else {
            return Ok(lv);
        };
        // (4) the batch gradient: the ranks' shares summed
        self.comm.allreduce_sum_f32(&mut flat)?;
        let (net, opt) = (&self.net, &mut self.opt);
        let local = seg_core::on_worker(|| -> Result<()> {
            let mut at = 0;
            for (_, var) in net.params().trainable() {
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let n = g.elem_count();
                let summed = Tensor::from_slice(&flat[at..at + n], g.shape(), g.device())?
                    .to_dtype(g.dtype())?;
                at += n;
                grads.insert(var.as_tensor(), summed);
            }
            opt.step(&grads, lr)?;
            Ok(())
        });
        self.agree(local)?;
        Ok(lv)
    }

    /// Rank 0's validation (`Some` on rank 0) given to every rank; an error
    /// there stops all.
    pub(super) fn share_validation(
        &self,
        validated: Option<Result<Validated>>,
    ) -> Result<Validated> {
        if self.comm.size() == 1 {
            return validated.unwrap_or_else(|| unreachable!("one process is rank 0"));
        }
        let mut buf = [0f64; 5];
        if let Some(Ok((d05, best, thr, auc, _))) = &validated {
            buf = [1.0, *d05, *best, *thr as f64, auc.unwrap_or(f64::NAN)];
        }
        self.comm.broadcast_f64(&mut buf, 0)?;
        match validated {
            Some(v) => v,
            None if buf[0] == 0.0 => Err(Error::PeerFailed {
                step: self.state.global_step,
            }),
            None => Ok((
                buf[1],
                buf[2],
                buf[3] as f32,
                (!buf[4].is_nan()).then_some(buf[4]),
                None,
            )),
        }
    }
}
