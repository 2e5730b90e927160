//! Segmenting files with a model bundle: the whole inference pipeline behind
//! `seg-cli predict`, as a library.
//!
//! A [`Segmenter`] holds a bundle's network (weights detached), preprocessing
//! plan, sliding-window settings and threshold. [`Segmenter::segment_file`]
//! reads an image, a NIfTI volume, a DICOM file or a DICOM series folder,
//! preprocesses it as in training (channels, intensity, FOV-limited
//! normalisation), runs the sliding window (optionally with flip TTA) and
//! returns a [`Segmentation`]: foreground probabilities and 0/1 labels.
//! [`Segmentation::write`] writes them as `seg-cli predict` does: a 16-bit
//! probability PNG and `masks/<name>.png` for 2D images, NIfTI with the
//! input's affine for volumes, each atomically.
//!
//! ```no_run
//! # fn main() -> seg_train::Result<()> {
//! use seg_train::segment::{list_inputs, Segmenter};
//! use std::path::Path;
//! let seg = Segmenter::open(Path::new("best.safetensors"), &seg_core::Device::Cpu)?;
//! for input in list_inputs(Path::new("DRIVE/test/images"))? {
//!     let s = seg.segment_file(&input, None)?;
//!     s.write(Path::new("out"), &seg_data::dataset::file_stem(&input))?;
//! }
//! # Ok(()) }
//! ```

mod labels;
mod overlay;
mod volume;
mod write;

pub use write::{Geometry, Segmentation, Written};

use crate::checkpoint::{load_bundle, BundleInfo};
use crate::error::{Error, Result};
use crate::infer::{predict, SlidingWindow};
use seg_core::Device;
use seg_data::io::image2d::read_mask;
use seg_data::io::{dicom, file_kind, read_any, FileKind};
use seg_data::resample::resize_plane;
use seg_data::{Format, Mask, Volume};
use seg_models::Model;
use std::path::{Path, PathBuf};

/// The inputs a path stands for, as `seg-cli predict` reads them: a file is
/// itself; a folder of DICOM files is one series (the folder); any other
/// folder is its image, NIfTI and DICOM files, sorted (other files skipped).
pub fn list_inputs(path: &Path) -> Result<Vec<PathBuf>> {
    let files = files_in(path)?;
    let series = path.is_dir() && files.iter().all(|p| file_kind(p) == Some(FileKind::Dicom));
    Ok(if series {
        vec![path.to_path_buf()]
    } else {
        files
    })
}

/// A file, or the files seg reads in a folder (sorted; at least one).
pub fn files_in(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(Error::NoSuchInput {
            path: path.to_path_buf(),
        });
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && file_kind(p).is_some())
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::NoInputFiles {
            path: path.to_path_buf(),
        });
    }
    Ok(v)
}

/// A model bundle ready to segment images and volumes.
/// Reads an input as [`Segmenter::segment_file`] does: a file by its
/// extension, a folder as one DICOM series. Errors name `path`.
pub fn read_input(path: &Path) -> Result<Volume> {
    (|| {
        Ok(if path.is_dir() {
            dicom::read_series(path, None)?
        } else {
            read_any(path)?
        })
    })()
    .map_err(|e: Error| Error::Input {
        path: path.to_path_buf(),
        error: Box::new(e),
    })
}

/// Relative difference of FOV diameters (input against training) below
/// which an image is segmented at its own scale.
pub const RESCALE_TOLERANCE: f64 = 0.1;

/// Scale factors (training FOV diameter / input's) outside which an image
/// is not rescaled (not a photograph of the kind trained on).
pub const MIN_RESCALE: f64 = 0.25;
pub const MAX_RESCALE: f64 = 4.0;

/// Least share of the image an automatically found FOV must cover to be
/// used.
pub const MIN_FOV_SHARE: f64 = 0.05;

#[derive(Debug)]
pub struct Segmenter {
    model: Model,
    info: BundleInfo,
    in_channels: usize,
    /// 2 (images, planes) or 3 (a 3D network: volumes whole).
    dims: usize,
    window: SlidingWindow,
    threshold: f32,
    /// Multi-class bundles: keep every class's probability.
    class_probabilities: bool,
    /// Bundles trained with FOV masks: find a missing FOV from the image.
    auto_fov: bool,
    /// Bundles that recorded their training FOV diameter: bring inputs to
    /// that scale.
    rescale: bool,
    /// The convolutions' arithmetic (`auto` unless set: bf16 where the CPU
    /// has AVX512-BF16).
    precision: seg_core::Precision,
    device: Device,
}

/// A [`Volume`] built in code whose values do not fill its shape is an
/// error (one read from a file always fills it).
fn check_filled(vol: &Volume) -> Result<()> {
    if vol.values.len() != vol.shape.iter().product::<usize>() {
        return Err(Error::UnsupportedVolume {
            reason: "the volume's values do not fill its shape",
            shape: vol.shape.clone(),
        });
    }
    Ok(())
}

