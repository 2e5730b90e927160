//! Multi-class label maps: integer labels read from any stored type
//! ([`integer_labels`]), the dataset's label values and their remapping to
//! class indices 0..K-1 and back ([`LabelSet`]), whole-case intensity
//! normalisation ([`IntensityNorm`]), and a case as planes along its slice
//! axis ([`Stack`]) from which 2D / 2.5D training samples are cut.

mod align;
mod stack;

pub use align::{align_label, read_case_image};
pub use stack::{other_axes, spatial_dims, spatial_spacing, Stack};

use crate::error::{Error, Result};
use crate::volume::{Format, Volume};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// Largest number of classes (class indices are stored as `u8`).
pub const MAX_CLASSES: usize = 255;

/// Largest distance of a stored label value from an integer (float labels
/// written by resampling tools carry rounding noise).
const INTEGER_TOLERANCE: f32 = 1e-3;

/// The label values of a dataset in class order: class `k` is stored as
/// `values[k]` in the files. The smallest value (0 when present) is class 0,
/// the background.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSet {
    pub values: Vec<i64>,
    /// Class names (from `dataset.json`), one per value, or empty.
    #[serde(default)]
    pub names: Vec<String>,
}

impl LabelSet {
    /// The set of `values` in increasing order.
    pub fn new(values: impl IntoIterator<Item = i64>) -> Result<Self> {
        let set: BTreeSet<i64> = values.into_iter().collect();
        if set.len() > MAX_CLASSES {
            return Err(Error::Setting {
                setting: "label values",
                expected: format!("at most {MAX_CLASSES} distinct values"),
                got: format!("{} values", set.len()),
            });
        }
        Ok(Self {
            values: set.into_iter().collect(),
            names: Vec::new(),
        })
    }

    /// Number of classes, background included.
    pub fn classes(&self) -> usize {
        self.values.len()
    }

    /// The class index of a stored value.
    pub fn index(&self, value: i64) -> Option<u8> {
        self.values.binary_search(&value).ok().map(|k| k as u8)
    }

    /// The stored value of class `k`.
    pub fn value(&self, k: u8) -> i64 {
        self.values[k as usize]
    }

    /// Class `k`'s name, or its value.
    pub fn name(&self, k: usize) -> String {
        self.names
            .get(k)
            .cloned()
            .unwrap_or_else(|| self.values[k].to_string())
    }

    /// Stored values to class indices; a value outside the set is an error
    /// naming `path`.
    pub fn to_classes(&self, labels: &[i64], path: &Path) -> Result<Vec<u8>> {
        labels
            .iter()
            .map(|&v| {
                self.index(v).ok_or_else(|| Error::UnknownLabel {
                    path: path.to_path_buf(),
                    value: v,
                    known: self.values.clone(),
                })
            })
            .collect()
    }
}

/// The integer labels of a label file read as a [`Volume`]: values in the
/// volume's own order, the first channel of a 2D image (palette images are
/// read as their colours by the image decoder: grey label PNGs are what
/// this reads). A non-integral or non-finite value is an error naming the
/// file and the voxel.
pub fn integer_labels(vol: &Volume, path: &Path) -> Result<Vec<i64>> {
    let (stride, n) = match (vol.format, vol.shape.as_slice()) {
        (Format::Image, [h, w, c]) => (*c, h * w),
        (_, shape) => (1, shape.iter().product()),
    };
    (0..n)
        .map(|i| {
            let v = vol.values[i * stride];
            let r = v.round();
            if !v.is_finite() || (v - r).abs() > INTEGER_TOLERANCE {
                return Err(Error::NonIntegralLabel {
                    path: path.to_path_buf(),
                    index: i,
                    value: v,
                });
            }
            Ok(r as i64)
        })
        .collect()
}

/// Reads a label file: a palette (indexed) PNG gives its palette indices,
/// not its colours; every other file is read as [`crate::read_any`] reads
/// it.
pub fn read_label(path: &Path) -> Result<Volume> {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if is_png {
        if let Some(v) = read_palette_png(path)? {
            return Ok(v);
        }
    }
    crate::read_any(path)
}

/// The indices of an indexed PNG as a one-channel 2D image, or `None` for
/// other PNGs.
fn read_palette_png(path: &Path) -> Result<Option<Volume>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info().map_err(|e| Error::decode(path, "PNG", e))?;
    let info = reader.info();
    if info.color_type != png::ColorType::Indexed {
        return Ok(None);
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let depth = info.bit_depth as usize;
    if (w as u64) * (h as u64) > crate::volume::max_elements() {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            what: "PNG",
            elements: (w as u128) * (h as u128),
            limit: crate::volume::max_elements(),
        });
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::decode(path, "PNG", "image too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| Error::decode(path, "PNG", e))?;
    let line = frame.line_size;
    let mut values = Vec::with_capacity(w * h);
    for y in 0..h {
        let row = &buf[y * line..(y + 1) * line];
        for x in 0..w {
            let v = match depth {
                8 => row[x],
                4 => (row[x / 2] >> (4 * (1 - x % 2))) & 0x0F,
                2 => (row[x / 4] >> (2 * (3 - x % 4))) & 0x03,
                _ => (row[x / 8] >> (7 - x % 8)) & 0x01,
            };
            values.push(v as f32);
        }
    }
    Ok(Some(Volume {
        photometric: Some("palette indices".into()),
        ..Volume::from_image_values(h, w, 1, values)
    }))
}

