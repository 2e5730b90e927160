//! Intensity transforms: DICOM linear windowing with named presets, MONAI's
//! ScaleIntensityRange, z-score (optionally inside a mask), min-max,
//! percentile clipping, and fundus preprocessing (channel choice, CLAHE, gamma).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// A display window: centre and width (DICOM VOI LUT, linear function).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub center: f64,
    pub width: f64,
}

/// Named CT windows (Hounsfield units), the usual radiology settings
/// (Radiopaedia, "Windowing (CT)"; Hoang et al., AJR 2010, for the stroke
/// window; Kamalian et al. for the subdural window):
///
/// | preset | centre | width | use |
/// |---|---|---|---|
/// | `brain` | 40 | 80 | head, grey/white matter |
/// | `subdural` | 75 | 215 | head, thin blood collections |
/// | `stroke` | 32 | 8 | head, early ischaemia |
/// | `lung` | −600 | 1500 | chest, parenchyma |
/// | `mediastinum` | 50 | 350 | chest, soft tissue |
/// | `abdomen` | 40 | 400 | abdominal soft tissue |
/// | `soft_tissue` | 50 | 400 | general soft tissue |
/// | `liver` | 30 | 150 | liver lesions |
/// | `bone` | 400 | 1800 | skeleton |
pub fn window_preset(name: &str) -> Option<WindowSpec> {
    let (center, width) = match name {
        "brain" => (40.0, 80.0),
        "subdural" => (75.0, 215.0),
        "stroke" => (32.0, 8.0),
        "lung" => (-600.0, 1500.0),
        "mediastinum" => (50.0, 350.0),
        "abdomen" => (40.0, 400.0),
        "soft_tissue" => (50.0, 400.0),
        "liver" => (30.0, 150.0),
        "bone" => (400.0, 1800.0),
        _ => return None,
    };
    Some(WindowSpec { center, width })
}

/// The names [`window_preset`] knows.
pub const WINDOW_PRESETS: [&str; 9] = [
    "brain",
    "subdural",
    "stroke",
    "lung",
    "mediastinum",
    "abdomen",
    "soft_tissue",
    "liver",
    "bone",
];

/// Why a `--window` value could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WindowParseError {
    /// Neither a preset name nor `CENTER,WIDTH`.
    #[error("unknown window {0:?}: expected a preset ({presets}) or CENTER,WIDTH such as 40,400", presets = WINDOW_PRESETS.join(", "))]
    Unknown(String),
    /// `CENTER,WIDTH` with a part that is not a finite number, or a width below 1.
    #[error("window {text:?}: {reason}")]
    BadValue { text: String, reason: String },
}

impl std::str::FromStr for WindowSpec {
    type Err = WindowParseError;

    /// A preset name (see [`window_preset`]) or `CENTER,WIDTH` in the file's
    /// units, e.g. `40,400` or `-600,1500`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(w) = window_preset(&t.to_ascii_lowercase()) {
            return Ok(w);
        }
        let Some((c, w)) = t.split_once(',') else {
            return Err(WindowParseError::Unknown(s.to_string()));
        };
        let bad = |reason: String| WindowParseError::BadValue {
            text: s.to_string(),
            reason,
        };
        let num = |v: &str, what: &str| match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(bad(format!(
                "the {what} {:?} is not a finite number",
                v.trim()
            ))),
        };
        let (center, width) = (num(c, "centre")?, num(w, "width")?);
        if width < 1.0 {
            return Err(bad(format!("the width must be at least 1, got {width}")));
        }
        Ok(WindowSpec { center, width })
    }
}

/// DICOM PS3.3 C.11.2.1.2.1 linear VOI function onto [y_min, y_max]:
/// `x <= c-0.5-(w-1)/2 → y_min`, `x > c-0.5+(w-1)/2 → y_max`, else
/// `((x-(c-0.5))/(w-1)+0.5)*(y_max-y_min)+y_min`. With `invert`
/// (MONOCHROME1) the output is flipped.
pub fn window_linear(x: f64, w: WindowSpec, y_min: f64, y_max: f64, invert: bool) -> f64 {
    let (c, width) = (w.center, w.width.max(1.0));
    let y = if x <= c - 0.5 - (width - 1.0) / 2.0 {
        y_min
    } else if x > c - 0.5 + (width - 1.0) / 2.0 {
        y_max
    } else {
        ((x - (c - 0.5)) / (width - 1.0) + 0.5) * (y_max - y_min) + y_min
    };
    if invert {
        y_max + y_min - y
    } else {
        y
    }
}

