//! Sliding-window inference (MONAI's `SlidingWindowInferer` / nnU-Net's
//! defaults): tiles of `roi` pixels with fractional `overlap` (0.5), gaussian
//! or constant blending, tiles run `batch` at a time, optional flip TTA. Any
//! image size (images smaller than a tile are zero-padded). Memory is bounded
//! by the tile batch plus the output accumulators, and no autograd graph is
//! built (the model runs on detached weights).

mod volume;

pub use volume::predict_volume;

use crate::error::{Error, Result};
use seg_core::{Device, Tensor};
use seg_data::sampling::grid_positions;
use seg_models::Model;
use serde::{Deserialize, Serialize};

/// How tiles are blended where they overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Blend {
    /// Gaussian importance (σ = roi / 8), nnU-Net's choice: tile borders count less.
    #[default]
    Gaussian,
    /// Plain average.
    Constant,
}

/// Sliding-window settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlidingWindow {
    pub roi: usize,
    pub overlap: f32,
    pub blend: Blend,
    /// Tiles per forward pass.
    pub batch: usize,
    /// Average over horizontal/vertical flips (4 passes).
    pub tta: bool,
    /// The flips TTA may use: along rows (vertical) and columns
    /// (horizontal). A planned model trained without flips along an axis
    /// (structures that keep a side) is not averaged over them.
    #[serde(default = "both_axes")]
    pub tta_axes: [bool; 2],
    /// 3D models: the window's depth, height and width (`roi` is the 2D
    /// side); `None` for 2D models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roi3: Option<[usize; 3]>,
    /// 3D models: whether TTA may flip along depth.
    #[serde(default = "yes")]
    pub tta_depth: bool,
}

fn yes() -> bool {
    true
}

fn both_axes() -> [bool; 2] {
    [true, true]
}

impl Default for SlidingWindow {
    fn default() -> Self {
        Self {
            roi: 128,
            overlap: 0.5,
            blend: Blend::Gaussian,
            batch: 4,
            tta: false,
            tta_axes: both_axes(),
            roi3: None,
            tta_depth: true,
        }
    }
}

fn importance(roi: usize, blend: Blend) -> Vec<f32> {
    match blend {
        Blend::Constant => vec![1.0; roi * roi],
        Blend::Gaussian => {
            let sigma = roi as f32 / 8.0;
            let c = (roi as f32 - 1.0) / 2.0;
            let g: Vec<f32> = (0..roi)
                .map(|i| (-((i as f32 - c).powi(2)) / (2.0 * sigma * sigma)).exp())
                .collect();
            let mut w: Vec<f32> = (0..roi * roi).map(|k| g[k / roi] * g[k % roi]).collect();
            let max = w.iter().cloned().fold(0.0, f32::max);
            let min_pos = w
                .iter()
                .cloned()
                .filter(|&v| v > 0.0)
                .fold(f32::INFINITY, f32::min);
            for v in w.iter_mut() {
                *v = (*v / max).max(min_pos / max).max(1e-6);
            }
            w
        }
    }
}

/// Probabilities of a batch of tiles (sigmoid for one output channel,
/// softmax otherwise), averaged over the flips `sw.tta` and `sw.tta_axes`
/// allow (up to four passes), on the CPU.
fn probabilities(model: &Model, x: &Tensor, sw: &SlidingWindow) -> Result<Tensor> {
    let all = [(false, false), (false, true), (true, false), (true, true)];
    let flips: Vec<(bool, bool)> = all
        .into_iter()
        .filter(|&(fv, fh)| {
            (!fv && !fh) || (sw.tta && (!fv || sw.tta_axes[0]) && (!fh || sw.tta_axes[1]))
        })
        .collect();
    let mut probs: Option<Tensor> = None;
    for &(fv, fh) in &flips {
        let mut xi = x.clone();
        if fv {
            xi = xi.flip(&[2])?;
        }
        if fh {
            xi = xi.flip(&[3])?;
        }
        let logits = seg_core::on_worker(|| model.forward_t(&xi, false))?;
        let mut p = if logits.dim(1)? == 1 {
            seg_core::ops::sigmoid(&logits)?
        } else {
            seg_core::nn::ops::softmax(&logits, 1)?
        };
        if fh {
            p = p.flip(&[3])?;
        }
        if fv {
            p = p.flip(&[2])?;
        }
        probs = Some(match probs {
            Some(s) => (s + p)?,
            None => p,
        });
    }
    Ok((probs.expect("at least one pass") / flips.len() as f64)?.to_device(&Device::Cpu)?)
}

