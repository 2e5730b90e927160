//! GEMM-based convolutions for the CPU: the stride-1 k×k convolution
//! (any padding up to k − 1) and the 2×2 stride-2 transposed convolution,
//! each a custom op with its own backward pass.
//!
//! The convolution works on chunks of output pixels, numbered across the
//! whole batch (image-major), so a chunk may span images and deep, small
//! layers still give the matrix multiply wide blocks. For each chunk it
//! gathers the k·k·C input values of every pixel into a column matrix
//! (`im2col`, row by row with `memcpy`-sized copies) and multiplies the
//! (O × k·k·C) weight matrix by it with the `gemm` crate; chunks run in
//! parallel on rayon. The backward pass needs no scatter:
//! - the input gradient is a forward convolution of the output gradient with
//!   the kernel flipped in space and its channel axes swapped, padding
//!   k − 1 − p;
//! - the weight gradient is one long product over all N·H·W pixels,
//!   dW = dY · colsᵀ (each parallel task sums its chunks, then the tasks'
//!   sums are added), computed in the same pass as the bias gradient.
//!
//! The transposed 2×2/2 convolution is a product (4·O × C) · (C × pixels)
//! followed by a pixel shuffle into the doubled image; its backward is the
//! reverse shuffle and two products.

use super::cpu_f32;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Floats of the column matrix a chunk aims for (4 MiB).
const COLS_FLOATS: usize = 1 << 20;

/// Fewest pixels in a chunk when there is enough work (narrower products
/// waste the packing of the weight matrix).
const MIN_CHUNK: usize = 256;

/// A raw pointer the parallel tasks write through, each to its own disjoint
/// set of elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every user writes only to elements no other task touches (the
// output pixels of its own chunk), and the buffer outlives the parallel loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// `dst (m×n, row stride dst_rs) (+)= lhs (m×k) · rhs (k×n)`, with general
/// strides (row stride, column stride) for each operand.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // the bounds the strides reach, checked so that the unsafe call below
    // stays inside each slice
    let last =
        |(rs, cs): (usize, usize), rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last((dst_rs, 1), m, n) < dst.len());
    assert!(last(lhs_strides, m, k) < lhs.len());
    assert!(last(rhs_strides, k, n) < rhs.len());
    // SAFETY: the pointers are valid for every element the strides address
    // (checked above); dst does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs.as_ptr(),
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// The sizes of a stride-1 convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    p: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &[usize], wt: &[usize], p: usize) -> Result<Self> {
        let (&[n, c, h, w], &[o, wc, k, k2]) = (x, wt) else {
            candle_core::bail!("seg conv2d: expected 4-d input and weight, got {x:?} and {wt:?}")
        };
        if wc != c || k != k2 || k == 0 {
            candle_core::bail!("seg conv2d: weight {wt:?} does not fit input {x:?}");
        }
        if h + 2 * p < k || w + 2 * p < k {
            candle_core::bail!(
                "seg conv2d: input {h}x{w} (padding {p}) is smaller than the {k}x{k} kernel"
            );
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            k,
            p,
            ho: h + 2 * p - k + 1,
            wo: w + 2 * p - k + 1,
        })
    }

    /// Rows of the column matrix.
    fn kk(&self) -> usize {
        self.c * self.k * self.k
    }

    fn out_pixels(&self) -> usize {
        self.ho * self.wo
    }
}

/// Chunks `[start, end)` of `total` pixels, sized for a column matrix of
/// `rows` rows and so that every thread gets work.
fn chunks(total: usize, rows: usize) -> Vec<(usize, usize)> {
    let threads = rayon::current_num_threads().max(1);
    let by_cache = (COLS_FLOATS / rows.max(1)).max(MIN_CHUNK);
    let by_balance = total.div_ceil(2 * threads).max(64);
    let len = by_cache.min(by_balance).max(1);
    (0..total.div_ceil(len))
        .map(|i| (i * len, ((i + 1) * len).min(total)))
        .collect()
}

/// Walks the output pixels `[start, end)` as row segments:
/// `f(offset_in_chunk, image, out_row, first_col, len)`.
fn segments(
    g: &Geom,
    start: usize,
    end: usize,
    mut f: impl FnMut(usize, usize, usize, usize, usize),
) {
    let hw = g.out_pixels();
    let mut pos = start;
    while pos < end {
        let (img, pix) = (pos / hw, pos % hw);
        let (oy, ox) = (pix / g.wo, pix % g.wo);
        let len = (g.wo - ox).min(end - pos);
        f(pos - start, img, oy, ox, len);
        pos += len;
    }
}

