//! Named augmentation strengths (`--augment none|light|default|heavy`).

use super::AugmentConfig;

/// The names [`AugmentConfig::preset`] knows, weakest first.
pub const AUGMENT_PRESETS: [&str; 4] = ["none", "light", "default", "heavy"];

/// An augmentation preset name that is not one of [`AUGMENT_PRESETS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown augmentation preset {name:?}: expected one of {}", AUGMENT_PRESETS.join(", "))]
pub struct UnknownAugmentPreset {
    pub name: String,
}

impl AugmentConfig {
    /// Exact index permutations only (flips, rot90) and mild intensity
    /// changes: no interpolation of the image or masks.
    pub fn light() -> Self {
        Self {
            rotate_p: 0.0,
            scale_p: 0.0,
            elastic_p: 0.0,
            grid_p: 0.0,
            gamma_p: 0.2,
            gamma_range: (0.9, 1.1),
            brightness_contrast_p: 0.2,
            brightness: 0.05,
            contrast: 0.05,
            noise_p: 0.0,
            ..Self::default()
        }
    }

    /// The default geometry plus elastic deformation and grid distortion,
    /// wider rotation and scaling, stronger intensity changes, blur and
    /// simulated lower resolution.
    pub fn heavy() -> Self {
        Self {
            rotate_p: 0.5,
            rotate_max_deg: 30.0,
            scale_p: 0.3,
            scale_range: (0.8, 1.2),
            elastic_p: 0.3,
            grid_p: 0.3,
            gamma_p: 0.5,
            gamma_range: (0.7, 1.5),
            brightness_contrast_p: 0.5,
            brightness: 0.2,
            contrast: 0.2,
            noise_p: 0.3,
            noise_std: 0.04,
            blur_p: 0.2,
            lowres_p: 0.2,
            ..Self::default()
        }
    }

    /// The preset of that name: `none`, `light`, `default` or `heavy`.
    pub fn preset(name: &str) -> Result<Self, UnknownAugmentPreset> {
        match name.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::none()),
            "light" => Ok(Self::light()),
            "default" => Ok(Self::default()),
            "heavy" => Ok(Self::heavy()),
            _ => Err(UnknownAugmentPreset {
                name: name.to_string(),
            }),
        }
    }
}

impl std::str::FromStr for AugmentConfig {
    type Err = UnknownAugmentPreset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::preset(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_order_their_strength() {
        for name in AUGMENT_PRESETS {
            let a: AugmentConfig = name.parse().unwrap();
            assert_eq!(a, AugmentConfig::preset(name).unwrap());
        }
        assert_eq!(
            AugmentConfig::preset("none").unwrap(),
            AugmentConfig::none()
        );
        assert_eq!(
            AugmentConfig::preset("Default").unwrap(),
            AugmentConfig::default()
        );
        let none = AugmentConfig::none();
        assert!([
            none.flip_p,
            none.rot90_p,
            none.rotate_p,
            none.gamma_p,
            none.noise_p
        ]
        .iter()
        .all(|&p| p == 0.0));
        // light: exact permutations and mild intensity only
        let light = AugmentConfig::light();
        assert!(light.flip_p > 0.0 && light.rot90_p > 0.0);
        assert_eq!(
            (light.rotate_p, light.scale_p, light.elastic_p, light.grid_p),
            (0.0, 0.0, 0.0, 0.0)
        );
        assert!(light.gamma_p > 0.0 && light.brightness_contrast_p > 0.0);
        // heavy: the default's geometry plus elastic and grid, stronger intensity
        let (d, h) = (AugmentConfig::default(), AugmentConfig::heavy());
        assert_eq!(d.elastic_p, 0.0);
        assert_eq!(d.grid_p, 0.0);
        assert!(h.elastic_p > 0.0 && h.grid_p > 0.0);
        assert!(h.flip_p >= d.flip_p && h.rotate_p >= d.rotate_p);
        assert!(h.brightness > d.brightness && h.contrast > d.contrast);
        assert!(h.gamma_range.0 < d.gamma_range.0 && h.gamma_range.1 > d.gamma_range.1);
        assert!(h.noise_std > d.noise_std);
        let e = "extreme".parse::<AugmentConfig>().unwrap_err();
        assert_eq!(
            e,
            UnknownAugmentPreset {
                name: "extreme".into()
            }
        );
        let msg = e.to_string();
        for name in AUGMENT_PRESETS {
            assert!(msg.contains(name), "{msg}");
        }
    }
}
