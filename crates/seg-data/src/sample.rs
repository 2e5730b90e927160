//! [`Sample`]: one 2D training example — a planar (CHW) float image, its
//! binary label and optional field-of-view mask, all the same size.

use crate::error::{Error, Result};

/// One image with its label and field of view, channel-planar.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Case identifier (e.g. `21` for DRIVE's `21_training.tif`).
    pub id: String,
    /// `channels × height × width`, channel-planar.
    pub image: Vec<f32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `height × width` in {0, 1}; `None` for unlabelled (test) images.
    pub label: Option<Vec<u8>>,
    /// `height × width` in {0, 1}: where the image is valid.
    pub fov: Option<Vec<u8>>,
}

impl Sample {
    /// Checks that image, label and FOV agree in size and values are finite.
    pub fn validate(&self) -> Result<()> {
        let plane = self.height * self.width;
        if self.image.len() != plane * self.channels {
            return Err(Error::ShapeMismatch {
                what: format!("image of case {}", self.id),
                a: vec![self.image.len()],
                b: vec![self.channels, self.height, self.width],
            });
        }
        for (what, m) in [("label", &self.label), ("FOV", &self.fov)] {
            if let Some(m) = m {
                if m.len() != plane {
                    return Err(Error::ShapeMismatch {
                        what: format!("{what} of case {}", self.id),
                        a: vec![m.len()],
                        b: vec![self.height, self.width],
                    });
                }
            }
        }
        if let Some(i) = self.image.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("case {} image", self.id),
                index: i,
                value: self.image[i],
            });
        }
        Ok(())
    }

    /// Channel `c` as a plane.
    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.image[c * n..(c + 1) * n]
    }
}

/// Converts an interleaved `[h, w, c]` buffer to channel-planar.
pub fn hwc_to_chw(values: &[f32], h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for i in 0..h * w {
        for ch in 0..c {
            out[ch * h * w + i] = values[i * c + ch];
        }
    }
    out
}