/// Fills `cols` (kk × len, row-major) with the input values the output
/// pixels `[start, start + len)` see.
fn im2col(x: &[f32], g: &Geom, start: usize, len: usize, cols: &mut [f32]) {
    let (k, p) = (g.k as isize, g.p as isize);
    segments(g, start, start + len, |off, img, oy, ox, seg| {
        for ci in 0..g.c {
            let plane = &x[(img * g.c + ci) * g.h * g.w..][..g.h * g.w];
            for ky in 0..k {
                let iy = oy as isize + ky - p;
                for kx in 0..k {
                    let r = ((ci as isize * k + ky) * k + kx) as usize;
                    let dst = &mut cols[r * len + off..r * len + off + seg];
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let row = &plane[iy as usize * g.w..][..g.w];
                    // input column of dst[j] is ox + j + shift
                    let first = ox as isize + kx - p;
                    let lo = (-first).clamp(0, seg as isize) as usize;
                    let hi = (g.w as isize - first).clamp(lo as isize, seg as isize) as usize;
                    dst[..lo].fill(0.0);
                    if hi > lo {
                        let a = (first + lo as isize) as usize;
                        dst[lo..hi].copy_from_slice(&row[a..a + hi - lo]);
                    }
                    dst[hi..].fill(0.0);
                }
            }
        }
    });
}

/// Stride-1 convolution of NCHW `x` with the (O × kk) weight matrix `wt`,
/// plus an optional bias: returns NCHW (n, o, ho, wo).
fn conv_forward(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &Geom) -> Vec<f32> {
    let (hw, kk, o) = (g.out_pixels(), g.kk(), g.o);
    let mut out = vec![0f32; g.n * o * hw];
    let out_ptr = SharedMut(out.as_mut_ptr());
    chunks(g.n * hw, kk).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(cols, tile): &mut (Vec<f32>, Vec<f32>), (start, end)| {
            let len = end - start;
            cols.resize(kk * len, 0.0);
            tile.resize(o * len, 0.0);
            im2col(x, g, start, len, cols);
            matmul(
                o,
                len,
                kk,
                tile,
                len,
                false,
                wt,
                (kk, 1),
                cols,
                (len, 1),
                Parallelism::None,
            );
            let out_ptr = out_ptr;
            segments(g, start, end, |off, img, oy, ox, seg| {
                let pix = oy * g.wo + ox;
                for oc in 0..o {
                    let b = bias.map_or(0.0, |b| b[oc]);
                    let src = &tile[oc * len + off..][..seg];
                    // SAFETY: these `seg` outputs belong to this chunk alone,
                    // and lie inside `out` ((img, oc, pix..pix+seg) < n·o·hw).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out_ptr.0.add((img * o + oc) * hw + pix),
                            seg,
                        )
                    };
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = s + b;
                    }
                }
            });
        },
    );
    out
}

/// Runs `step` over the chunks in a fixed number of contiguous groups (four
/// per thread), the groups in parallel and each group's chunks in order, and
/// returns each group's state in group order. Sums built this way do not
/// depend on thread scheduling, and the partial sums' memory stays bounded.
fn grouped<T: Send>(
    chunks: &[(usize, usize)],
    init: impl Fn() -> T + Sync,
    step: impl Fn(&mut T, (usize, usize)) + Sync,
) -> Vec<T> {
    let groups = (4 * rayon::current_num_threads().max(1))
        .min(chunks.len())
        .max(1);
    let per = chunks.len().div_ceil(groups).max(1);
    chunks
        .par_chunks(per)
        .map(|grp| {
            let mut state = init();
            for &c in grp {
                step(&mut state, c);
            }
            state
        })
        .collect()
}

/// Adds up per-group partial sums in group order (so that results do not
/// depend on thread scheduling), parallel over the elements.
fn sum_in_order(
    parts: Vec<(Vec<f32>, Vec<f64>)>,
    len: usize,
    len64: usize,
) -> (Vec<f32>, Vec<f64>) {
    let mut a = vec![0f32; len];
    a.par_chunks_mut(4096).enumerate().for_each(|(i, dst)| {
        for (w, _) in &parts {
            for (d, s) in dst.iter_mut().zip(&w[i * 4096..]) {
                *d += s;
            }
        }
    });
    let mut b = vec![0f64; len64];
    for (_, p) in &parts {
        b.iter_mut().zip(p).for_each(|(d, s)| *d += s);
    }
    (a, b)
}

