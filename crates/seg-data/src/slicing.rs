//! 3D → 2D: a volume into slices along any axis, optionally with neighbouring
//! slices as extra channels (2.5D), and predicted slices back into a volume
//! in the source's layout (so it can be written with the source's affine).

use crate::error::{Error, Result};
use crate::volume::{Layout, Volume};

/// Strides of the three spatial axes of a single-channel volume.
fn strides(vol: &Volume) -> Result<([usize; 3], [usize; 3])> {
    let dims: [usize; 3] = match (vol.layout, vol.shape.as_slice()) {
        (Layout::ColumnMajor, [x, y, z]) | (Layout::ColumnMajor, [x, y, z, 1]) => [*x, *y, *z],
        (Layout::RowMajor, [f, r, c, 1]) => [*f, *r, *c],
        (Layout::RowMajor, [f, r, c]) => [*f, *r, *c],
        _ => {
            return Err(Error::Shape {
                what: "slicing",
                expected: "a single-channel 3D volume",
                got: vol.shape.clone(),
            })
        }
    };
    let s = match vol.layout {
        Layout::ColumnMajor => [1, dims[0], dims[0] * dims[1]],
        Layout::RowMajor => [dims[1] * dims[2], dims[2], 1],
    };
    Ok((dims, s))
}

/// Number of slices along `axis` (0, 1 or 2).
pub fn slice_count(vol: &Volume, axis: usize) -> Result<usize> {
    let (dims, _) = strides(vol)?;
    dims.get(axis).copied().ok_or_else(|| Error::Setting {
        setting: "slice axis",
        expected: "0, 1 or 2".into(),
        got: axis.to_string(),
    })
}

/// Slice `index` along `axis` with `context` neighbours on each side as
/// channels (edge slices repeated at the borders): returns channel-planar
/// values `(2·context+1) × H × W` and (H, W), where H and W are the two other
/// axes in increasing order.
pub fn slice(
    vol: &Volume,
    axis: usize,
    index: usize,
    context: usize,
) -> Result<(Vec<f32>, (usize, usize))> {
    let (dims, st) = strides(vol)?;
    if axis > 2 || index >= dims[axis] {
        return Err(Error::Setting {
            setting: "slice index",
            expected: format!("a slice along axis {axis} of a {dims:?} volume"),
            got: index.to_string(),
        });
    }
    let (a, b) = match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let (h, w) = (dims[a], dims[b]);
    let mut out = Vec::with_capacity((2 * context + 1) * h * w);
    for d in -(context as isize)..=(context as isize) {
        let k = (index as isize + d).clamp(0, dims[axis] as isize - 1) as usize;
        for r in 0..h {
            for c in 0..w {
                out.push(vol.values[k * st[axis] + r * st[a] + c * st[b]]);
            }
        }
    }
    Ok((out, (h, w)))
}

/// Puts `slices` (each H × W, in slice order along `axis`) back into a volume
/// with the same shape and layout as `like`.
pub fn assemble(like: &Volume, axis: usize, slices: &[Vec<f32>]) -> Result<Vec<f32>> {
    let (dims, st) = strides(like)?;
    if slices.len() != dims[axis] {
        return Err(Error::ShapeMismatch {
            what: "predicted slices".into(),
            a: vec![slices.len()],
            b: vec![dims[axis]],
        });
    }
    let (a, b) = match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let mut out = vec![0f32; dims.iter().product()];
    for (k, s) in slices.iter().enumerate() {
        if s.len() != dims[a] * dims[b] {
            return Err(Error::ShapeMismatch {
                what: format!("predicted slice {k}"),
                a: vec![s.len()],
                b: vec![dims[a], dims[b]],
            });
        }
        for r in 0..dims[a] {
            for c in 0..dims[b] {
                out[k * st[axis] + r * st[a] + c * st[b]] = s[r * dims[b] + c];
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Format, Stats, StoredType};

    fn vol(layout: Layout, shape: Vec<usize>) -> Volume {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Volume {
            format: Format::Nifti,
            shape,
            layout,
            stored: StoredType::Float32,
            raw: Stats::of([0.0]),
            values,
            spacing: vec![1.0; 3],
            affine: None,
            window: None,
            transfer_syntax: None,
            photometric: None,
        }
    }

    #[test]
    fn slices_reassemble_to_the_volume_along_every_axis() {
        for layout in [Layout::ColumnMajor, Layout::RowMajor] {
            let v = vol(layout, vec![3, 4, 5]);
            for axis in 0..3 {
                let n = slice_count(&v, axis).unwrap();
                let slices: Vec<Vec<f32>> =
                    (0..n).map(|k| slice(&v, axis, k, 0).unwrap().0).collect();
                assert_eq!(
                    assemble(&v, axis, &slices).unwrap(),
                    v.values,
                    "{layout:?} axis {axis}"
                );
            }
        }
    }

    #[test]
    fn context_channels_are_neighbours_with_edges_repeated() {
        let v = vol(Layout::ColumnMajor, vec![2, 2, 3]);
        let (s, (h, w)) = slice(&v, 2, 0, 1).unwrap();
        assert_eq!((h, w), (2, 2));
        // channels: slice 0 (edge repeated), 0, 1; column-major: (x, y, z) → x + 2y + 4z
        assert_eq!(s, vec![0., 2., 1., 3., 0., 2., 1., 3., 4., 6., 5., 7.]);
        assert!(slice(&v, 2, 3, 0).is_err());
        assert!(slice(&v, 3, 0, 0).is_err());
    }
}
