//! The 2×2 stride-2 transposed convolution on the CPU, a custom op with its
//! own backward pass: a (4·O × C) · (C × pixels) product (the GEMM path's
//! [`matmul`] on its chunks) followed by a pixel shuffle into the doubled
//! image; its backward is the reverse shuffle and two products.

use super::gemm::{chunks, in_one_image, matmul, nchw_to_tile, tile_to_nchw};
use super::route::{self, Pass, Route};
use super::{channel_sums, Geom, SharedMut};
use crate::ops::cpu_f32;
use crate::precision::Precision;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Sizes of a transposed 2×2/2 convolution: input (n, c, h, w), weight
/// (c, o, 2, 2), output (n, o, 2h, 2w).
#[derive(Debug, Clone, Copy)]
struct UpGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
}

impl UpGeom {
    fn new(x: &[usize], wt: &[usize]) -> Result<Self> {
        let (&[n, c, h, w], &[wc, o, 2, 2]) = (x, wt) else {
            candle_core::bail!("seg conv-transpose 2x2: expected input (N,C,H,W) and weight (C,O,2,2), got {x:?} and {wt:?}")
        };
        if wc != c {
            candle_core::bail!("seg conv-transpose 2x2: weight {wt:?} does not fit input {x:?}");
        }
        Ok(Self { n, c, h, w, o })
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }

    fn chunks(&self) -> Vec<(usize, usize)> {
        chunks(self.n, self.hw(), self.c, 4 * self.o)
    }

    /// The (image, output channel) planes that the chunk `[start, end)` of
    /// input pixels writes: one parallel task each.
    fn planes(&self, start: usize, end: usize) -> Vec<(usize, usize)> {
        let (first, last) = (start / self.hw(), (end - 1) / self.hw());
        (first..=last)
            .flat_map(|i| (0..self.o).map(move |oc| (i, oc)))
            .collect()
    }

    /// Visits every output pixel of the chunk `[start, end)` of input
    /// pixels, one parallel task per (image, channel) plane:
    /// `f(row_of_z_matrix_times_len_plus_j, index_in_doubled_image, channel)`.
    /// Row `oc·4 + a·2 + b` of the (4·O × len) matrix holds output pixel
    /// (2y + a, 2x + b) of channel `oc` for input pixel `start + j`.
    fn each_pixel(&self, start: usize, end: usize, f: impl Fn(usize, usize, usize) + Sync) {
        let (hw, len) = (self.hw(), end - start);
        let (w2, h2) = (2 * self.w, 2 * self.h);
        self.planes(start, end).into_par_iter().for_each(|(i, oc)| {
            for pos in start.max(i * hw)..end.min((i + 1) * hw) {
                let (pix, j) = (pos - i * hw, pos - start);
                let (y, x) = (pix / self.w, pix % self.w);
                let base = (i * self.o + oc) * h2 * w2 + 2 * y * w2 + 2 * x;
                for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    f((oc * 4 + a * 2 + b) * len + j, base + a * w2 + b, oc);
                }
            }
        });
    }

    /// Matrix → doubled image (adding the bias): one parallel task per
    /// (image, channel) plane, a run of input pixels along a row at a time
    /// (each run interleaves two rows of the matrix into each of its two
    /// output rows).
    fn scatter(&self, z: &[f32], img: &mut [f32], start: usize, end: usize, bias: &[f32]) {
        let (hw, len, w) = (self.hw(), end - start, self.w);
        let plane = 4 * hw;
        assert!(img.len() >= self.n * self.o * plane && z.len() >= 4 * self.o * len);
        let ip = SharedMut(img.as_mut_ptr());
        self.planes(start, end).into_par_iter().for_each(|(i, oc)| {
            let (lo, hi) = (start.max(i * hw), end.min((i + 1) * hw));
            // SAFETY: the plane lies in `img` (asserted above), and each
            // plane belongs to this one task.
            let out = unsafe {
                std::slice::from_raw_parts_mut(ip.ptr().add((i * self.o + oc) * plane), plane)
            };
            let b = bias[oc];
            let mut pos = lo;
            while pos < hi {
                let (y, x0) = ((pos - i * hw) / w, (pos - i * hw) % w);
                let run = (w - x0).min(hi - pos);
                let j = pos - start;
                for a in 0..2 {
                    let z0 = &z[(oc * 4 + a * 2) * len + j..][..run];
                    let z1 = &z[(oc * 4 + a * 2 + 1) * len + j..][..run];
                    let row = &mut out[(2 * y + a) * 2 * w + 2 * x0..][..2 * run];
                    for ((o, &p), &q) in row.chunks_exact_mut(2).zip(z0).zip(z1) {
                        o[0] = p + b;
                        o[1] = q + b;
                    }
                }
                pos += run;
            }
        });
    }

    /// Doubled image → matrix.
    fn gather(&self, img: &[f32], z: &mut [f32], start: usize, end: usize) {
        let zl = z.len();
        let zp = SharedMut(z.as_mut_ptr());
        self.each_pixel(start, end, |zi, ii, _| {
            assert!(zi < zl);
            // SAFETY: in bounds (checked); each matrix element belongs to
            // one (image, channel) plane, visited by one task.
            unsafe { *zp.ptr().add(zi) = img[ii] };
        });
    }
}

