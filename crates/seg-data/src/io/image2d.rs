//! 2D images through the `image` crate: PNG (8/16-bit), TIFF, GIF, JPEG,
//! BMP in; PNG masks and 16-bit probability maps out.

use crate::error::{Error, Result};
use crate::volume::{check_size, StoredType, Volume};
use image::{DynamicImage, ImageEncoder, ImageReader, Limits};
use std::path::Path;

fn open(path: &Path) -> Result<DynamicImage> {
    let mut reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let mut limits = Limits::default();
    let max = crate::volume::max_elements();
    limits.max_alloc = Some(max.saturating_mul(4));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| Error::decode(path, "image", e))?;
    check_size(
        path,
        "image",
        &[
            img.height() as usize,
            img.width() as usize,
            img.color().channel_count() as usize,
        ],
    )?;
    Ok(img)
}

/// Reads a 2D image: shape `[height, width, channels]`, values as stored
/// (0–255 or 0–65535). Opaque alpha is dropped, and colour images whose three
/// channels are equal everywhere (greyscale GIFs decode as RGBA) become one channel.
pub fn read_image(path: &Path) -> Result<Volume> {
    let img = open(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (values, channels, stored): (Vec<f32>, usize, StoredType) = match &img {
        DynamicImage::ImageLuma8(b) => (
            b.as_raw().iter().map(|&v| v as f32).collect(),
            1,
            StoredType::Uint8,
        ),
        DynamicImage::ImageLuma16(b) => (
            b.as_raw().iter().map(|&v| v as f32).collect(),
            1,
            StoredType::Uint16,
        ),
        DynamicImage::ImageLumaA8(b) => (
            b.as_raw().iter().map(|&v| v as f32).collect(),
            2,
            StoredType::Uint8,
        ),
        DynamicImage::ImageLumaA16(b) => (
            b.as_raw().iter().map(|&v| v as f32).collect(),
            2,
            StoredType::Uint16,
        ),
        DynamicImage::ImageRgb8(b) => (
            b.as_raw().iter().map(|&v| v as f32).collect(),
            3,
            StoredType::Uint8,
        ),
        DynamicImage::ImageRgb16(b) => (
            b.as_raw().iter().map(|&v| v as f32).collect(),
            3,
            StoredType::Uint16,
        ),
        DynamicImage::ImageRgba8(b) => (
            b.as_raw().iter().map(|&v| v as f32).collect(),
            4,
            StoredType::Uint8,
        ),
        DynamicImage::ImageRgba16(b) => (
            b.as_raw().iter().map(|&v| v as f32).collect(),
            4,
            StoredType::Uint16,
        ),
        DynamicImage::ImageRgb32F(b) => (b.as_raw().clone(), 3, StoredType::Float32),
        DynamicImage::ImageRgba32F(b) => (b.as_raw().clone(), 4, StoredType::Float32),
        other => (other.to_rgb32f().into_raw(), 3, StoredType::Float32),
    };
    let (values, channels) = simplify_channels(values, channels);
    Ok(Volume {
        stored,
        photometric: Some(
            match channels {
                1 => "L",
                2 => "LA",
                3 => "RGB",
                _ => "RGBA",
            }
            .to_string(),
        ),
        ..Volume::from_image_values(h, w, channels, values)
    })
}

/// Drops an alpha channel that is fully opaque and collapses equal RGB to one channel.
fn simplify_channels(values: Vec<f32>, channels: usize) -> (Vec<f32>, usize) {
    let (mut values, mut channels) = (values, channels);
    if channels == 4 || channels == 2 {
        let max_alpha = values
            .chunks(channels)
            .map(|p| p[channels - 1])
            .fold(f32::NEG_INFINITY, f32::max);
        let min_alpha = values
            .chunks(channels)
            .map(|p| p[channels - 1])
            .fold(f32::INFINITY, f32::min);
        if min_alpha == max_alpha
            && (min_alpha == 255.0 || min_alpha == 65535.0 || min_alpha == 1.0)
        {
            values = values
                .chunks(channels)
                .flat_map(|p| p[..channels - 1].to_vec())
                .collect();
            channels -= 1;
        }
    }
    if channels == 3 && values.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]) {
        values = values.chunks(3).map(|p| p[0]).collect();
        channels = 1;
    }
    (values, channels)
}

/// A binary mask: `height × width` values in {0, 1}, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl Mask {
    /// Fraction of pixels set.
    pub fn foreground_fraction(&self) -> f64 {
        if self.data.is_empty() {
            return 0.0;
        }
        self.data.iter().filter(|&&v| v != 0).count() as f64 / self.data.len() as f64
    }
}

/// Reads a label or FOV mask: any non-zero pixel (in any colour channel) is
/// foreground, whatever the bit depth or palette.
pub fn read_mask(path: &Path) -> Result<Mask> {
    let v = read_image(path)?;
    let (h, w, c) = (v.shape[0], v.shape[1], v.shape[2]);
    let colour = if c == 2 || c == 4 { c - 1 } else { c };
    let data = v
        .values
        .chunks(c)
        .map(|p| p[..colour].iter().any(|&x| x != 0.0) as u8)
        .collect();
    Ok(Mask {
        height: h,
        width: w,
        data,
    })
}

pub(crate) fn encode_png(
    path: &Path,
    w: usize,
    h: usize,
    bytes: &[u8],
    color: image::ExtendedColorType,
) -> Result<()> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(bytes, w as u32, h as u32, color)
        .map_err(|e| Error::decode(path, "PNG", e))?;
    super::atomic_write(path, &out)
}