/// Weight and bias gradients: returns (dW as O × kk, dB of length O).
fn conv_weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> (Vec<f32>, Vec<f64>) {
    let (hw, kk, o) = (g.out_pixels(), g.kk(), g.o);
    type State = (Vec<f32>, Vec<f64>, Vec<f32>, Vec<f32>);
    let parts: Vec<State> = grouped(
        &chunks(g.n * hw, kk),
        || (vec![0f32; o * kk], vec![0f64; o], Vec::new(), Vec::new()),
        |(dw, db, cols, tile): &mut State, (start, end)| {
            let len = end - start;
            cols.resize(kk * len, 0.0);
            tile.resize(o * len, 0.0);
            im2col(x, g, start, len, cols);
            segments(g, start, end, |off, img, oy, ox, seg| {
                let pix = oy * g.wo + ox;
                for oc in 0..o {
                    tile[oc * len + off..][..seg]
                        .copy_from_slice(&dy[(img * o + oc) * hw + pix..][..seg]);
                }
            });
            for (oc, acc) in db.iter_mut().enumerate() {
                *acc += tile[oc * len..(oc + 1) * len]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            // dW (o × kk) += tile (o × len) · colsᵀ (len × kk)
            matmul(
                o,
                kk,
                len,
                dw,
                kk,
                true,
                tile,
                (len, 1),
                cols,
                (1, len),
                Parallelism::None,
            );
        },
    );
    let parts = parts.into_iter().map(|(dw, db, ..)| (dw, db)).collect();
    sum_in_order(parts, o * kk, o)
}

/// The kernel of the input gradient: flipped in space with the channel axes
/// swapped, as a (C × O·k·k) matrix.
fn flipped_kernel(wt: &[f32], g: &Geom) -> Vec<f32> {
    let (o, c, k) = (g.o, g.c, g.k);
    let mut f = vec![0f32; wt.len()];
    for oc in 0..o {
        for ci in 0..c {
            for ky in 0..k {
                for kx in 0..k {
                    f[((ci * o + oc) * k + (k - 1 - ky)) * k + (k - 1 - kx)] =
                        wt[((oc * c + ci) * k + ky) * k + kx];
                }
            }
        }
    }
    f
}

/// Input gradient: the forward convolution of `dy` with the flipped kernel.
fn conv_input_grad(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    let back = Geom {
        n: g.n,
        c: g.o,
        h: g.ho,
        w: g.wo,
        o: g.c,
        k: g.k,
        p: g.k - 1 - g.p,
        ho: g.h,
        wo: g.w,
    };
    conv_forward(dy, &flipped_kernel(wt, g), None, &back)
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    cpu_f32(s, l, &format!("seg conv2d: {what}"))
}

/// The forward op: `x` (N,C,H,W) * `w` (O,C,k,k) [+ `b` (O)].
struct Conv2dOp {
    padding: usize,
}

impl Conv2dOp {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(x.1.dims(), w.1.dims(), self.padding)?;
        let xs = slice(x.0, x.1, "input")?;
        let ws = slice(w.0, w.1, "weight")?;
        let bs = match b {
            Some((s, l)) => {
                if l.dims() != [g.o] {
                    candle_core::bail!("seg conv2d: bias shape {:?}, expected [{}]", l.dims(), g.o)
                }
                Some(slice(s, l, "bias")?)
            }
            None => None,
        };
        let y = conv_forward(xs, ws, bs, &g);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    /// (dx, dw, db) of the op, each without autograd history; no dx when
    /// `x` needs none (a network's input).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                &w.contiguous()?,
                &InputGrad {
                    padding: self.padding,
                    x_dims: x.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        let flat = grad.apply_op2_no_bwd(
            &x.contiguous()?,
            &WeightGrad {
                padding: self.padding,
                w_dims: w.dims().to_vec(),
            },
        )?;
        let (o, numel) = (w.dim(0)?, w.elem_count());
        let dw = flat.narrow(0, 0, numel)?.reshape(w.dims())?;
        let db = flat.narrow(0, numel, o)?;
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "seg-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, grad)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "seg-conv2d-bias"
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
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, grad)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// Input gradient op: (dy, w) → dx.
struct InputGrad {
    padding: usize,
    x_dims: Vec<usize>,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "seg-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.x_dims, l2.dims(), self.padding)?;
        if l1.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!(
                "seg conv2d backward: gradient shape {:?} does not fit",
                l1.dims()
            )
        }
        let dx = conv_input_grad(slice(s1, l1, "gradient")?, slice(s2, l2, "weight")?, &g);
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims.clone())))
    }
}