/// Probabilities (sigmoid for one output channel, softmax otherwise) of a
/// channel-planar image `c × h × w`: returns `out_channels × h × w`.
pub fn predict(
    model: &Model,
    image: &[f32],
    c: usize,
    h: usize,
    w: usize,
    sw: &SlidingWindow,
    device: &Device,
) -> Result<(Vec<f32>, usize)> {
    if image.len() != c * h * w || h == 0 || w == 0 {
        return Err(Error::BufferSize {
            len: image.len(),
            channels: c,
            height: h,
            width: w,
        });
    }
    if let Some(i) = image.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFiniteInput {
            index: i,
            value: image[i],
        });
    }
    let roi = sw.roi.max(16);
    let (ph, pw) = (h.max(roi), w.max(roi));
    // zero-pad to at least one tile
    let mut padded = vec![0f32; c * ph * pw];
    for ch in 0..c {
        for y in 0..h {
            padded[ch * ph * pw + y * pw..ch * ph * pw + y * pw + w]
                .copy_from_slice(&image[ch * h * w + y * w..ch * h * w + (y + 1) * w]);
        }
    }
    let weight = importance(roi, sw.blend);
    let positions = grid_positions(ph, pw, roi, sw.overlap);
    let mut acc: Vec<f32> = Vec::new();
    let mut norm = vec![0f32; ph * pw];
    let mut out_c = 0;
    for chunk in positions.chunks(sw.batch.max(1)) {
        let mut tiles = Vec::with_capacity(chunk.len() * c * roi * roi);
        for &(y0, x0) in chunk {
            for ch in 0..c {
                for y in 0..roi {
                    let row = ch * ph * pw + (y0 + y) * pw + x0;
                    tiles.extend_from_slice(&padded[row..row + roi]);
                }
            }
        }
        let x = Tensor::from_vec(tiles, (chunk.len(), c, roi, roi), device)?;
        let probs = probabilities(model, &x, sw)?;
        let oc = probs.dim(1)?;
        if acc.is_empty() {
            out_c = oc;
            acc = vec![0f32; oc * ph * pw];
        }
        let pv = probs.flatten_all()?.to_vec1::<f32>()?;
        for (k, &(y0, x0)) in chunk.iter().enumerate() {
            for ch in 0..oc {
                for y in 0..roi {
                    for xx in 0..roi {
                        let wv = weight[y * roi + xx];
                        let src = ((k * oc + ch) * roi + y) * roi + xx;
                        acc[ch * ph * pw + (y0 + y) * pw + x0 + xx] += wv * pv[src];
                    }
                }
            }
            for y in 0..roi {
                for xx in 0..roi {
                    norm[(y0 + y) * pw + x0 + xx] += weight[y * roi + xx];
                }
            }
        }
    }
    let mut out = vec![0f32; out_c * h * w];
    for ch in 0..out_c {
        for y in 0..h {
            for xx in 0..w {
                out[ch * h * w + y * w + xx] = acc[ch * ph * pw + y * pw + xx] / norm[y * pw + xx];
            }
        }
    }
    Ok((out, out_c))
}

/// Planes of one size that fit in one tile are run this many per forward pass.
const PLANES_PER_PASS: usize = 16;