/// Writes a binary mask as an 8-bit PNG (0 and 255), atomically.
pub fn write_mask_png(path: &Path, mask: &Mask) -> Result<()> {
    if mask.data.len() != mask.height * mask.width {
        return Err(Error::ShapeMismatch {
            what: format!("mask for {}", path.display()),
            a: vec![mask.data.len()],
            b: vec![mask.height, mask.width],
        });
    }
    let bytes: Vec<u8> = mask
        .data
        .iter()
        .map(|&v| if v != 0 { 255 } else { 0 })
        .collect();
    encode_png(
        path,
        mask.width,
        mask.height,
        &bytes,
        image::ExtendedColorType::L8,
    )
}

/// Writes 8-bit greyscale or RGB pixels as a PNG, atomically.
pub fn write_png_u8(
    path: &Path,
    height: usize,
    width: usize,
    channels: usize,
    data: &[u8],
) -> Result<()> {
    let color = match channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        4 => image::ExtendedColorType::Rgba8,
        c => {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                format: "PNG",
                reason: format!("cannot write {c} channels (1 to 4)"),
            })
        }
    };
    if data.len() != height * width * channels {
        return Err(Error::ShapeMismatch {
            what: format!("PNG {}", path.display()),
            a: vec![data.len()],
            b: vec![height, width, channels],
        });
    }
    encode_png(path, width, height, data, color)
}

/// Writes an integer label map as a greyscale PNG of its values: 8-bit
/// when every value is in 0..=255, else 16-bit (0..=65535), atomically.
pub fn write_label_png(path: &Path, height: usize, width: usize, values: &[i64]) -> Result<()> {
    if values.len() != height * width {
        return Err(Error::ShapeMismatch {
            what: format!("label map {}", path.display()),
            a: vec![values.len()],
            b: vec![height, width],
        });
    }
    if let Some(i) = values.iter().position(|v| !(0..=65535).contains(v)) {
        return Err(Error::ValueOutOfRange {
            path: path.to_path_buf(),
            what: "label value",
            index: i,
            value: values[i] as f32,
            range: "0..=65535 (PNG)",
        });
    }
    if values.iter().all(|&v| v <= 255) {
        let bytes: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        encode_png(path, width, height, &bytes, image::ExtendedColorType::L8)
    } else {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| (v as u16).to_ne_bytes())
            .collect();
        encode_png(path, width, height, &bytes, image::ExtendedColorType::L16)
    }
}

/// Writes a probability map in [0, 1] as a 16-bit greyscale PNG (value ×
/// 65535, rounded), atomically. NaN or out-of-range values are an error.
pub fn write_probability_png(
    path: &Path,
    height: usize,
    width: usize,
    probs: &[f32],
) -> Result<()> {
    if probs.len() != height * width {
        return Err(Error::ShapeMismatch {
            what: format!("probability map {}", path.display()),
            a: vec![probs.len()],
            b: vec![height, width],
        });
    }
    if let Some(i) = probs.iter().position(|p| !(0.0..=1.0).contains(p)) {
        return Err(Error::ValueOutOfRange {
            path: path.to_path_buf(),
            what: "probability",
            index: i,
            value: probs[i],
            range: "[0, 1]",
        });
    }
    // the encoder takes 16-bit samples in native byte order
    let bytes: Vec<u8> = probs
        .iter()
        .flat_map(|&p| ((p * 65535.0).round() as u16).to_ne_bytes())
        .collect();
    encode_png(path, width, height, &bytes, image::ExtendedColorType::L16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("seg-data-img-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn probability_png_round_trips_at_16_bits() {
        let p = tmp("prob.png");
        let probs = [0.0f32, 0.25, 0.5, 1.0, 0.123456, 0.999];
        write_probability_png(&p, 2, 3, &probs).unwrap();
        let v = read_image(&p).unwrap();
        assert_eq!(v.shape, vec![2, 3, 1]);
        assert_eq!(v.stored, StoredType::Uint16);
        for (a, b) in v.values.iter().zip(probs) {
            assert!((a / 65535.0 - b).abs() < 1.0 / 65535.0);
        }
        assert!(write_probability_png(&p, 1, 2, &[0.5, f32::NAN]).is_err());
        assert!(write_probability_png(&p, 1, 2, &[0.5]).is_err());
    }

    #[test]
    fn masks_round_trip_and_any_nonzero_is_foreground() {
        let p = tmp("mask.png");
        let m = Mask {
            height: 2,
            width: 2,
            data: vec![0, 1, 1, 0],
        };
        write_mask_png(&p, &m).unwrap();
        assert_eq!(read_mask(&p).unwrap(), m);
        let q = tmp("grey.png");
        write_png_u8(&q, 1, 3, 1, &[0, 7, 255]).unwrap();
        assert_eq!(read_mask(&q).unwrap().data, vec![0, 1, 1]);
        let r = tmp("rgb.png");
        write_png_u8(&r, 1, 2, 3, &[0, 0, 0, 0, 3, 0]).unwrap();
        assert_eq!(read_mask(&r).unwrap().data, vec![0, 1]);
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let p = tmp("junk.png");
        std::fs::write(&p, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let e = read_image(&p).unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
        assert!(e.to_string().contains("junk.png"));
        let e = read_image(&tmp("missing.png")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }
}
