//! Volume orientation: the axis codes of an affine (nibabel's
//! `aff2axcodes`: for each voxel axis the world direction it mostly points
//! to, as R/L, A/P, S/I in NIfTI's RAS world) and the reordering of a
//! volume's voxels into another orientation and back. A model trained on
//! volumes in one orientation (say LAS NIfTI) sees an input stored another
//! way (a DICOM series, an RAS NIfTI) in its own orientation, and the
//! result goes back to the input's grid.

use crate::volume::{Format, Layout, Volume};

/// Axis codes such as `"LAS"`: the world direction of increasing index of
/// each voxel axis (NIfTI RAS world).
pub fn axis_codes(affine: &[[f64; 4]; 4]) -> String {
    (0..3)
        .map(|j| {
            let i = (0..3)
                .max_by(|&a, &b| affine[a][j].abs().total_cmp(&affine[b][j].abs()))
                .expect("three rows");
            let pos = affine[i][j] >= 0.0;
            ["RL", "AP", "SI"][i].as_bytes()[if pos { 0 } else { 1 }] as char
        })
        .collect()
}

fn world_axis(c: char) -> Option<usize> {
    match c {
        'R' | 'L' => Some(0),
        'A' | 'P' => Some(1),
        'S' | 'I' => Some(2),
        _ => None,
    }
}

/// A reordering of a `dims` volume's voxels (column-major, x fastest):
/// target axis `t` is source axis `perm[t]`, reversed when `flip[t]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reorient {
    pub perm: [usize; 3],
    pub flip: [bool; 3],
    /// Source dims.
    pub dims: [usize; 3],
}

impl Reorient {
    /// From axis codes `from` to `to` (each a permutation of one letter per
    /// world axis); `None` when either is not.
    pub fn between(from: &str, to: &str, dims: [usize; 3]) -> Option<Self> {
        let f: Vec<char> = from.chars().collect();
        let t: Vec<char> = to.chars().collect();
        if f.len() != 3 || t.len() != 3 {
            return None;
        }
        let mut perm = [0; 3];
        let mut flip = [false; 3];
        let mut used = [false; 3];
        for k in 0..3 {
            let w = world_axis(t[k])?;
            let j = (0..3).find(|&j| world_axis(f[j]) == Some(w))?;
            if used[j] {
                return None;
            }
            used[j] = true;
            perm[k] = j;
            flip[k] = f[j] != t[k];
        }
        Some(Self { perm, flip, dims })
    }

    /// Whether nothing moves.
    pub fn is_identity(&self) -> bool {
        self.perm == [0, 1, 2] && self.flip == [false; 3]
    }

    /// Target dims.
    pub fn out_dims(&self) -> [usize; 3] {
        self.perm.map(|j| self.dims[j])
    }

    /// Source index of each target voxel, in target order.
    fn source_indices(&self) -> Vec<usize> {
        let od = self.out_dims();
        let d = self.dims;
        let mut out = Vec::with_capacity(od.iter().product());
        for o2 in 0..od[2] {
            for o1 in 0..od[1] {
                for o0 in 0..od[0] {
                    let o = [o0, o1, o2];
                    let mut s = [0; 3];
                    for ((&j, &flip), &ot) in self.perm.iter().zip(&self.flip).zip(&o) {
                        s[j] = if flip { d[j] - 1 - ot } else { ot };
                    }
                    out.push(s[0] + d[0] * (s[1] + d[1] * s[2]));
                }
            }
        }
        out
    }

    /// Source-ordered values → target order.
    pub fn apply<T: Copy>(&self, src: &[T]) -> Vec<T> {
        self.source_indices().into_iter().map(|i| src[i]).collect()
    }