/// Weight-and-bias gradient op: (dy, x) → [dW flattened, dB].
struct WeightGrad {
    padding: usize,
    w_dims: Vec<usize>,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "seg-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l2.dims(), &self.w_dims, self.padding)?;
        if l1.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!(
                "seg conv2d backward: gradient shape {:?} does not fit",
                l1.dims()
            )
        }
        let (mut dw, db) =
            conv_weight_grad(slice(s2, l2, "input")?, slice(s1, l1, "gradient")?, &g);
        dw.extend(db.iter().map(|&v| v as f32));
        let len = dw.len();
        Ok((CpuStorage::F32(dw), Shape::from(len)))
    }
}

/// Stride-1 2D convolution with zero padding `padding` (at most k − 1) and
/// an optional bias, as PyTorch's `F.conv2d(x, w, b, padding=padding)`.
/// CPU f32 tensors use seg's GEMM kernel; other devices use candle's.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, padding: usize) -> Result<Tensor> {
    let k = w.dim(2)?;
    if !super::use_cpu_kernel(x) || padding >= k.max(1) || w.dim(3)? != k {
        let y = x.conv2d(w, padding, 1, 1, 1)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        };
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = Conv2dOp { padding };
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// The plain reference of [`conv2d`] (candle's kernels), for tests.
pub fn conv2d_reference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let y = x.conv2d(w, padding, 1, 1, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        None => Ok(y),
    }
}

// ---------------------------------------------------------------------------
// 2×2 stride-2 transposed convolution

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

    fn chunks(&self) -> Vec<(usize, usize)> {
        chunks(self.n * self.h * self.w, self.c.max(4 * self.o))
    }

    /// Copies the input pixels `[start, end)` (batch-wide numbering) of the
    /// NCHW tensor `src` with `ch` channels into `tile` (ch × len).
    fn gather(&self, src: &[f32], ch: usize, start: usize, end: usize, tile: &mut Vec<f32>) {
        let (hw, len) = (self.h * self.w, end - start);
        tile.resize(ch * len, 0.0);
        let mut pos = start;
        while pos < end {
            let (img, pix) = (pos / hw, pos % hw);
            let seg = (hw - pix).min(end - pos);
            for c in 0..ch {
                tile[c * len + pos - start..][..seg]
                    .copy_from_slice(&src[(img * ch + c) * hw + pix..][..seg]);
            }
            pos += seg;
        }
    }
}

fn up_forward(x: &[f32], wt: &[f32], bias: &[f32], g: &UpGeom) -> Vec<f32> {
    let (hw, o4) = (g.h * g.w, 4 * g.o);
    let (h2, w2) = (2 * g.h, 2 * g.w);
    let mut out = vec![0f32; g.n * g.o * h2 * w2];
    let out_ptr = SharedMut(out.as_mut_ptr());
    g.chunks().into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(xt, z): &mut (Vec<f32>, Vec<f32>), (start, end)| {
            let len = end - start;
            g.gather(x, g.c, start, end, xt);
            z.resize(o4 * len, 0.0);
            // z (4O × len) = Wᵀ (4O × C) · x (C × len); W is (C × 4O) row-major
            matmul(
                o4,
                len,
                g.c,
                z,
                len,
                false,
                wt,
                (1, o4),
                xt,
                (len, 1),
                Parallelism::None,
            );
            let out_ptr = out_ptr;
            for (j, pos) in (start..end).enumerate() {
                let (img, pix) = (pos / hw, pos % hw);
                let (y, x) = (pix / g.w, pix % g.w);
                for oc in 0..g.o {
                    let base = (img * g.o + oc) * h2 * w2 + 2 * y * w2 + 2 * x;
                    for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let v = z[(oc * 4 + a * 2 + b) * len + j] + bias[oc];
                        // SAFETY: output pixel (2y+a, 2x+b) of input pixel
                        // `pos` is written by this chunk only, and is in range.
                        unsafe { *out_ptr.0.add(base + a * w2 + b) = v };
                    }
                }
            }
        },
    );
    out
}