/// The distinct values of `labels`.
pub fn distinct(labels: &[i64]) -> BTreeSet<i64> {
    let mut seen = BTreeSet::new();
    let mut last = None;
    for &v in labels {
        if last != Some(v) {
            seen.insert(v);
            last = Some(v);
        }
    }
    seen
}

/// Intensity normalisation of a whole case (before slicing, so all slices
/// of a volume share it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IntensityNorm {
    /// Zero mean, unit variance over the case (MR and most modalities; also
    /// 2D images).
    ZscoreCase,
    /// CT: clip to [lower, upper] (the 0.5 / 99.5 percentiles of the
    /// training set's foreground), then z-score with the foreground's mean
    /// and standard deviation: the same mapping for every case.
    Ct {
        lower: f32,
        upper: f32,
        mean: f32,
        std: f32,
    },
}

impl IntensityNorm {
    /// Normalises `values` in place.
    pub fn apply(&self, values: &mut [f32]) -> Result<()> {
        match *self {
            Self::ZscoreCase => crate::intensity::zscore(values, None),
            Self::Ct {
                lower,
                upper,
                mean,
                std,
            } => {
                let s = if std > 0.0 { std } else { 1.0 };
                for v in values.iter_mut() {
                    *v = (v.clamp(lower, upper) - mean) / s;
                }
                Ok(())
            }
        }
    }
}

/// How a multi-class dataset's cases become network inputs, and how outputs
/// become label maps again: recorded in the training config and the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlicePlan {
    /// Slices are cut perpendicular to this axis (0, 1, 2 of the NIfTI
    /// volume; ignored for 2D images).
    pub axis: usize,
    /// Neighbouring slices on each side as extra channels (2.5D).
    pub context: usize,
    pub norm: IntensityNorm,
    pub labels: LabelSet,
    /// In-plane (row, column) spacing the planes are resampled to before
    /// the network sees them (mm; pixels for 2D images without a physical
    /// size); `None`: each case at its own spacing.
    #[serde(default)]
    pub target_spacing: Option<[f64; 2]>,
    /// Axis codes (e.g. `"LAS"`) volumes are reordered to before slicing
    /// (the training set's usual orientation; see [`crate::orient`]);
    /// `None`: as stored.
    #[serde(default)]
    pub orientation: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nifti(dims: [usize; 3], values: Vec<f32>) -> Volume {
        Volume::from_nifti_values(&dims, values, [1.0, 2.0, 3.0])
    }

    #[test]
    fn labels_remap_both_ways_and_unknown_values_are_errors() {
        let set = LabelSet::new([600, 0, 200, 500, 200]).unwrap();
        assert_eq!(set.values, vec![0, 200, 500, 600]);
        let p = Path::new("l.nii");
        let c = set.to_classes(&[0, 500, 600, 200], p).unwrap();
        assert_eq!(c, vec![0, 2, 3, 1]);
        let back: Vec<i64> = c.iter().map(|&k| set.value(k)).collect();
        assert_eq!(back, vec![0, 500, 600, 200]);
        assert!(matches!(
            set.to_classes(&[7], p),
            Err(Error::UnknownLabel { value: 7, .. })
        ));
    }

    #[test]
    fn float_labels_must_be_integers() {
        let p = Path::new("l.nii");
        let ok = nifti([2, 1, 1], vec![2.0004, 1.0]);
        assert_eq!(integer_labels(&ok, p).unwrap(), vec![2, 1]);
        let bad = nifti([2, 1, 1], vec![0.0, 1.5]);
        assert!(matches!(
            integer_labels(&bad, p),
            Err(Error::NonIntegralLabel { index: 1, .. })
        ));
        let nan = nifti([2, 1, 1], vec![f32::NAN, 1.0]);
        assert!(integer_labels(&nan, p).is_err());
    }

    #[test]
    fn palette_pngs_give_their_indices_not_their_colours() {
        let dir = std::env::temp_dir().join(format!("seg-data-palette-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for depth in [png::BitDepth::Eight, png::BitDepth::Two] {
            let p = dir.join(format!("pal{}.png", depth as u8));
            let (w, h) = (5u32, 2u32);
            let idx: Vec<u8> = vec![0, 1, 2, 3, 0, 3, 2, 1, 0, 0];
            let data: Vec<u8> = if depth == png::BitDepth::Eight {
                idx.clone()
            } else {
                // two bits per pixel, rows padded to whole bytes
                idx.chunks(5)
                    .flat_map(|r| {
                        let mut b = [0u8; 2];
                        for (x, &v) in r.iter().enumerate() {
                            b[x / 4] |= v << (2 * (3 - x % 4));
                        }
                        b
                    })
                    .collect()
            };
            let mut enc = png::Encoder::new(
                std::io::BufWriter::new(std::fs::File::create(&p).unwrap()),
                w,
                h,
            );
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(depth);
            // colours whose red channels collide (a colour reading would merge classes)
            enc.set_palette(vec![0, 0, 0, 200, 10, 10, 200, 90, 10, 30, 30, 250]);
            let mut wr = enc.write_header().unwrap();
            wr.write_image_data(&data).unwrap();
            wr.finish().unwrap();
            let v = read_label(&p).unwrap();
            assert_eq!(v.shape, vec![2, 5, 1]);
            let got = integer_labels(&v, &p).unwrap();
            assert_eq!(
                got,
                idx.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                "{depth:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