/// The forward pass in `prec`. In bf16 (where the CPU has it) the product
/// is the 1×1 convolution with 4·O outputs (`Wᵀ`, row `oc·4 + a·2 + b`) on
/// the bf16 kernel of its route (direct or AMX), one (4·O × H·W) matrix per image, then
/// the same shuffle; otherwise the fp32 GEMM on chunks.
fn up_forward(x: &[f32], wt: &[f32], bias: &[f32], g: &UpGeom, prec: Precision) -> Vec<f32> {
    let (hw, o4, c) = (g.hw(), 4 * g.o, g.c);
    if prec == Precision::Bf16 {
        if let Ok(pg) = Geom::new(&[g.n, c, g.h, g.w], &[o4, c, 1, 1], 0) {
            if matches!(
                route::choose_with(Pass::Forward, &pg, prec),
                (Route::Direct | Route::Amx, Precision::Bf16)
            ) {
                // Wᵀ: (C × 4O) → (4O × C)
                let mut wt2 = vec![0f32; o4 * c];
                for (ci, row) in wt.chunks_exact(o4).enumerate() {
                    for (r, &v) in row.iter().enumerate() {
                        wt2[r * c + ci] = v;
                    }
                }
                let z = route::forward(x, &wt2, None, false, &pg, prec);
                let mut out = vec![0f32; g.n * g.o * hw * 4];
                for (i, zi) in z.chunks_exact(o4 * hw).enumerate() {
                    g.scatter(zi, &mut out, i * hw, (i + 1) * hw, bias);
                }
                return out;
            }
        }
    }
    let mut out = vec![0f32; g.n * g.o * hw * 4];
    let (mut xt, mut z) = (Vec::new(), Vec::new());
    for (start, end) in g.chunks() {
        let len = end - start;
        z.resize(o4 * len, 0.0);
        // z (4O × len) = Wᵀ (4O × C) · x (C × len); W is (C × 4O) row-major
        match in_one_image(start, end, c, hw) {
            Some(off) => matmul(
                o4,
                len,
                c,
                &mut z,
                len,
                false,
                wt,
                (1, o4),
                &x[off..],
                (hw, 1),
                true,
            ),
            None => {
                xt.resize(c * len, 0.0);
                nchw_to_tile(x, &mut xt, c, hw, start, end);
                matmul(
                    o4,
                    len,
                    c,
                    &mut z,
                    len,
                    false,
                    wt,
                    (1, o4),
                    &xt,
                    (len, 1),
                    true,
                );
            }
        }
        g.scatter(&z, &mut out, start, end, bias);
    }
    out
}