/// (dx, [dW flattened, dB]) of the transposed convolution.
fn up_backward(x: &[f32], wt: &[f32], dy: &[f32], g: &UpGeom) -> (Vec<f32>, Vec<f32>) {
    let (hw, o4, c) = (g.h * g.w, 4 * g.o, g.c);
    let (h2, w2) = (2 * g.h, 2 * g.w);
    let mut dx = vec![0f32; g.n * c * hw];
    let dx_ptr = SharedMut(dx.as_mut_ptr());
    type State = (Vec<f32>, Vec<f64>, Vec<f32>, Vec<f32>, Vec<f32>);
    let parts: Vec<State> = grouped(
        &g.chunks(),
        || {
            (
                vec![0f32; c * o4],
                vec![0f64; g.o],
                Vec::new(),
                Vec::new(),
                Vec::new(),
            )
        },
        |(dw, db, xt, dz, dxt): &mut State, (start, end)| {
            let len = end - start;
            g.gather(x, c, start, end, xt);
            dz.resize(o4 * len, 0.0);
            for (j, pos) in (start..end).enumerate() {
                let (img, pix) = (pos / hw, pos % hw);
                let (y, xx) = (pix / g.w, pix % g.w);
                for (oc, acc) in db.iter_mut().enumerate() {
                    let base = (img * g.o + oc) * h2 * w2 + 2 * y * w2 + 2 * xx;
                    for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let v = dy[base + a * w2 + b];
                        dz[(oc * 4 + a * 2 + b) * len + j] = v;
                        *acc += v as f64;
                    }
                }
            }
            // dx (C × len) = W (C × 4O) · dz (4O × len)
            dxt.resize(c * len, 0.0);
            matmul(
                c,
                len,
                o4,
                dxt,
                len,
                false,
                wt,
                (o4, 1),
                dz,
                (len, 1),
                Parallelism::None,
            );
            let dx_ptr = dx_ptr;
            let mut pos = start;
            while pos < end {
                let (img, pix) = (pos / hw, pos % hw);
                let seg = (hw - pix).min(end - pos);
                for ci in 0..c {
                    // SAFETY: these input pixels belong to this chunk alone.
                    let d = unsafe {
                        std::slice::from_raw_parts_mut(dx_ptr.0.add((img * c + ci) * hw + pix), seg)
                    };
                    d.copy_from_slice(&dxt[ci * len + pos - start..][..seg]);
                }
                pos += seg;
            }
            // dW (C × 4O) += x (C × len) · dzᵀ (len × 4O)
            matmul(
                c,
                o4,
                len,
                dw,
                o4,
                true,
                xt,
                (len, 1),
                dz,
                (1, len),
                Parallelism::None,
            );
        },
    );
    let parts = parts.into_iter().map(|(dw, db, ..)| (dw, db)).collect();
    let (dw, db) = sum_in_order(parts, c * o4, g.o);
    let mut flat = dw;
    flat.extend(db.iter().map(|&v| v as f32));
    (dx, flat)
}

struct ConvTranspose2x2Op;

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
        let both = grad.apply_op3_no_bwd(&x.contiguous()?, &w.contiguous()?, &UpBackward)?;
        let (xn, wn, o) = (x.elem_count(), w.elem_count(), w.dim(1)?);
        let dx = both.narrow(0, 0, xn)?.reshape(x.dims())?;
        let dw = both.narrow(0, xn, wn)?.reshape(w.dims())?;
        let db = both.narrow(0, xn + wn, o)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Backward op of the transposed convolution: (dy, x, w) → [dx, dW, dB] flat.
struct UpBackward;

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
        );
        dx.extend(dwb);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// `F.conv_transpose2d(x, w, b, stride=2)` with a (C, O, 2, 2) kernel:
/// doubles H and W. CPU f32 tensors use seg's GEMM kernel.
pub fn conv_transpose2x2(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !super::use_cpu_kernel(x) {
        return conv_transpose2x2_reference(x, w, b);
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, ConvTranspose2x2Op)
}