impl Segmenter {
    /// Loads a bundle written by training (`best.safetensors`) onto `device`,
    /// with the bundle's sliding window and threshold. Multi-class bundles
    /// (the automatic plan) average over flips by default, as nnU-Net does
    /// (`set_tta(false)` for one pass).
    pub fn open(bundle: &Path, device: &Device) -> Result<Self> {
        let (net, info) = load_bundle(bundle, device)?;
        let mut window = info.sliding_window.clone();
        window.tta |= info.slices.is_some();
        Ok(Self {
            model: net.inference_model()?,
            in_channels: net.config().in_channels(),
            dims: net.config().dims(),
            window,
            threshold: info.threshold,
            class_probabilities: false,
            auto_fov: true,
            rescale: true,
            precision: seg_core::PrecisionChoice::Auto.resolve()?,
            info,
            device: device.clone(),
        })
    }

    /// The convolutions' arithmetic: fp32, bf16 or auto (the default: bf16
    /// where the CPU has AVX512-BF16, else fp32); an error for bf16 on a CPU
    /// without.
    pub fn set_precision(&mut self, choice: seg_core::PrecisionChoice) -> Result<&mut Self> {
        self.precision = choice.resolve()?;
        Ok(self)
    }

    /// The arithmetic the segmentation runs in.
    pub fn precision(&self) -> seg_core::Precision {
        self.precision
    }

    /// Averages over horizontal and vertical flips (4 passes) or not.
    pub fn set_tta(&mut self, tta: bool) -> &mut Self {
        self.window.tta = tta;
        self
    }

    /// Multi-class bundles: also return (and write) every class's
    /// probability ([`Segmentation::class_probabilities`]).
    pub fn set_class_probabilities(&mut self, keep: bool) -> &mut Self {
        self.class_probabilities = keep;
        self
    }

    /// Bundles trained on images with FOV masks: whether a 2D image given
    /// without one gets the FOV found from the image
    /// ([`seg_data::fov::estimate_fov`]; on by default).
    pub fn set_auto_fov(&mut self, on: bool) -> &mut Self {
        self.auto_fov = on;
        self
    }

    /// Bundles that recorded their training FOV diameter: whether an image
    /// whose FOV is more than 10 % larger or smaller is resampled to the
    /// training scale, segmented, and its probabilities resampled back (on
    /// by default).
    pub fn set_rescale(&mut self, on: bool) -> &mut Self {
        self.rescale = on;
        self
    }

    /// Tile overlap, in [0, 0.95).
    pub fn set_overlap(&mut self, overlap: f32) -> Result<&mut Self> {
        if !(0.0..0.95).contains(&overlap) {
            return Err(Error::OutOfRange {
                what: "overlap",
                value: overlap,
                range: "[0, 0.95)",
            });
        }
        self.window.overlap = overlap;
        Ok(self)
    }

