//! Multi-class bundles (trained through the automatic plan): a 2D image or
//! a volume normalised as a whole, cut into 2D / 2.5D planes along the
//! plan's axis, each plane predicted (sliding window, softmax), the arg-max
//! class written as the dataset's label value, and the foreground
//! probability (1 − background) beside it.

use super::{Geometry, Segmentation, Segmenter};
use crate::error::{Error, Result};
use crate::infer::{predict_planes, predict_volume};
use seg_data::labelmap::{SlicePlan, Stack};
use seg_data::{slicing, Format, Volume};
use std::path::Path;

impl Segmenter {
    /// Segments with the bundle's slice plan: `vol` is a 2D image, a 3D
    /// NIfTI volume or a single-channel DICOM volume (turned into NIfTI
    /// order, `[cols, rows, frames]`). Returns per-voxel classes (see
    /// [`Segmentation::label_values`]) and foreground probabilities, in
    /// NIfTI order for volumes.
    pub(super) fn segment_planned(
        &self,
        vol: &Volume,
        plan: &SlicePlan,
        geometry: Geometry,
    ) -> Result<Segmentation> {
        let expected = 2 * plan.context + 1;
        if self.in_channels != expected {
            return Err(Error::Channels {
                got: expected,
                expected: self.in_channels,
            });
        }
        // a volume stored in another orientation than the training set's is
        // reordered to it, and the result back to the input's grid
        let reoriented = match &plan.orientation {
            Some(codes) if vol.format != Format::Image => seg_data::orient::reorient(vol, codes),
            _ => None,
        };
        let (vol, how) = match &reoriented {
            Some((v, how)) => (v, Some(*how)),
            None => (vol, None),
        };
        let stack = Stack::new("input", &[(vol, Path::new("input"))], None, plan)?;
        let k_classes = plan.labels.classes();
        let [nh, nw] = stack.native;
        let plane = nh * nw;
        let keep = self.class_probabilities;
        let mut classes = Vec::with_capacity(stack.slices);
        let mut probs = Vec::with_capacity(stack.slices);
        // per class, the planes of its probability (only when asked for)
        let mut per_class: Vec<Vec<Vec<f32>>> = vec![Vec::new(); if keep { k_classes } else { 0 }];
        // 3D models: the whole volume through the 3D sliding window, then
        // plane by plane as below
        let volume_probs = if self.dims == 3 {
            Some(predict_volume(
                &self.model,
                &stack.image,
                stack.channels,
                [stack.slices, stack.height, stack.width],
                &self.window,
                &self.device,
            )?)
        } else {
            None
        };
        let ks: Vec<usize> = (0..stack.slices).collect();
        for chunk in ks.chunks(16) {
            let preds = match &volume_probs {
                Some((all, oc)) => {
                    let p = stack.height * stack.width;
                    let vol = stack.slices * p;
                    chunk
                        .iter()
                        .map(|&k| {
                            let maps: Vec<f32> = (0..*oc)
                                .flat_map(|ch| {
                                    all[ch * vol + k * p..ch * vol + (k + 1) * p]
                                        .iter()
                                        .copied()
                                })
                                .collect();
                            (maps, *oc)
                        })
                        .collect::<Vec<_>>()
                }
                None => {
                    let planes: Vec<Vec<f32>> = chunk
                        .iter()
                        .map(|&k| stack.sample(k, plan.context).image)
                        .collect();
                    predict_planes(
                        &self.model,
                        &planes,
                        expected,
                        stack.height,
                        stack.width,
                        &self.window,
                        &self.device,
                    )?
                }
            };
            for (p, oc) in preds {
                if oc != k_classes {
                    return Err(Error::Channels {
                        got: oc,
                        expected: k_classes,
                    });
                }
                // back to the stored plane size before the arg-max
                let p = stack.to_native(&p, oc);
                let mut cls = vec![0f32; plane];
                let mut fg = vec![0f32; plane];
                for i in 0..plane {
                    let mut best = 0;
                    for ch in 1..oc {
                        if p[ch * plane + i] > p[best * plane + i] {
                            best = ch;
                        }
                    }
                    cls[i] = best as f32;
                    fg[i] = 1.0 - p[i];
                }
                for (k, maps) in per_class.iter_mut().enumerate() {
                    maps.push(p[k * plane..(k + 1) * plane].to_vec());
                }
                classes.push(cls);
                probs.push(fg);
            }
        }
        let assemble = |planes: Vec<Vec<f32>>| -> Result<Vec<f32>> {
            Ok(if vol.format == Format::Image {
                planes.concat()
            } else {
                slicing::assemble(vol, plan.axis, &planes)?
            })
        };
        let back = |v: Vec<f32>| match how {
            Some(h) => h.restore(&v),
            None => v,
        };
        let classes = back(assemble(classes)?);
        let probs = back(assemble(probs)?);
        let class_probs = if keep {
            let mut all = Vec::with_capacity(k_classes * classes.len());
            for maps in per_class {
                all.extend(back(assemble(maps)?));
            }
            Some(all)
        } else {
            None
        };
        let mut s = Segmentation::with_classes(
            geometry,
            probs,
            classes.iter().map(|&c| c as u8).collect(),
            plan.labels.values.clone(),
        );
        s.class_probabilities = class_probs;
        Ok(s)
    }
}