/// The plain reference of [`conv_transpose2x2`] (candle's kernels).
pub fn conv_transpose2x2_reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = x.conv_transpose2d(w, 0, 0, 2, 1)?;
    y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::*;
    use candle_core::Var;

    /// Forward and all gradients of `f` and `reference` on the same inputs.
    fn check(
        inputs: &[Tensor],
        f: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let yr = reference(&ts);
        let scale = |t: &Tensor| {
            t.abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1.0)
        };
        assert!(
            max_abs_diff(&y, &yr) <= tol * scale(&yr),
            "forward differs: {}",
            max_abs_diff(&y, &yr)
        );
        let gy = rand_tensor(y.dims(), 99);
        let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, t) in ts.iter().enumerate() {
            let (a, b) = (g.get(t).unwrap(), gr.get(t).unwrap());
            let d = max_abs_diff(a, b);
            assert!(d <= tol * scale(b), "gradient of input {i} differs by {d}");
        }
    }

    #[test]
    fn conv_matches_candle_on_odd_shapes() {
        // (n, c, h, w, o, k, p, bias)
        for &(n, c, h, w, o, k, p, bias) in &[
            (2, 3, 7, 5, 4, 3, 1, true),
            (1, 1, 1, 1, 1, 3, 1, true),
            (3, 5, 9, 2, 2, 3, 1, false),
            (2, 4, 6, 11, 3, 1, 0, true),
            (1, 2, 8, 7, 3, 5, 2, true),
            (2, 3, 6, 6, 2, 3, 0, false),
            (1, 2, 5, 4, 3, 3, 2, true),
            (5, 17, 3, 3, 19, 3, 1, true),
            (1, 3, 40, 37, 5, 3, 1, true),
        ] {
            let x = rand_tensor(&[n, c, h, w], 1);
            let wt = rand_tensor(&[o, c, k, k], 2);
            let b = rand_tensor(&[o], 3);
            if bias {
                check(
                    &[x, wt, b],
                    |t| conv2d(&t[0], &t[1], Some(&t[2]), p).unwrap(),
                    |t| conv2d_reference(&t[0], &t[1], Some(&t[2]), p).unwrap(),
                    1e-5,
                );
            } else {
                check(
                    &[x, wt],
                    |t| conv2d(&t[0], &t[1], None, p).unwrap(),
                    |t| conv2d_reference(&t[0], &t[1], None, p).unwrap(),
                    1e-5,
                );
            }
        }
    }

    #[test]
    fn conv_chunks_spanning_images_match() {
        // many small images: chunks cover several images each
        let x = rand_tensor(&[37, 3, 3, 5], 4);
        let wt = rand_tensor(&[6, 3, 3, 3], 5);
        let b = rand_tensor(&[6], 6);
        check(
            &[x, wt, b],
            |t| conv2d(&t[0], &t[1], Some(&t[2]), 1).unwrap(),
            |t| conv2d_reference(&t[0], &t[1], Some(&t[2]), 1).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn conv_rejects_bad_shapes() {
        let x = rand_tensor(&[1, 3, 4, 4], 1);
        assert!(conv2d(&x, &rand_tensor(&[2, 2, 3, 3], 2), None, 1).is_err());
        assert!(conv2d(
            &x,
            &rand_tensor(&[2, 3, 3, 3], 2),
            Some(&rand_tensor(&[3], 3)),
            1
        )
        .is_err());
        let tiny = rand_tensor(&[1, 3, 1, 1], 1);
        assert!(conv2d(&tiny, &rand_tensor(&[2, 3, 3, 3], 2), None, 0).is_err());
    }

    #[test]
    fn transposed_conv_matches_candle_on_odd_shapes() {
        for &(n, c, h, w, o) in &[
            (2, 3, 5, 3, 4),
            (1, 1, 1, 1, 1),
            (3, 7, 2, 9, 2),
            (1, 4, 33, 17, 3),
        ] {
            let x = rand_tensor(&[n, c, h, w], 7);
            let wt = rand_tensor(&[c, o, 2, 2], 8);
            let b = rand_tensor(&[o], 9);
            check(
                &[x, wt, b],
                |t| conv_transpose2x2(&t[0], &t[1], &t[2]).unwrap(),
                |t| conv_transpose2x2_reference(&t[0], &t[1], &t[2]).unwrap(),
                1e-5,
            );
        }
    }
}
