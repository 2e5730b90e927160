//! `dataset.json` of the MSD (Medical Segmentation Decathlon) and nnU-Net
//! layouts, parsed into typed fields. Both generations are read:
//!
//! - MSD / nnU-Net v1: `"modality": {"0": "MRI"}`, `"labels": {"0":
//!   "background", "1": "Anterior"}`, `"numTraining"`, `"training": [{"image",
//!   "label"}]`;
//! - nnU-Net v2: `"channel_names": {"0": "T2"}`, `"labels": {"background": 0,
//!   "Anterior": 1}` (a region lists several values: `"tumour": [1, 2]`),
//!   `"numTraining"`, `"file_ending": ".nii.gz"`.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

const FORMAT: &str = "dataset.json";

/// Which generation of `dataset.json` a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonStyle {
    /// MSD / nnU-Net v1: `modality`, labels as `{"value": "name"}`.
    Msd,
    /// nnU-Net v2: `channel_names`, labels as `{"name": value}`.
    NnUnetV2,
}

/// One label class: its name and the label value(s) it stands for (one for
/// a plain class; several for an nnU-Net v2 region).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelClass {
    pub name: String,
    pub values: Vec<u32>,
}

/// A parsed `dataset.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetJson {
    pub style: JsonStyle,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Channel (modality) names by channel index: MSD `modality` or nnU-Net
    /// v2 `channel_names`. Empty when the file names none.
    pub channels: Vec<String>,
    /// Label classes, ordered by (first) value; background is usually value 0.
    pub labels: Vec<LabelClass>,
    pub num_training: Option<usize>,
    pub num_test: Option<usize>,
    /// nnU-Net v2 `file_ending`, e.g. `.nii.gz`.
    pub file_ending: Option<String>,
    /// MSD `training` entries as listed: (image, label) paths relative to the
    /// dataset folder, e.g. `./imagesTr/x.nii.gz`.
    pub training: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Raw {
    name: Option<String>,
    description: Option<String>,
    modality: Option<BTreeMap<String, String>>,
    channel_names: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, RawLabel>>,
    #[serde(rename = "numTraining")]
    num_training: Option<usize>,
    #[serde(rename = "numTest")]
    num_test: Option<usize>,
    file_ending: Option<String>,
    #[serde(default)]
    training: Vec<RawPair>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawLabel {
    Name(String),
    Value(u32),
    Region(Vec<u32>),
}

#[derive(Deserialize)]
struct RawPair {
    image: String,
    label: String,
}

impl DatasetJson {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `dataset.json`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::decode(path, FORMAT, reason);
        let raw: Raw = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let v2 = raw.channel_names.is_some()
            || raw
                .labels
                .as_ref()
                .is_some_and(|l| l.values().any(|v| !matches!(v, RawLabel::Name(_))));
        let style = if v2 {
            JsonStyle::NnUnetV2
        } else {
            JsonStyle::Msd
        };
        let (key, names) = match (raw.channel_names, raw.modality) {
            (Some(c), _) => ("channel_names", c),
            (None, Some(m)) => ("modality", m),
            (None, None) => ("modality", BTreeMap::new()),
        };
        let mut by_index = BTreeMap::new();
        for (k, v) in names {
            let i: usize = k
                .trim()
                .parse()
                .map_err(|_| bad(format!("{key}: key {k:?} is not a channel index")))?;
            by_index.insert(i, v);
        }
        let gap = by_index
            .keys()
            .enumerate()
            .find(|&(n, &i)| n != i)
            .map(|(n, _)| n);
        if let Some(n) = gap {
            return Err(bad(format!(
                "{key}: channel {n} is missing (indices must run 0, 1, 2, ...)"
            )));
        }
        let channels = by_index.into_values().collect();
        let mut labels = Vec::new();
        for (k, v) in raw.labels.unwrap_or_default() {
            let class = match (style, v) {
                (JsonStyle::Msd, RawLabel::Name(name)) => {
                    let value = k.trim().parse().map_err(|_| {
                        bad(format!(
                            "labels: key {k:?} is not a label value (MSD style is {{\"0\": \"background\", ...}})"
                        ))
                    })?;
                    LabelClass {
                        name,
                        values: vec![value],
                    }
                }
                (JsonStyle::NnUnetV2, RawLabel::Value(value)) => LabelClass {
                    name: k,
                    values: vec![value],
                },
                (JsonStyle::NnUnetV2, RawLabel::Region(values)) if !values.is_empty() => {
                    LabelClass { name: k, values }
                }
                (_, RawLabel::Region(_)) => {
                    return Err(bad(format!("labels: {k:?} lists no label values")))
                }
                _ => {
                    return Err(bad(format!(
                        "labels: {k:?} mixes the MSD form {{\"0\": \"background\"}} with the nnU-Net v2 form {{\"background\": 0}}"
                    )))
                }
            };
            labels.push(class);
        }
        labels.sort_by(|a, b| a.values.cmp(&b.values));
        for w in labels.windows(2) {
            if w[0].values.len() == 1 && w[0].values == w[1].values {
                return Err(bad(format!(
                    "labels: {:?} and {:?} have the same value {}",
                    w[0].name, w[1].name, w[0].values[0]
                )));
            }
        }
        Ok(Self {
            style,
            name: raw.name,
            description: raw.description,
            channels,
            labels,
            num_training: raw.num_training,
            num_test: raw.num_test,
            file_ending: raw.file_ending,
            training: raw
                .training
                .into_iter()
                .map(|p| (p.image, p.label))
                .collect(),
        })
    }

    /// The label class names in value order.
    pub fn label_names(&self) -> Vec<&str> {
        self.labels.iter().map(|l| l.name.as_str()).collect()
    }

    /// Every label value a label volume may hold (the plain classes' values;
    /// regions are unions of those).
    pub fn label_values(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .labels
            .iter()
            .flat_map(|l| l.values.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DatasetJson> {
        DatasetJson::parse(text, Path::new("d/dataset.json"))
    }

    #[test]
    fn msd_v1_modality_and_value_keyed_labels() {
        let j = parse(
            r#"{"name": "Hippocampus", "modality": {"0": "MRI"},
                "labels": {"0": "background", "1": "Anterior", "2": "Posterior", "10": "Extra"},
                "numTraining": 2, "numTest": 1, "tensorImageSize": "3D",
                "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
                "test": ["./imagesTs/c.nii.gz"]}"#,
        )
        .unwrap();
        assert_eq!(j.style, JsonStyle::Msd);
        assert_eq!(j.name.as_deref(), Some("Hippocampus"));
        assert_eq!(j.channels, ["MRI"]);
        // ordered by value, not by the key's text ("10" < "2")
        assert_eq!(
            j.label_names(),
            ["background", "Anterior", "Posterior", "Extra"]
        );
        assert_eq!(j.label_values(), [0, 1, 2, 10]);
        assert_eq!((j.num_training, j.num_test), (Some(2), Some(1)));
        assert_eq!(
            j.training,
            [(
                "./imagesTr/a.nii.gz".to_string(),
                "./labelsTr/a.nii.gz".to_string()
            )]
        );
    }

    #[test]
    fn nnunet_v2_channel_names_name_keyed_labels_and_regions() {
        let j = parse(
            r#"{"channel_names": {"1": "ADC", "0": "T2"},
                "labels": {"background": 0, "PZ": 1, "TZ": 2, "gland": [1, 2]},
                "numTraining": 32, "file_ending": ".nii.gz"}"#,
        )
        .unwrap();
        assert_eq!(j.style, JsonStyle::NnUnetV2);
        assert_eq!(j.channels, ["T2", "ADC"]);
        assert_eq!(j.label_names(), ["background", "PZ", "gland", "TZ"]);
        assert_eq!(j.labels[2].values, [1, 2]);
        assert_eq!(j.label_values(), [0, 1, 2]);
        assert_eq!(j.file_ending.as_deref(), Some(".nii.gz"));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let msg = |t: &str| parse(t).unwrap_err().to_string();
        let m = msg(r#"{"labels": {"background": "0"}}"#);
        assert!(
            m.contains("d/dataset.json") && m.contains("not a label value"),
            "{m}"
        );
        let m = msg(r#"{"labels": {"0": "background", "x": 1}}"#);
        assert!(m.contains("mixes"), "{m}");
        let m = msg(r#"{"modality": {"0": "CT", "2": "PET"}}"#);
        assert!(m.contains("channel 1 is missing"), "{m}");
        let m = msg(r#"{"labels": {"0": "a", "00": "b"}}"#);
        assert!(m.contains("same value 0"), "{m}");
        let m = msg("{\"numTraining\": \"many\"}");
        assert!(m.contains("not a valid dataset.json"), "{m}");
    }
}