    /// The mask threshold on the foreground probability, in [0, 1].
    pub fn set_threshold(&mut self, threshold: f32) -> Result<&mut Self> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::OutOfRange {
                what: "threshold",
                value: threshold,
                range: "[0, 1]",
            });
        }
        self.threshold = threshold;
        Ok(self)
    }

    /// The threshold in use.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The sliding-window settings in use.
    pub fn window(&self) -> &SlidingWindow {
        &self.window
    }

    /// What the bundle carries besides the weights.
    pub fn info(&self) -> &BundleInfo {
        &self.info
    }

    /// Segments a file or a DICOM series folder. `fov`, a mask file of the
    /// image's size, limits normalisation statistics and output to the field
    /// of view of a 2D image; volumes have none (it is ignored, with a
    /// warning). Errors name `path`.
    pub fn segment_file(&self, path: &Path, fov: Option<&Path>) -> Result<Segmentation> {
        let vol = read_input(path)?;
        self.segment_read(path, &vol, fov)
    }

    /// [`Self::segment_file`] on an input already read with [`read_input`]
    /// (to keep it, e.g. for [`Segmentation::write_overlay`]). Errors name
    /// `path`.
    pub fn segment_read(
        &self,
        path: &Path,
        vol: &Volume,
        fov: Option<&Path>,
    ) -> Result<Segmentation> {
        (|| {
            if vol.format != Format::Image {
                if let Some(f) = fov {
                    tracing::warn!(
                        "{}: FOV {} ignored: FOV masks apply to 2D images",
                        path.display(),
                        f.display()
                    );
                }
                return self.segment_volume(vol);
            }
            let fov = match fov {
                Some(p) => {
                    let m = read_mask(p)?;
                    let (h, w) = (vol.shape[0], vol.shape[1]);
                    if (m.height, m.width) != (h, w) {
                        return Err(Error::FovSize {
                            path: Some(p.to_path_buf()),
                            fov: (m.height, m.width),
                            image: (h, w),
                        });
                    }
                    Some(m)
                }
                None => None,
            };
            self.segment_image(vol, fov.as_ref())
        })()
        .map_err(|e| Error::Input {
            path: path.to_path_buf(),
            error: Box::new(e),
        })
    }

    /// Segments a 2D image (as read by `seg_data::read_image`), optionally
    /// within a field of view of its size (nonzero = inside; outside, the
    /// probability is 0).
    pub fn segment_image(&self, vol: &Volume, fov: Option<&Mask>) -> Result<Segmentation> {
        let _precision = seg_core::precision::scoped(self.precision);
        if vol.format != Format::Image || vol.shape.len() != 3 {
            return Err(Error::UnsupportedVolume {
                reason: "not a 2D image",
                shape: vol.shape.clone(),
            });
        }
        let (h, w) = (vol.shape[0], vol.shape[1]);
        check_filled(vol)?;
        if let Some(m) = fov {
            if (m.height, m.width) != (h, w) || m.data.len() != h * w {
                return Err(Error::FovSize {
                    path: None,
                    fov: (m.height, m.width),
                    image: (h, w),
                });
            }
        }
        if let Some(sp) = &self.info.slices {
            if fov.is_some() {
                tracing::warn!(
                    "the FOV mask is ignored: multi-class bundles segment the whole image"
                );
            }
            return self.segment_planned(
                vol,
                sp,
                Geometry::Image {
                    height: h,
                    width: w,
                },
            );
        }
        // a bundle trained with FOV masks finds a missing one itself
        let found;
        let fov = match fov {
            Some(m) => Some(m),
            None if self.auto_fov && self.info.fov_diameter.is_some() => {
                // an image with no plausible FOV (flat, or a bright speck) is segmented whole
                match seg_data::fov::estimate_fov(vol) {
                    Ok(m) if m.foreground_fraction() >= MIN_FOV_SHARE => {
                        found = m;
                        Some(&found)
                    }
                    Ok(_) | Err(_) => {
                        tracing::warn!("no field of view found in the image: segmenting it whole");
                        None
                    }
                }
            }
            None => None,
        };
        // an image whose FOV is another size than the training images' is
        // segmented at the training scale
        let scale = match (self.info.fov_diameter, fov) {
            (Some(trained), Some(m)) if self.rescale => {
                let d = seg_data::fov::diameter(&m.data);
                let f = if d > 0.0 { trained / d } else { 1.0 };
                if !(MIN_RESCALE..=MAX_RESCALE).contains(&f) {
                    tracing::warn!(
                        "FOV diameter {d:.0} px against {trained:.0} in training: too far to rescale, segmented as it is"
                    );
                    None
                } else {
                    ((f - 1.0).abs() > RESCALE_TOLERANCE).then_some(f)
                }
            }
            _ => None,
        };
        let fov = fov.map(|m| m.data.as_slice());
        let mut p = match scale {
            None => self.binary_probabilities(vol, fov)?,
            Some(f) => {
                let (nh, nw) = (
                    ((h as f64 * f).round() as usize).max(1),
                    ((w as f64 * f).round() as usize).max(1),
                );
                let c = vol.shape[2];
                let mut values = vec![0f32; nh * nw * c];
                for ch in 0..c {
                    let plane: Vec<f32> = vol.values.iter().skip(ch).step_by(c).copied().collect();
                    let r = resize_plane(&plane, h, w, nh, nw);
                    for (i, v) in r.into_iter().enumerate() {
                        values[i * c + ch] = v;
                    }
                }
                let scaled = Volume {
                    shape: vec![nh, nw, c],
                    values,
                    ..vol.clone()
                };
                let sfov: Option<Vec<u8>> = fov.map(|m| {
                    let f: Vec<f32> = m.iter().map(|&v| (v != 0) as u8 as f32).collect();
                    resize_plane(&f, h, w, nh, nw)
                        .into_iter()
                        .map(|v| (v >= 0.5) as u8)
                        .collect()
                });
                let ps = self.binary_probabilities(&scaled, sfov.as_deref())?;
                resize_plane(&ps, nh, nw, h, w)
                    .into_iter()
                    .map(|v| v.clamp(0.0, 1.0))
                    .collect()
            }
        };
        if let Some(f) = fov {
            p.iter_mut().zip(f).for_each(|(v, &m)| {
                if m == 0 {
                    *v = 0.0
                }
            });
        }
        Ok(Segmentation::new(
            Geometry::Image {
                height: h,
                width: w,
            },
            p,
            self.threshold,
        ))
    }

    /// Foreground probabilities of a 2D image at its own size, through the
    /// bundle's preprocessing (FOV statistics when `fov` is given).
    fn binary_probabilities(&self, vol: &Volume, fov: Option<&[u8]>) -> Result<Vec<f32>> {
        let (h, w) = (vol.shape[0], vol.shape[1]);
        let (img, c) = self.info.preprocess.apply_image(vol, fov)?;
        if c != self.in_channels {
            return Err(Error::Channels {
                got: c,
                expected: self.in_channels,
            });
        }
        self.foreground(&img, c, h, w)
    }

    /// Foreground probabilities (`h × w`) of a preprocessed channel-planar
    /// image: the sigmoid output, or softmax channel 1 of a multi-class model.
    fn foreground(&self, img: &[f32], c: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let (probs, oc) = predict(&self.model, img, c, h, w, &self.window, &self.device)?;
        Ok(if oc == 1 {
            probs
        } else {
            probs[h * w..2 * h * w].to_vec()
        })
    }
}