/// (dx, [dW flattened, dB]) of the transposed convolution, in `prec`.
/// In bf16, where both 1×1 passes below have bf16 kernels (AMX, or the
/// direct kernel for dx), dy is gathered into one (4·O × H·W) matrix per
/// image — the 4·O-channel input of a 1×1 convolution — and dx is that
/// convolution with the weights as (C × 4·O), dW its weight gradient
/// against x, transposed; otherwise the fp32 GEMMs on chunks.
fn up_backward(
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    g: &UpGeom,
    prec: Precision,
) -> (Vec<f32>, Vec<f32>) {
    let (hw, o4, c) = (g.hw(), 4 * g.o, g.c);
    if prec == Precision::Bf16 {
        let pg = Geom::new(&[g.n, o4, g.h, g.w], &[c, o4, 1, 1], 0);
        let wg = Geom::new(&[g.n, c, g.h, g.w], &[o4, c, 1, 1], 0);
        if let (Ok(pg), Ok(wg)) = (pg, wg) {
            let bf16 =
                |pass, geom: &Geom| route::choose_with(pass, geom, prec).1 == Precision::Bf16;
            if bf16(Pass::Forward, &pg) && bf16(Pass::WeightGrad, &wg) {
                let mut dz = vec![0f32; g.n * o4 * hw];
                for (i, d) in dz.chunks_mut(o4 * hw).enumerate() {
                    g.gather(dy, d, i * hw, (i + 1) * hw);
                }
                let dx = route::forward(&dz, wt, None, false, &pg, prec);
                // (4·O × C) → (C × 4·O)
                let dwt = route::weight_grad(x, &dz, &wg, prec);
                let mut dw = vec![0f32; c * o4];
                for (r, row) in dwt.chunks_exact(c).enumerate() {
                    for (ci, &v) in row.iter().enumerate() {
                        dw[ci * o4 + r] = v;
                    }
                }
                let db = channel_sums(dy, g.n, g.o, 4 * hw);
                dw.extend(db.iter().map(|&v| v as f32));
                return (dx, dw);
            }
        }
    }
    let mut dx = vec![0f32; g.n * c * hw];
    let mut dw = vec![0f32; c * o4];
    let (mut xt, mut dz, mut dxt) = (Vec::new(), Vec::new(), Vec::new());
    for (start, end) in g.chunks() {
        let len = end - start;
        dz.resize(o4 * len, 0.0);
        g.gather(dy, &mut dz, start, end);
        let xs: (&[f32], (usize, usize)) = match in_one_image(start, end, c, hw) {
            Some(off) => {
                // dx (C × len) = W (C × 4O) · dz (4O × len), straight into dx
                matmul(
                    c,
                    len,
                    o4,
                    &mut dx[off..],
                    hw,
                    false,
                    wt,
                    (o4, 1),
                    &dz,
                    (len, 1),
                    true,
                );
                (&x[off..], (hw, 1))
            }
            None => {
                dxt.resize(c * len, 0.0);
                matmul(
                    c,
                    len,
                    o4,
                    &mut dxt,
                    len,
                    false,
                    wt,
                    (o4, 1),
                    &dz,
                    (len, 1),
                    true,
                );
                tile_to_nchw(&dxt, &mut dx, c, hw, start, end);
                xt.resize(c * len, 0.0);
                nchw_to_tile(x, &mut xt, c, hw, start, end);
                (&xt, (len, 1))
            }
        };
        // dW (C × 4O) += x (C × len) · dzᵀ (len × 4O)
        matmul(
            c,
            o4,
            len,
            &mut dw,
            o4,
            true,
            xs.0,
            xs.1,
            &dz,
            (1, len),
            true,
        );
    }
    let db = channel_sums(dy, g.n, g.o, 4 * hw);
    dw.extend(db.iter().map(|&v| v as f32));
    (dx, dw)
}

struct ConvTranspose2x2Op {
    /// The arithmetic of both passes (this thread's [`crate::precision`]
    /// when the op was built).
    prec: Precision,
}

impl CustomOp3 for ConvTranspose2x2Op {
    fn name(&self) -> &'static str {
        "seg-conv-transpose-2x2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = UpGeom::new(l1.dims(), l2.dims())?;
        if l3.dims() != [g.o] {
            candle_core::bail!(
                "seg conv-transpose 2x2: bias shape {:?}, expected [{}]",
                l3.dims(),
                g.o
            )
        }
        let what = "seg conv-transpose 2x2";
        let y = up_forward(
            cpu_f32(s1, l1, what)?,
            cpu_f32(s2, l2, what)?,
            cpu_f32(s3, l3, what)?,
            &g,
            self.prec,
        );
        Ok((
            CpuStorage::F32(y),
            Shape::from((g.n, g.o, 2 * g.h, 2 * g.w)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let both = grad.apply_op3_no_bwd(
            &x.contiguous()?,
            &w.contiguous()?,
            &UpBackward { prec: self.prec },
        )?;
        let (xn, wn, o) = (x.elem_count(), w.elem_count(), w.dim(1)?);
        let dx = both.narrow(0, 0, xn)?.reshape(x.dims())?;
        let dw = both.narrow(0, xn, wn)?.reshape(w.dims())?;
        let db = both.narrow(0, xn + wn, o)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Backward op of the transposed convolution: (dy, x, w) → [dx, dW, dB] flat.
struct UpBackward {
    prec: Precision,
}

impl CustomOp3 for UpBackward {
    fn name(&self) -> &'static str {
        "seg-conv-transpose-2x2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = UpGeom::new(l2.dims(), l3.dims())?;
        if l1.dims() != [g.n, g.o, 2 * g.h, 2 * g.w] {
            candle_core::bail!(
                "seg conv-transpose 2x2 backward: gradient shape {:?} does not fit",
                l1.dims()
            )
        }
        let what = "seg conv-transpose 2x2 backward";
        let (mut dx, dwb) = up_backward(
            cpu_f32(s2, l2, what)?,
            cpu_f32(s3, l3, what)?,
            cpu_f32(s1, l1, what)?,
            &g,
            self.prec,
        );
        dx.extend(dwb);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// `F.conv_transpose2d(x, w, b, stride=2)` with a (C, O, 2, 2) kernel:
/// doubles H and W. CPU f32 tensors use seg's GEMM kernel.
pub fn conv_transpose2x2(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !crate::ops::use_cpu_kernel(x) {
        return conv_transpose2x2_reference(x, w, b);
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        ConvTranspose2x2Op {
            prec: crate::precision::current(),
        },
    )
}

/// The plain reference of [`conv_transpose2x2`] (candle's kernels).
pub fn conv_transpose2x2_reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = x.conv_transpose2d(w, 0, 0, 2, 1)?;
    y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)
}
