//! The preprocessing plan: how raw file values become network input. It is
//! serialisable so that it travels inside every checkpoint and `predict`
//! applies exactly what training applied.

use crate::error::{Error, Result};
use crate::intensity::{self, ChannelChoice, ScaleIntensityRange, WindowSpec};
use crate::sample::hwc_to_chw;
use crate::volume::{Format, StoredType, Volume};
use serde::{Deserialize, Serialize};

/// CLAHE settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClaheSpec {
    /// Clip limit (× mean bin count); 2.0 is usual for retina.
    pub clip_limit: f32,
    /// Tiles per axis; 8 is usual.
    pub tiles: usize,
}

/// Final normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Normalise {
    /// Leave values as they are.
    None,
    /// Zero mean, unit variance per channel, statistics inside the FOV.
    #[default]
    ZscoreFov,
    /// Zero mean, unit variance per channel over the whole image.
    Zscore,
    /// Onto [0, 1] per channel.
    MinMax,
}

/// Every step from file values to network input, in order: scale to [0, 1]
/// (by the stored type's range for 2D images, or by `window` /
/// `scale_range` for CT/MR), channel choice, CLAHE, gamma, normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preprocess {
    pub channels: ChannelChoice,
    pub window: Option<WindowSpec>,
    pub scale_range: Option<ScaleIntensityRange>,
    pub clahe: Option<ClaheSpec>,
    pub gamma: Option<f32>,
    pub normalise: Normalise,
}

impl Default for Preprocess {
    fn default() -> Self {
        Self::fundus()
    }
}

impl Preprocess {
    /// The usual fundus plan: green channel, CLAHE 2.0 / 8×8, z-score in the FOV.
    pub fn fundus() -> Self {
        Self {
            channels: ChannelChoice::Green,
            window: None,
            scale_range: None,
            clahe: Some(ClaheSpec {
                clip_limit: 2.0,
                tiles: 8,
            }),
            gamma: None,
            normalise: Normalise::ZscoreFov,
        }
    }

    /// Output channels for an input with `channels` channels.
    pub fn out_channels(&self, channels: usize) -> usize {
        match self.channels {
            ChannelChoice::All => channels,
            _ => 1,
        }
    }

    /// Applies the plan to interleaved `[h, w, c]` values already in [0, 1];
    /// returns channel-planar output and its channel count.
    pub fn apply_unit(
        &self,
        hwc: &[f32],
        h: usize,
        w: usize,
        c: usize,
        fov: Option<&[u8]>,
    ) -> Result<(Vec<f32>, usize)> {
        let (vals, ch) = intensity::choose_channels(hwc, c, self.channels);
        let mut chw = hwc_to_chw(&vals, h, w, ch);
        let n = h * w;
        for k in 0..ch {
            let plane = &mut chw[k * n..(k + 1) * n];
            if let Some(cl) = self.clahe {
                let out = intensity::clahe(plane, h, w, cl.clip_limit, cl.tiles)?;
                plane.copy_from_slice(&out);
            }
            if let Some(g) = self.gamma {
                intensity::gamma(plane, g);
            }
            match self.normalise {
                Normalise::None => {}
                Normalise::ZscoreFov => match fov {
                    Some(m) if m.iter().any(|&v| v != 0) => intensity::zscore(plane, Some(m))?,
                    _ => intensity::zscore(plane, None)?,
                },
                Normalise::Zscore => intensity::zscore(plane, None)?,
                Normalise::MinMax => intensity::min_max(plane),
            }
        }
        Ok((chw, ch))
    }

    /// Scales file values to [0, 1]: the window or ScaleIntensityRange when
    /// set, else the stored type's range for 2D images, else min-max.
    pub fn to_unit(
        &self,
        values: &[f32],
        stored: StoredType,
        format: Format,
        invert: bool,
    ) -> Result<Vec<f32>> {
        let mut v = values.to_vec();
        if let Some(w) = self.window {
            intensity::apply_window(&mut v, w, invert);
        } else if let Some(r) = self.scale_range {
            r.apply(&mut v)?;
        } else if format == Format::Image {
            let max = match stored {
                StoredType::Uint8 => 255.0,
                StoredType::Uint16 => 65535.0,
                _ => 1.0,
            };
            v.iter_mut().for_each(|x| *x /= max);
        } else {
            intensity::min_max(&mut v);
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "intensity after scaling".into(),
                index: i,
                value: v[i],
            });
        }
        Ok(v)
    }

    /// Applies the whole plan to a 2D image volume (`[h, w, c]`).
    pub fn apply_image(&self, vol: &Volume, fov: Option<&[u8]>) -> Result<(Vec<f32>, usize)> {
        if vol.shape.len() != 3 || vol.format != Format::Image {
            return Err(Error::Shape {
                what: "image preprocessing",
                expected: "a 2D image [height, width, channels]",
                got: vol.shape.clone(),
            });
        }
        let (h, w, c) = (vol.shape[0], vol.shape[1], vol.shape[2]);
        let unit = self.to_unit(&vol.values, vol.stored, vol.format, false)?;
        self.apply_unit(&unit, h, w, c, fov)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_round_trips_through_json_and_normalises_in_the_fov() {
        let p = Preprocess::fundus();
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Preprocess>(&j).unwrap(), p);
        let (h, w) = (16, 16);
        let hwc: Vec<f32> = (0..h * w * 3).map(|i| (i % 97) as f32 / 97.0).collect();
        let fov: Vec<u8> = (0..h * w).map(|i| (i % 3 != 0) as u8).collect();
        let (out, ch) = p.apply_unit(&hwc, h, w, 3, Some(&fov)).unwrap();
        assert_eq!(ch, 1);
        let inside: Vec<f32> = out
            .iter()
            .zip(&fov)
            .filter(|(_, &f)| f == 1)
            .map(|(&v, _)| v)
            .collect();
        let mean = inside.iter().sum::<f32>() / inside.len() as f32;
        assert!(mean.abs() < 1e-4, "{mean}");
    }

    #[test]
    fn a_window_scales_raw_values_before_normalisation_and_travels_in_json() {
        let p = Preprocess {
            window: Some("40,400".parse().unwrap()),
            clahe: None,
            normalise: Normalise::None,
            ..Preprocess::fundus()
        };
        let back: Preprocess = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        // DICOM linear window, centre 40, width 400: below -160 → 0, above 240 → 1
        let raw = [-1000.0, -160.0, 39.5, 240.0, 1000.0];
        let unit = p
            .to_unit(&raw, StoredType::Int16, Format::Nifti, false)
            .unwrap();
        let want = [0.0, 0.0, 0.5, 1.0, 1.0];
        for (a, b) in unit.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{unit:?}");
        }
        // on a 2D image the window replaces the stored type's scaling
        let vol = Volume {
            format: Format::Image,
            shape: vec![2, 2, 1],
            layout: crate::volume::Layout::RowMajor,
            stored: StoredType::Uint8,
            raw: crate::volume::Stats::of([0.0, 255.0]),
            values: vec![0.0, 40.0, 90.0, 255.0],
            spacing: vec![1.0; 2],
            affine: None,
            window: None,
            transfer_syntax: None,
            photometric: None,
        };
        let narrow = Preprocess {
            window: Some(WindowSpec {
                center: 40.0,
                width: 101.0,
            }),
            ..p
        };
        let (out, ch) = narrow.apply_image(&vol, None).unwrap();
        assert_eq!(ch, 1);
        // (x - 39.5) / 100 + 0.5 inside (-10.5, 89.5]; above it 1
        let want = [0.105, 0.505, 1.0, 1.0];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }
}