/// [`predict`] over many planes of the same `c × h × w` size (the slices of a
/// volume): when a plane fits in one tile, planes are zero-padded to the
/// tile and run `PLANES_PER_PASS` at a time (one tile per plane, so the
/// blending weights cancel and each result is what [`predict`] gives);
/// larger planes go through [`predict`] one by one.
pub fn predict_planes(
    model: &Model,
    planes: &[Vec<f32>],
    c: usize,
    h: usize,
    w: usize,
    sw: &SlidingWindow,
    device: &Device,
) -> Result<Vec<(Vec<f32>, usize)>> {
    let roi = sw.roi.max(16);
    if h > roi || w > roi {
        return planes
            .iter()
            .map(|p| predict(model, p, c, h, w, sw, device))
            .collect();
    }
    for p in planes {
        if p.len() != c * h * w {
            return Err(Error::BufferSize {
                len: p.len(),
                channels: c,
                height: h,
                width: w,
            });
        }
        if let Some(i) = p.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteInput {
                index: i,
                value: p[i],
            });
        }
    }
    let mut out = Vec::with_capacity(planes.len());
    for chunk in planes.chunks(PLANES_PER_PASS) {
        let mut tiles = vec![0f32; chunk.len() * c * roi * roi];
        for (k, p) in chunk.iter().enumerate() {
            for ch in 0..c {
                for y in 0..h {
                    let dst = ((k * c + ch) * roi + y) * roi;
                    tiles[dst..dst + w].copy_from_slice(&p[(ch * h + y) * w..(ch * h + y + 1) * w]);
                }
            }
        }
        let x = Tensor::from_vec(tiles, (chunk.len(), c, roi, roi), device)?;
        let probs = probabilities(model, &x, sw)?;
        let oc = probs.dim(1)?;
        let pv = probs.flatten_all()?.to_vec1::<f32>()?;
        for k in 0..chunk.len() {
            let mut o = vec![0f32; oc * h * w];
            for ch in 0..oc {
                for y in 0..h {
                    let src = ((k * oc + ch) * roi + y) * roi;
                    o[(ch * h + y) * w..(ch * h + y + 1) * w].copy_from_slice(&pv[src..src + w]);
                }
            }
            out.push((o, oc));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seg_models::{ModelConfig, Network};

    #[test]
    fn tiles_cover_the_image_and_batching_does_not_change_it() {
        // Whole-image and tiled passes cover every pixel with probabilities;
        // TTA changes the result; the tile batch size does not.
        let cfg = ModelConfig::from_name("unet")
            .unwrap()
            .with_base(2)
            .with_in_channels(1);
        let net = Network::new(&cfg, &Device::Cpu, 0).unwrap();
        let model = net.inference_model().unwrap();
        let (h, w) = (40, 52);
        let img: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 11) as f32 / 11.0).collect();
        let whole = predict(
            &model,
            &img,
            1,
            h,
            w,
            &SlidingWindow {
                roi: 64,
                ..Default::default()
            },
            &Device::Cpu,
        )
        .unwrap()
        .0;
        assert_eq!(whole.len(), h * w);
        assert!(whole.iter().all(|p| (0.0..=1.0).contains(p)));
        let tiled = predict(
            &model,
            &img,
            1,
            h,
            w,
            &SlidingWindow {
                roi: 32,
                overlap: 0.75,
                blend: Blend::Gaussian,
                batch: 3,
                tta: false,
                ..SlidingWindow::default()
            },
            &Device::Cpu,
        )
        .unwrap()
        .0;
        assert_eq!(tiled.len(), h * w);
        let tta = predict(
            &model,
            &img,
            1,
            h,
            w,
            &SlidingWindow {
                roi: 32,
                tta: true,
                ..Default::default()
            },
            &Device::Cpu,
        )
        .unwrap()
        .0;
        assert_eq!(tta.len(), h * w);
        assert_ne!(tta, tiled);
        // flips only along the rows: neither one pass nor all four
        let rows = predict(
            &model,
            &img,
            1,
            h,
            w,
            &SlidingWindow {
                roi: 32,
                tta: true,
                tta_axes: [true, false],
                ..Default::default()
            },
            &Device::Cpu,
        )
        .unwrap()
        .0;
        let one = predict(
            &model,
            &img,
            1,
            h,
            w,
            &SlidingWindow {
                roi: 32,
                ..Default::default()
            },
            &Device::Cpu,
        )
        .unwrap()
        .0;
        assert_ne!(rows, tta);
        assert_ne!(rows, one);
        let none = predict(
            &model,
            &img,
            1,
            h,
            w,
            &SlidingWindow {
                roi: 32,
                tta: true,
                tta_axes: [false, false],
                ..Default::default()
            },
            &Device::Cpu,
        )
        .unwrap()
        .0;
        assert_eq!(none, one, "no allowed flip: one pass");
        // the same tile layout gives the same answer whatever the tile batch
        let a = predict(
            &model,
            &img,
            1,
            h,
            w,
            &SlidingWindow {
                roi: 32,
                batch: 1,
                ..Default::default()
            },
            &Device::Cpu,
        )
        .unwrap()
        .0;
        let b = predict(
            &model,
            &img,
            1,
            h,
            w,
            &SlidingWindow {
                roi: 32,
                batch: 5,
                ..Default::default()
            },
            &Device::Cpu,
        )
        .unwrap()
        .0;
        let d = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d < 1e-5, "{d}");
        assert!(predict(
            &model,
            &[f32::NAN; 4],
            1,
            2,
            2,
            &SlidingWindow::default(),
            &Device::Cpu
        )
        .is_err());
    }

    #[test]
    fn batched_planes_give_what_predict_gives() {
        let cfg = ModelConfig::from_name("unet")
            .unwrap()
            .with_base(2)
            .with_in_channels(3)
            .with_out_channels(3);
        let net = Network::new(&cfg, &Device::Cpu, 5).unwrap();
        let model = net.inference_model().unwrap();
        let (c, h, w) = (3, 21, 30);
        let planes: Vec<Vec<f32>> = (0..19)
            .map(|k| {
                (0..c * h * w)
                    .map(|i| ((i * 7 + k * 13) % 17) as f32 / 17.0)
                    .collect()
            })
            .collect();
        for tta in [false, true] {
            let sw = SlidingWindow {
                roi: 32,
                tta,
                ..SlidingWindow::default()
            };
            let batched = predict_planes(&model, &planes, c, h, w, &sw, &Device::Cpu).unwrap();
            assert_eq!(batched.len(), planes.len());
            for (p, (b, oc)) in planes.iter().zip(&batched) {
                let (one, oc1) = predict(&model, p, c, h, w, &sw, &Device::Cpu).unwrap();
                assert_eq!(*oc, oc1);
                let d = one
                    .iter()
                    .zip(b)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-5, "tta {tta}: differs by {d}");
            }
        }
    }
}