/// Applies [`window_linear`] to every value, onto [0, 1].
pub fn apply_window(values: &mut [f32], w: WindowSpec, invert: bool) {
    for v in values.iter_mut() {
        *v = window_linear(*v as f64, w, 0.0, 1.0, invert) as f32;
    }
}

/// MONAI's ScaleIntensityRange: maps [a_min, a_max] linearly onto
/// [b_min, b_max], clipping to it when `clip`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleIntensityRange {
    pub a_min: f32,
    pub a_max: f32,
    pub b_min: f32,
    pub b_max: f32,
    pub clip: bool,
}

impl ScaleIntensityRange {
    /// Applies the mapping in place.
    pub fn apply(&self, values: &mut [f32]) -> Result<()> {
        if self.a_max == self.a_min {
            return Err(Error::Setting {
                setting: "ScaleIntensityRange a_max",
                expected: "a value other than a_min".into(),
                got: self.a_max.to_string(),
            });
        }
        let scale = (self.b_max - self.b_min) / (self.a_max - self.a_min);
        let (lo, hi) = (self.b_min.min(self.b_max), self.b_min.max(self.b_max));
        for v in values.iter_mut() {
            let y = (*v - self.a_min) * scale + self.b_min;
            *v = if self.clip { y.clamp(lo, hi) } else { y };
        }
        Ok(())
    }
}

/// Mean and standard deviation of the finite values (inside `mask` when given).
fn mean_std(values: &[f32], mask: Option<&[u8]>) -> Option<(f64, f64)> {
    let sel = |i: usize| mask.is_none_or(|m| m[i] != 0);
    let (mut n, mut s) = (0usize, 0.0f64);
    for (i, &v) in values.iter().enumerate() {
        if sel(i) && v.is_finite() {
            n += 1;
            s += v as f64;
        }
    }
    if n == 0 {
        return None;
    }
    let m = s / n as f64;
    let var = values
        .iter()
        .enumerate()
        .filter(|&(i, v)| sel(i) && v.is_finite())
        .map(|(_, &v)| (v as f64 - m).powi(2))
        .sum::<f64>()
        / n as f64;
    Some((m, var.sqrt()))
}

/// Z-score normalisation, statistics from the values inside `mask` (all when
/// `None`), applied to every value. A constant image becomes zeros.
pub fn zscore(values: &mut [f32], mask: Option<&[u8]>) -> Result<()> {
    if let Some(m) = mask {
        if m.len() != values.len() {
            return Err(Error::ShapeMismatch {
                what: "z-score mask".into(),
                a: vec![m.len()],
                b: vec![values.len()],
            });
        }
    }
    let (m, s) = mean_std(values, mask).ok_or(Error::NoFiniteValue {
        operation: "z-score",
        masked: mask.is_some(),
    })?;
    let s = if s > 0.0 { s } else { 1.0 };
    for v in values.iter_mut() {
        *v = ((*v as f64 - m) / s) as f32;
    }
    Ok(())
}

/// Min-max scaling onto [0, 1]; a constant image becomes zeros.
pub fn min_max(values: &mut [f32]) {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let range = hi - lo;
    for v in values.iter_mut() {
        *v = if range > 0.0 { (*v - lo) / range } else { 0.0 };
    }
}

/// The `q`-th percentile (0–100) of the finite values, linear interpolation
/// between order statistics (numpy's default).
pub fn percentile(values: &[f32], q: f64) -> Option<f32> {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 100.0) / 100.0 * (v.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos - pos.floor());
    let j = (i + 1).min(v.len() - 1);
    Some((v[i] as f64 * (1.0 - f) + v[j] as f64 * f) as f32)
}

/// Clips values to the [lower, upper] percentiles.
pub fn percentile_clip(values: &mut [f32], lower: f64, upper: f64) -> Result<()> {
    let lo = percentile(values, lower).ok_or(Error::NoFiniteValue {
        operation: "percentile clip",
        masked: false,
    })?;
    let hi = percentile(values, upper).unwrap_or(lo);
    for v in values.iter_mut() {
        *v = v.clamp(lo, hi);
    }
    Ok(())
}

/// Which channel a fundus photograph is reduced to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ChannelChoice {
    /// Keep every channel.
    All,
    /// The green channel, where vessels contrast best (the usual choice for DRIVE).
    #[default]
    Green,
    /// ITU-R BT.601 luminance 0.299 R + 0.587 G + 0.114 B.
    Luminance,
}

