//! Sliding-window inference of 3D networks over whole volumes: tiles of
//! the window size (`SlidingWindow::roi3`) with the configured overlap,
//! blended with a separable 3D Gaussian importance (σ = side / 8, nnU-Net's
//! choice), test-time flips along the axes training flipped, and memory
//! bounded by the window: only `batch` tiles and the K class accumulators
//! are held.

use super::{Blend, SlidingWindow};
use crate::error::{Error, Result};
use seg_core::{Device, Tensor};
use seg_models::Model;

/// Start positions of windows of `size` covering `n` (the last aligned to
/// the end; one window at 0 when `n ≤ size`).
fn axis_positions(n: usize, size: usize, overlap: f32) -> Vec<usize> {
    if n <= size {
        return vec![0];
    }
    let step = ((size as f32 * (1.0 - overlap.clamp(0.0, 0.95))).round() as usize).max(1);
    let mut v: Vec<usize> = (0..=n - size).step_by(step).collect();
    if *v.last().expect("one position") != n - size {
        v.push(n - size);
    }
    v
}

/// 1D Gaussian importance of a window side, its minimum kept above zero.
fn gauss(n: usize, blend: Blend) -> Vec<f32> {
    if blend == Blend::Constant {
        return vec![1.0; n];
    }
    let sigma = n as f32 / 8.0;
    let c = (n as f32 - 1.0) / 2.0;
    (0..n)
        .map(|i| {
            (-((i as f32 - c).powi(2)) / (2.0 * sigma * sigma))
                .exp()
                .max(1e-3)
        })
        .collect()
}

/// Class probabilities (softmax; sigmoid for one output) of tiles
/// (B, C, D, H, W), averaged over the test-time flips `sw` allows.
fn tile_probabilities(model: &Model, x: &Tensor, sw: &SlidingWindow) -> Result<Tensor> {
    // axes of NCDHW: depth 2, rows 3, columns 4
    let allowed = [sw.tta_depth, sw.tta_axes[0], sw.tta_axes[1]];
    let combos: Vec<Vec<usize>> = (0u32..8)
        .filter(|m| *m == 0 || (sw.tta && (0..3).all(|a| m & (1 << a) == 0 || allowed[a])))
        .map(|m| {
            (0..3)
                .filter(|a| m & (1 << a) != 0)
                .map(|a| a + 2)
                .collect()
        })
        .collect();
    let mut sum: Option<Tensor> = None;
    for axes in &combos {
        let xi = if axes.is_empty() {
            x.clone()
        } else {
            x.flip(axes)?
        };
        let logits = seg_core::on_worker(|| model.forward_t(&xi, false))?;
        let mut p = if logits.dim(1)? == 1 {
            seg_core::ops::sigmoid(&logits)?
        } else {
            seg_core::nn::ops::softmax(&logits, 1)?
        };
        if !axes.is_empty() {
            p = p.flip(axes)?;
        }
        sum = Some(match sum {
            Some(s) => (s + p)?,
            None => p,
        });
    }
    Ok((sum.expect("at least one pass") / combos.len() as f64)?.to_device(&Device::Cpu)?)
}