    /// Target-ordered values → the source's order (the inverse of
    /// [`Self::apply`]).
    pub fn restore<T: Copy + Default>(&self, dst: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); dst.len()];
        for (v, i) in dst.iter().zip(self.source_indices()) {
            out[i] = *v;
        }
        out
    }

    /// `vol` (column-major, of this reordering's source dims) reordered:
    /// values, shape, spacing and affine.
    pub fn volume(&self, vol: &Volume) -> Volume {
        let sp = |j: usize| vol.spacing.get(j).copied().unwrap_or(1.0);
        Volume {
            values: self.apply(&vol.values),
            shape: self.out_dims().to_vec(),
            spacing: self.perm.iter().map(|&j| sp(j)).collect(),
            affine: vol.affine.map(|a| self.affine(&a)),
            ..vol.clone()
        }
    }

    /// The affine of the reordered volume.
    pub fn affine(&self, a: &[[f64; 4]; 4]) -> [[f64; 4]; 4] {
        let mut out = *a;
        for (row, src) in out.iter_mut().zip(a).take(3) {
            let mut shift = src[3];
            for (t, (&j, &flip)) in self.perm.iter().zip(&self.flip).enumerate() {
                row[t] = if flip { -src[j] } else { src[j] };
                if flip {
                    shift += src[j] * (self.dims[j] as f64 - 1.0);
                }
            }
            row[3] = shift;
        }
        out
    }
}

/// `vol` (a 3D NIfTI-order volume with an affine) in the orientation
/// `codes`, and the reordering that did it; `None` when the volume has no
/// affine, is not 3D NIfTI-order, or is already so oriented.
pub fn reorient(vol: &Volume, codes: &str) -> Option<(Volume, Reorient)> {
    let a = vol.affine?;
    if vol.format == Format::Image || vol.layout != Layout::ColumnMajor {
        return None;
    }
    let dims: [usize; 3] = match vol.shape.as_slice() {
        [x, y, z] | [x, y, z, 1] => [*x, *y, *z],
        _ => return None,
    };
    let r = Reorient::between(&axis_codes(&a), codes, dims)?;
    if r.is_identity() {
        return None;
    }
    Some((r.volume(vol), r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(dims: [usize; 3], affine: [[f64; 4]; 4]) -> Volume {
        let mut v = Volume::from_nifti_values(
            &dims,
            (0..dims.iter().product::<usize>())
                .map(|i| i as f32)
                .collect(),
            [1.0, 2.0, 3.0],
        );
        v.affine = Some(affine);
        v
    }

    /// World position of voxel `i` of `v`.
    fn world(v: &Volume, i: usize) -> [f64; 3] {
        let d = &v.shape;
        let ijk = [i % d[0], (i / d[0]) % d[1], i / (d[0] * d[1])];
        let a = v.affine.unwrap();
        [0, 1, 2].map(|r| (0..3).map(|c| a[r][c] * ijk[c] as f64).sum::<f64>() + a[r][3])
    }

    #[test]
    fn codes_follow_the_affine() {
        let las = [
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, 2.0, 0.0, 0.0],
            [0.0, 0.0, 3.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(axis_codes(&las), "LAS");
        let pil = [
            [0.0, 0.0, 1.0, 0.0],
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, -1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(axis_codes(&pil), "PIR");
    }

    #[test]
    fn reoriented_voxels_stay_where_they_are_in_the_world() {
        // PIR, 4 × 3 × 2, shifted
        let a = [
            [0.0, 0.0, 3.0, 10.0],
            [-1.0, 0.0, 0.0, 20.0],
            [0.0, -2.0, 0.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let v = vol([4, 3, 2], a);
        let (r, how) = reorient(&v, "RAS").unwrap();
        assert_eq!(axis_codes(&r.affine.unwrap()), "RAS");
        assert_eq!(r.shape, vec![2, 4, 3]);
        assert_eq!(r.spacing, vec![3.0, 1.0, 2.0]);
        for (i, &val) in r.values.iter().enumerate() {
            let w = world(&r, i);
            let w0 = world(&v, val as usize);
            assert!(
                (0..3).all(|k| (w[k] - w0[k]).abs() < 1e-9),
                "{i}: {w:?} vs {w0:?}"
            );
        }
        assert_eq!(how.restore(&r.values), v.values);
        assert!(reorient(&v, "PIR").is_none(), "already so");
        assert!(Reorient::between("RAS", "RRS", [1, 1, 1]).is_none());
    }
}