/// Reduces an interleaved `[h, w, c]` image to the chosen channel(s).
pub fn choose_channels(
    values: &[f32],
    channels: usize,
    choice: ChannelChoice,
) -> (Vec<f32>, usize) {
    match (choice, channels) {
        (ChannelChoice::All, _) | (_, 1) => (values.to_vec(), channels),
        (ChannelChoice::Green, c) => (values.chunks(c).map(|p| p[1.min(c - 1)]).collect(), 1),
        (ChannelChoice::Luminance, c) if c >= 3 => (
            values
                .chunks(c)
                .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
                .collect(),
            1,
        ),
        (ChannelChoice::Luminance, c) => (values.chunks(c).map(|p| p[0]).collect(), 1),
    }
}

/// Gamma correction of values in [0, 1]: `v^gamma`.
pub fn gamma(values: &mut [f32], g: f32) {
    for v in values.iter_mut() {
        *v = v.clamp(0.0, 1.0).powf(g);
    }
}

/// Contrast-limited adaptive histogram equalisation (Zuiderveld 1994) of one
/// channel with values in [0, 1]: `tiles` × `tiles` contextual regions, 256
/// bins, histogram clip at `clip_limit` × the mean bin count (OpenCV's
/// convention; 2.0 and 8×8 are the usual retina settings), excess spread
/// evenly, bilinear interpolation between the tile mappings.
pub fn clahe(
    values: &[f32],
    height: usize,
    width: usize,
    clip_limit: f32,
    tiles: usize,
) -> Result<Vec<f32>> {
    if values.len() != height * width {
        return Err(Error::ShapeMismatch {
            what: "CLAHE input".into(),
            a: vec![values.len()],
            b: vec![height, width],
        });
    }
    if tiles == 0 || height == 0 || width == 0 {
        return Err(Error::Setting {
            setting: "CLAHE",
            expected: "a non-empty image and at least one tile".into(),
            got: format!("{height}x{width} image, {tiles} tiles"),
        });
    }
    const BINS: usize = 256;
    let bin = |v: f32| ((v.clamp(0.0, 1.0) * (BINS - 1) as f32).round() as usize).min(BINS - 1);
    let (ty, tx) = (tiles.min(height), tiles.min(width));
    let tile_h = height.div_ceil(ty);
    let tile_w = width.div_ceil(tx);
    // mapping per tile
    let mut maps = vec![[0f32; BINS]; ty * tx];
    for r in 0..ty {
        for c in 0..tx {
            let (y0, y1) = (r * tile_h, ((r + 1) * tile_h).min(height));
            let (x0, x1) = (c * tile_w, ((c + 1) * tile_w).min(width));
            let mut hist = [0u32; BINS];
            for y in y0..y1 {
                for x in x0..x1 {
                    hist[bin(values[y * width + x])] += 1;
                }
            }
            let n = ((y1 - y0) * (x1 - x0)).max(1) as f32;
            let limit = (clip_limit * n / BINS as f32).max(1.0);
            let mut excess = 0f32;
            let mut h: Vec<f32> = hist.iter().map(|&v| v as f32).collect();
            for v in h.iter_mut() {
                if *v > limit {
                    excess += *v - limit;
                    *v = limit;
                }
            }
            let add = excess / BINS as f32;
            let mut cdf = 0f32;
            for (k, v) in h.iter().enumerate() {
                cdf += v + add;
                maps[r * tx + c][k] = (cdf / n).min(1.0);
            }
        }
    }
    // bilinear interpolation between tile centres
    let mut out = vec![0f32; values.len()];
    for y in 0..height {
        let fy = (y as f32 + 0.5) / tile_h as f32 - 0.5;
        let r0 = fy.floor().clamp(0.0, (ty - 1) as f32) as usize;
        let r1 = (r0 + 1).min(ty - 1);
        let wy = (fy - r0 as f32).clamp(0.0, 1.0);
        for x in 0..width {
            let fx = (x as f32 + 0.5) / tile_w as f32 - 0.5;
            let c0 = fx.floor().clamp(0.0, (tx - 1) as f32) as usize;
            let c1 = (c0 + 1).min(tx - 1);
            let wx = (fx - c0 as f32).clamp(0.0, 1.0);
            let b = bin(values[y * width + x]);
            let m = |r: usize, c: usize| maps[r * tx + c][b];
            out[y * width + x] = (1.0 - wy) * ((1.0 - wx) * m(r0, c0) + wx * m(r0, c1))
                + wy * ((1.0 - wx) * m(r1, c0) + wx * m(r1, c1));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_follows_the_dicom_formula() {
        let w = WindowSpec {
            center: 40.0,
            width: 100.0,
        };
        assert_eq!(window_linear(-10.0, w, 0.0, 255.0, false), 0.0);
        assert_eq!(window_linear(89.6, w, 0.0, 255.0, false), 255.0);
        let mid = window_linear(39.5, w, 0.0, 255.0, false);
        assert!((mid - 127.5).abs() < 1e-9);
        assert_eq!(window_linear(-10.0, w, 0.0, 255.0, true), 255.0);
        assert_eq!(
            window_preset("lung"),
            Some(WindowSpec {
                center: -600.0,
                width: 1500.0
            })
        );
        assert!(window_preset("heart").is_none());
    }

    #[test]
    fn scale_range_zscore_minmax_percentiles() {
        let mut v = vec![-1000.0, 0.0, 500.0, 2000.0];
        ScaleIntensityRange {
            a_min: -1000.0,
            a_max: 1000.0,
            b_min: 0.0,
            b_max: 1.0,
            clip: true,
        }
        .apply(&mut v)
        .unwrap();
        for (a, b) in v.iter().zip([0.0, 0.5, 0.75, 1.0]) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        let mut z = vec![1.0, 2.0, 3.0, 100.0];
        zscore(&mut z, Some(&[1, 1, 1, 0])).unwrap();
        assert!((z[1]).abs() < 1e-6 && (z[0] + 1.2247449).abs() < 1e-5);
        let mut m = vec![2.0, 4.0, 6.0];
        min_max(&mut m);
        assert_eq!(m, vec![0.0, 0.5, 1.0]);
        let p: Vec<f32> = (0..=100).map(|i| i as f32).collect();
        assert_eq!(percentile(&p, 25.0), Some(25.0));
        let mut c = p.clone();
        percentile_clip(&mut c, 5.0, 95.0).unwrap();
        assert_eq!((c[0], c[100]), (5.0, 95.0));
        assert!(zscore(&mut [f32::NAN], None).is_err());
    }

    #[test]
    fn clahe_raises_local_contrast_and_keeps_range() {
        // a dim, low-contrast ramp
        let (h, w) = (64, 64);
        let v: Vec<f32> = (0..h * w)
            .map(|i| 0.4 + 0.1 * ((i % w) as f32 / w as f32))
            .collect();
        let out = clahe(&v, h, w, 2.0, 8).unwrap();
        let range = |x: &[f32]| {
            x.iter().cloned().fold(f32::MIN, f32::max) - x.iter().cloned().fold(f32::MAX, f32::min)
        };
        assert!(
            range(&out) > 1.2 * range(&v),
            "{} vs {}",
            range(&out),
            range(&v)
        );
        // the clip limit caps the amplification: a high limit stretches more
        let loose = clahe(&v, h, w, 40.0, 8).unwrap();
        assert!(
            range(&loose) > range(&out) + 0.1,
            "{} vs {}",
            range(&loose),
            range(&out)
        );
        assert!(out.iter().all(|&x| (0.0..=1.0).contains(&x)));
        // a constant image stays constant (every tile maps it alike)
        let flat = clahe(&vec![0.3; h * w], h, w, 2.0, 8).unwrap();
        assert!(flat.iter().all(|&x| (x - flat[0]).abs() < 1e-6));
        assert!(clahe(&v, h, w + 1, 2.0, 8).is_err());
    }

    #[test]
    fn windows_parse_from_presets_and_numbers() {
        for name in WINDOW_PRESETS {
            let w: WindowSpec = name.parse().unwrap();
            assert_eq!(Some(w), window_preset(name));
        }
        assert_eq!(
            "Brain".parse::<WindowSpec>().unwrap(),
            WindowSpec {
                center: 40.0,
                width: 80.0
            }
        );
        assert_eq!(
            "40,400".parse::<WindowSpec>().unwrap(),
            WindowSpec {
                center: 40.0,
                width: 400.0
            }
        );
        assert_eq!(
            " -600, 1500.5 ".parse::<WindowSpec>().unwrap(),
            WindowSpec {
                center: -600.0,
                width: 1500.5
            }
        );
        let e = "heart".parse::<WindowSpec>().unwrap_err();
        assert_eq!(e, WindowParseError::Unknown("heart".into()));
        let msg = e.to_string();
        assert!(msg.contains("lung") && msg.contains("subdural") && msg.contains("CENTER,WIDTH"));
        for bad in ["40,", "a,400", "40,0", "40,nan", "40,400,3", "40,-5"] {
            assert!(
                matches!(
                    bad.parse::<WindowSpec>(),
                    Err(WindowParseError::BadValue { .. })
                ),
                "{bad}"
            );
        }
    }
}