/// Probabilities of a channel-planar volume `c × d × h × w` (a case's
/// planes as depth) from a 3D model: returns (`K × d × h × w`, K). Volumes
/// smaller than the window are zero-padded at the far end of each axis.
pub fn predict_volume(
    model: &Model,
    image: &[f32],
    c: usize,
    dims: [usize; 3],
    sw: &SlidingWindow,
    device: &Device,
) -> Result<(Vec<f32>, usize)> {
    let [d, h, w] = dims;
    if image.len() != c * d * h * w || d == 0 || h == 0 || w == 0 {
        return Err(Error::BufferSize {
            len: image.len(),
            channels: c,
            height: d * h,
            width: w,
        });
    }
    if let Some(i) = image.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFiniteInput {
            index: i,
            value: image[i],
        });
    }
    let roi = sw.roi3.unwrap_or([sw.roi; 3]).map(|r| r.max(16));
    let padded = [d.max(roi[0]), h.max(roi[1]), w.max(roi[2])];
    let pos: Vec<[usize; 3]> = {
        let a = [0, 1, 2].map(|i| axis_positions(padded[i], roi[i], sw.overlap));
        a[0].iter()
            .flat_map(|&z| {
                let a = &a;
                a[1].iter()
                    .flat_map(move |&y| a[2].iter().map(move |&x| [z, y, x]))
            })
            .collect()
    };
    let g = [0, 1, 2].map(|i| gauss(roi[i], sw.blend));
    let tile = roi[0] * roi[1] * roi[2];
    let vol = d * h * w;
    let mut acc: Vec<f32> = Vec::new();
    let mut norm = vec![0f32; vol];
    let mut k_out = 0;
    for chunk in pos.chunks(sw.batch.max(1)) {
        let mut tiles = vec![0f32; chunk.len() * c * tile];
        for (t, p) in chunk.iter().enumerate() {
            for ch in 0..c {
                for z in 0..roi[0].min(d.saturating_sub(p[0])) {
                    for y in 0..roi[1].min(h.saturating_sub(p[1])) {
                        let len = roi[2].min(w.saturating_sub(p[2]));
                        let src = ((ch * d + p[0] + z) * h + p[1] + y) * w + p[2];
                        let dst = (((t * c + ch) * roi[0] + z) * roi[1] + y) * roi[2];
                        tiles[dst..dst + len].copy_from_slice(&image[src..src + len]);
                    }
                }
            }
        }
        let x = Tensor::from_vec(tiles, (chunk.len(), c, roi[0], roi[1], roi[2]), device)?;
        let probs = tile_probabilities(model, &x, sw)?;
        let k = probs.dim(1)?;
        if acc.is_empty() {
            k_out = k;
            acc = vec![0f32; k * vol];
        }
        let pv = probs.flatten_all()?.to_vec1::<f32>()?;
        for (t, p) in chunk.iter().enumerate() {
            for z in 0..roi[0].min(d.saturating_sub(p[0])) {
                for y in 0..roi[1].min(h.saturating_sub(p[1])) {
                    let gzy = g[0][z] * g[1][y];
                    let len = roi[2].min(w.saturating_sub(p[2]));
                    for (x, &gx) in g[2].iter().enumerate().take(len) {
                        let wv = gzy * gx;
                        let o = ((p[0] + z) * h + p[1] + y) * w + p[2] + x;
                        norm[o] += wv;
                        for ch in 0..k {
                            let src = (((t * k + ch) * roi[0] + z) * roi[1] + y) * roi[2] + x;
                            acc[ch * vol + o] += wv * pv[src];
                        }
                    }
                }
            }
        }
    }
    for ch in 0..k_out {
        for (a, &n) in acc[ch * vol..(ch + 1) * vol].iter_mut().zip(&norm) {
            *a /= n;
        }
    }
    Ok((acc, k_out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use seg_models::{ModelConfig, Network};

    #[test]
    fn windows_cover_the_volume_and_one_window_equals_a_plain_pass() {
        assert_eq!(axis_positions(40, 16, 0.5), vec![0, 8, 16, 24]);
        assert_eq!(axis_positions(10, 16, 0.5), vec![0]);
        let cfg = ModelConfig::from_name("unet")
            .unwrap()
            .with_base(2)
            .with_in_channels(1)
            .with_out_channels(3)
            .with_dims(3);
        let net = Network::new(&cfg, &Device::Cpu, 0).unwrap();
        let model = net.inference_model().unwrap();
        let (d, h, w) = (16, 16, 16);
        let img: Vec<f32> = (0..d * h * w)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
            .collect();
        let sw = SlidingWindow {
            roi3: Some([16, 16, 16]),
            overlap: 0.5,
            ..SlidingWindow::default()
        };
        let (p, k) = predict_volume(&model, &img, 1, [d, h, w], &sw, &Device::Cpu).unwrap();
        assert_eq!(k, 3);
        let x = Tensor::from_vec(img.clone(), (1, 1, d, h, w), &Device::Cpu).unwrap();
        let want = seg_core::nn::ops::softmax(&model.forward_t(&x, false).unwrap(), 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let diff = p
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-5, "{diff}");
        // a larger volume: tiles blend to probabilities summing to one
        let (d2, h2, w2) = (20, 24, 18);
        let img2: Vec<f32> = (0..d2 * h2 * w2)
            .map(|i| ((i * 13 % 31) as f32) / 15.0 - 1.0)
            .collect();
        let sw2 = SlidingWindow { tta: true, ..sw };
        let (p2, _) = predict_volume(&model, &img2, 1, [d2, h2, w2], &sw2, &Device::Cpu).unwrap();
        let n = d2 * h2 * w2;
        for i in (0..n).step_by(97) {
            let s: f32 = (0..3).map(|c| p2[c * n + i]).sum();
            assert!((s - 1.0).abs() < 1e-4, "{s}");
        }
        // bad input: a NaN is a typed error
        let mut bad = img;
        bad[5] = f32::NAN;
        assert!(predict_volume(&model, &bad, 1, [d, h, w], &sw, &Device::Cpu).is_err());
    }
}
