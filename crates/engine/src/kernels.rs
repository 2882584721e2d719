//! CPU kernels for no-gradient f32 passes that do the same floating-point operations as candle's
//! composed ops, in the same order, so their outputs are bit-identical; they only skip work
//! candle's generic ops do. Any other device, dtype or a tracked input takes candle's path.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// True where the kernels here apply: f32 tensors on the CPU that no gradient tracks.
fn applies(xs: &[&Tensor]) -> bool {
    xs.iter().all(|x| matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && !x.track_op())
}

/// The elements of a contiguous tensor (the ops below are applied to contiguous inputs only).
fn elements<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op} takes contiguous tensors"),
    }
}

/// Whether to hand work to rayon: on one thread it costs more than it saves.
fn parallel() -> bool {
    candle_core::utils::get_num_threads() > 1
}

/// `dst = lhs · rhs` by gemm, without reading `dst` (so it may be uninitialised): `lhs` is m × k
/// with contiguous rows of stride `lhs_rs`, `dst` m × n with contiguous rows of stride `dst_rs`,
/// and `rhs` k × n read with row and column strides `rhs_strides`.
///
/// # Safety
/// Every element those shapes and strides address must be in bounds of its buffer.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller guarantees the addressed elements are in bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `a @ b` (or `a @ bᵀ`) over leading batch axes: `a` `[S.., m, k]`, `b` `[S.., k, n]`
/// (`[S.., n, k]` when transposed), both contiguous; the projections are the unbatched case.
/// candle makes the same gemm calls but zero-fills the output first although gemm overwrites it
/// (`read_dst = false`): a pass as large as the output, ~5 % of a projection whose inner
/// dimension is 512. With batch axes (attention), candle also splits each entry's small gemm
/// across the threads, a hand-off per entry; here the entries run in parallel instead, each gemm
/// on one thread. gemm's threads split the output into tiles and never the inner dimension, so
/// every element sums the same products in the same order either way.
struct BatchedGemm {
    transpose_rhs: bool,
}

impl CustomOp2 for BatchedGemm {
    fn name(&self) -> &'static str {
        "batched-gemm-f32"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (a, b) else {
            candle_core::bail!("batched-gemm-f32 takes f32 tensors");
        };
        let (a, b) = (elements(a, la, self.name())?, elements(b, lb, self.name())?);
        let (da, db) = (la.dims(), lb.dims());
        let r = da.len();
        if r < 2 || db.len() != r || da[..r - 2] != db[..r - 2] {
            candle_core::bail!("batched-gemm-f32: shapes {da:?} and {db:?} do not batch");
        }
        let (m, k) = (da[r - 2], da[r - 1]);
        let (n, kb) = if self.transpose_rhs { (db[r - 2], db[r - 1]) } else { (db[r - 1], db[r - 2]) };
        if k != kb {
            candle_core::bail!("batched-gemm-f32: inner dimensions {k} and {kb} differ");
        }
        // Row and column strides of the right operand as gemm reads it ([k, n]).
        let (rhs_rs, rhs_cs) = if self.transpose_rhs { (1, k) } else { (n, 1) };
        let steps: usize = da[..r - 2].iter().product();
        let mut dst: Vec<f32> = Vec::with_capacity(steps * m * n);
        let one = |(s, d): (usize, &mut [std::mem::MaybeUninit<f32>]), parallelism| {
            // SAFETY: entry s of a is m × k row-major and of b k × n under the strides above, in
            // bounds; d has room for m × n and gemm writes each element without reading it.
            unsafe {
                gemm_into(
                    (m, n, k),
                    d.as_mut_ptr() as *mut f32,
                    n,
                    a[s * m * k..].as_ptr(),
                    k,
                    b[s * k * n..].as_ptr(),
                    (rhs_rs, rhs_cs),
                    parallelism,
                )
            }
        };
        let spare = &mut dst.spare_capacity_mut()[..steps * m * n];
        if m * n > 0 && k > 0 {
            if parallel() && steps > 1 {
                spare.par_chunks_mut(m * n).enumerate().for_each(|e| one(e, gemm::Parallelism::None));
            } else {
                // candle's own choice for a single product.
                let parallelism = if parallel() {
                    gemm::Parallelism::Rayon(candle_core::utils::get_num_threads())
                } else {
                    gemm::Parallelism::None
                };
                spare.chunks_mut(m * n).enumerate().for_each(|e| one(e, parallelism));
            }
        } else {
            spare.iter_mut().for_each(|d| {
                d.write(0.0);
            });
        }
        // SAFETY: the entries above cover all steps × m × n elements, each written.
        unsafe { dst.set_len(steps * m * n) };
        let mut shape = da.to_vec();
        shape[r - 1] = n;
        Ok((CpuStorage::F32(dst), shape.into()))
    }
}

/// `x @ wᵀ` for `x` `[m, k]`, `w` `[n, k]` (the `nn.Linear` layout).
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if applies(&[x, w]) && x.rank() == 2 && w.rank() == 2 {
        Ok(x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &BatchedGemm { transpose_rhs: true })?)
    } else {
        Ok(x.matmul(&w.t()?)?)
    }
}

/// `a @ b` over the leading (batch) axes, as candle's `matmul`.
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if applies(&[a, b]) && a.rank() >= 2 {
        Ok(a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &BatchedGemm { transpose_rhs: false })?)
    } else {
        Ok(a.matmul(b)?)
    }
}

/// `a @ bᵀ` (the last two axes of `b` swapped), as candle's `a.matmul(&b.t())`.
pub(crate) fn matmul_t(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if applies(&[a, b]) && a.rank() >= 2 {
        Ok(a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &BatchedGemm { transpose_rhs: true })?)
    } else {
        Ok(a.matmul(&b.t()?)?)
    }
}

/// `silu(gate) · up` in one parallel pass: candle's silu (`v / (1 + e^−v)`) is a single-threaded
/// map and the product a second pass over the MLP's widest activation.
struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul-f32"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        lg: &Layout,
        u: &CpuStorage,
        lu: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (g, u) else {
            candle_core::bail!("silu-mul-f32 takes f32 tensors");
        };
        let (g, u) = (elements(g, lg, self.name())?, elements(u, lu, self.name())?);
        if lg.shape() != lu.shape() {
            candle_core::bail!("silu-mul-f32: shapes {:?} and {:?} differ", lg.shape(), lu.shape());
        }
        let mut dst: Vec<f32> = Vec::with_capacity(g.len());
        const CHUNK: usize = 1 << 14;
        let run = |(d, g, u): (&mut [std::mem::MaybeUninit<f32>], &[f32], &[f32])| {
            // e^−g a block at a time through the vector exp, then candle's arithmetic.
            let mut e = [0f32; 256];
            for ((d, g), u) in d.chunks_mut(256).zip(g.chunks(256)).zip(u.chunks(256)) {
                let e = &mut e[..g.len()];
                for (e, &g) in e.iter_mut().zip(g) {
                    *e = -g;
                }
                crate::expf::exp_in_place(e);
                for (((d, &g), &u), &e) in d.iter_mut().zip(g).zip(u).zip(&*e) {
                    d.write((g / (1.0 + e)) * u);
                }
            }
        };
        let spare = &mut dst.spare_capacity_mut()[..g.len()];
        if g.len() <= CHUNK || !parallel() {
            run((spare, g, u));
        } else {
            spare
                .par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(u.par_chunks(CHUNK))
                .for_each(|((d, g), u)| run((d, g, u)));
        }
        // SAFETY: the chunks above cover the whole spare capacity, g.len() elements, each written.
        unsafe { dst.set_len(g.len()) };
        Ok((CpuStorage::F32(dst), lg.shape().clone()))
    }
}

/// `silu(gate) · up`.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if applies(&[gate, up]) && gate.shape() == up.shape() {
        Ok(gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &SiluMul)?)
    } else if let Some(out) = crate::cuda_kernels::silu_mul(gate, up)? {
        // On a GPU, one CUDA kernel.
        Ok(out)
    } else {
        Ok((gate.silu()? * up)?)
    }
}

/// One row of attention's `softmax(where(mask, scores · scale, −∞))`, in place on the raw
/// scores: candle's own arithmetic (its affine `v · scale + 0`, and softmax_last_dim's max,
/// `exp(s − max)`, sum and division with the same reductions over the whole row).
fn softmax_row(d: &mut [f32], mask: &[u8], scale: f32) {
    use candle_core::cpu::kernels::VecOps;
    let tk = d.len();
    for (d, &keep) in d.iter_mut().zip(mask) {
        *d = if keep != 0 { *d * scale + 0.0 } else { f32::NEG_INFINITY };
    }
    let mut max = f32::NEG_INFINITY;
    // SAFETY: d holds tk > 0 elements.
    unsafe { f32::vec_reduce_max(d.as_ptr(), &mut max, tk) };
    // Masked keys hold −∞ and exp(−∞ − max) is exactly 0 for a finite max (the vector exp
    // writes it without a call); a fully masked row (max = −∞) keeps candle's NaN.
    for d in d.iter_mut() {
        *d -= max;
    }
    crate::expf::exp_in_place(d);
    let mut sum = 0.0f32;
    // SAFETY: as above; the sum runs over the whole row, as candle's does (its SIMD lanes and
    // tail depend on the length).
    unsafe { f32::vec_reduce_sum(d.as_ptr(), &mut sum, tk) };
    for d in d.iter_mut() {
        *d /= sum;
    }
}

/// Attention's `softmax(where(mask, scores · scale, −∞))` over the last axis in one parallel
/// pass: candle runs the scaling, the masking and the softmax as three passes over the
/// `[B, H, T, Tk]` scores. Each step is candle's own arithmetic (its affine `v · scale + 0`, and
/// softmax_last_dim's max, `exp(s − max)`, sum and division with the same reductions).
struct MaskedSoftmax {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax-f32"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        ls: &Layout,
        m: &CpuStorage,
        lm: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(s), CpuStorage::U8(m)) = (s, m) else {
            candle_core::bail!("masked-softmax-f32 takes f32 scores and a u8 mask");
        };
        let (s, m) = (elements(s, ls, self.name())?, elements(m, lm, self.name())?);
        let (b, h, t, tk) = ls.shape().dims4()?;
        if lm.shape().dims4()? != (b, 1, t, tk) || tk == 0 {
            candle_core::bail!("masked-softmax-f32: mask {:?} for scores {:?}", lm.shape(), ls.shape());
        }
        let scale = self.scale;
        let mut dst: Vec<f32> = Vec::with_capacity(s.len());
        let row = |(r, (d, s)): (usize, (&mut [std::mem::MaybeUninit<f32>], &[f32]))| {
            let (bi, i) = (r / (h * t), r % t);
            for (d, &v) in d.iter_mut().zip(s) {
                d.write(v);
            }
            // SAFETY: every element of the row was written just above.
            let d = unsafe { &mut *(d as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            softmax_row(d, &m[(bi * t + i) * tk..][..tk], scale);
        };
        let spare = &mut dst.spare_capacity_mut()[..s.len()];
        if parallel() {
            spare.par_chunks_mut(tk).zip(s.par_chunks(tk)).enumerate().for_each(row);
        } else {
            spare.chunks_mut(tk).zip(s.chunks(tk)).enumerate().for_each(row);
        }
        // SAFETY: the rows above cover all s.len() elements, each written.
        unsafe { dst.set_len(s.len()) };
        Ok((CpuStorage::F32(dst), ls.shape().clone()))
    }
}

/// `softmax(where(mask, scores · scale, −∞))` over the last axis, for scores `[B, H, T, Tk]` and
/// a mask `[B, 1, T, Tk]` (1 = may attend); `None` where the kernel does not apply (the caller
/// then runs candle's ops).
pub(crate) fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let (b, _, t, tk) = scores.dims4()?;
    if !applies(&[scores]) {
        // On a GPU, one CUDA kernel.
        return crate::cuda_kernels::masked_softmax(scores, mask, scale);
    }
    if !(mask.dtype() == DType::U8 && mask.dims() == [b, 1, t, tk] && tk > 0) {
        return Ok(None);
    }
    let op = MaskedSoftmax { scale: scale as f32 };
    Ok(Some(scores.contiguous()?.apply_op2_no_bwd(&mask.contiguous()?, &op)?))
}

/// Query positions per block of [`CausalAttention`] (times the heads sharing a kv head): small
/// enough that a causal block skips most of the keys it cannot see, large enough for gemm.
const ATTENTION_ROWS: usize = 32;

/// Scores, masked softmax and `pattern × values` for one layer, block by block: a block is a
/// range of query positions of the heads sharing one kv head, and it computes only the keys up
/// to the last one any of its rows may see. Under a causal mask that skips about half of the
/// `q·kᵀ` and `p·v` products, and the `[B, H, T, Tk]` score tensor is never formed (7–11 %
/// faster scoring at 512 tokens on two cores). Every number is still candle's: a score is the
/// same dot product over the head dimension, the softmax is [`softmax_row`] over the whole row,
/// and `p·v` sums the same products in the same order, less trailing terms whose weight is
/// exactly 0. (gemm computes each output element as one fused multiply-add chain over the inner
/// dimension, in one pass up to 512 and beyond that in passes split by the inner dimension — so
/// past 512 keys `p·v` keeps every key — except for tiny products, which it hands to other
/// kernels with other summation orders; blocks are kept out of those cases.)
struct CausalAttention {
    /// `[B, T, Tk]`: 1 where a query may attend to a key.
    mask: Vec<u8>,
    t: usize,
    scale: f32,
}

/// gemm switches to a horizontal kernel (another summation order) for products of at most this
/// many outputs whose left rows and right columns are contiguous, as `q·kᵀ`'s are.
const GEMM_SMALL: usize = 16 * 16;

/// Keys above this may take more than one pass of gemm's inner loop, split by the inner
/// dimension: beyond it a shortened `p·v` would sum in another order, so `p·v` keeps every key.
const GEMM_ONE_PASS: usize = 512;

/// For products with at most this many rows and columns gemm picks its inner-loop split another
/// way, so a long `p·v` (more than [`GEMM_ONE_PASS`] keys) of a block must stay above it when
/// the whole product did.
const GEMM_SMALL_SIDE: usize = 64;

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention-f32"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (q, k, v) else {
            candle_core::bail!("causal-attention-f32 takes f32 tensors");
        };
        let (q, k, v) = (elements(q, lq, self.name())?, elements(k, lk, self.name())?, elements(v, lv, self.name())?);
        let (b, g, rows, hd) = lq.shape().dims4()?;
        let (_, _, tk, _) = lk.shape().dims4()?;
        let t = self.t;
        if lk.shape() != lv.shape() || lk.shape().dims4()? != (b, g, tk, hd) || rows % t != 0 {
            candle_core::bail!("causal-attention-f32: q {:?}, k {:?}, v {:?}", lq.shape(), lk.shape(), lv.shape());
        }
        let rep = rows / t;
        // Per query row, one past its last visible key (0: it sees none).
        let visible: Vec<usize> =
            self.mask.chunks(tk).map(|m| m.iter().rposition(|&keep| keep != 0).map_or(0, |i| i + 1)).collect();
        // Row blocks of one head. A last block too small for gemm's general kernel (one row, or
        // at most GEMM_SMALL scores) joins the one before; `causal_attention` only comes here
        // when one block of all T rows is large enough.
        let long = tk > GEMM_ONE_PASS;
        let keep_side = long && hd <= GEMM_SMALL_SIDE;
        let per = if keep_side { ATTENTION_ROWS.max(GEMM_SMALL_SIDE / rep + 1) } else { ATTENTION_ROWS };
        let mut bounds: Vec<(usize, usize)> = (0..t).step_by(per).map(|s| (s, (s + per).min(t))).collect();
        if let [.., before, (s, e)] = bounds[..] {
            let m = rep * (e - s);
            if m == 1 || m * tk <= GEMM_SMALL || (keep_side && m <= GEMM_SMALL_SIDE) {
                bounds.pop();
                let n = bounds.len();
                bounds[n - 1] = (before.0, e);
            }
        }
        let nb = bounds.len();
        let blocks: Vec<(usize, usize)> = (0..b * g * nb).map(|x| (x / nb, x % nb)).collect();
        let scale = self.scale;
        // One block: rows [t0, t1) of the `rep` heads of kv group `bg`, stacked (m = rep · n rows).
        let one = |&(bg, i): &(usize, usize)| -> Vec<f32> {
            let (t0, t1) = bounds[i];
            let (n, bi) = (t1 - t0, bg / g);
            let m = rep * n;
            let sees = &visible[bi * t + t0..bi * t + t1];
            // A row that sees nothing keeps candle's NaN over the whole row.
            let kmax = if sees.contains(&0) { tk } else { *sees.iter().max().expect("rows") };
            let kmax = kmax.max(GEMM_SMALL / m + 1).max(3).min(tk);
            let mut qb = Vec::with_capacity(m * hd);
            for r in 0..rep {
                qb.extend_from_slice(&q[(bg * rows + r * t + t0) * hd..][..n * hd]);
            }
            let (kb, vb) = (&k[bg * tk * hd..][..tk * hd], &v[bg * tk * hd..][..tk * hd]);
            let mut p = vec![0f32; m * tk];
            // SAFETY: qb is m × hd row-major, kb's first kmax rows are kmax × hd row-major and
            // read as its transpose, p has m rows of tk ≥ kmax; gemm writes without reading.
            unsafe {
                gemm_into(
                    (m, kmax, hd),
                    p.as_mut_ptr(),
                    tk,
                    qb.as_ptr(),
                    hd,
                    kb.as_ptr(),
                    (1, hd),
                    gemm::Parallelism::None,
                )
            };
            for (j, row) in p.chunks_mut(tk).enumerate() {
                softmax_row(row, &self.mask[(bi * t + t0 + j % n) * tk..][..tk], scale);
            }
            let mut out = vec![0f32; m * hd];
            let kpv = if long { tk } else { kmax };
            // SAFETY: p's rows hold kpv ≤ tk weights (row stride tk), vb's first kpv rows are
            // kpv × hd row-major, out is m × hd.
            unsafe {
                gemm_into(
                    (m, hd, kpv),
                    out.as_mut_ptr(),
                    hd,
                    p.as_ptr(),
                    tk,
                    vb.as_ptr(),
                    (hd, 1),
                    gemm::Parallelism::None,
                )
            };
            out
        };
        let outs: Vec<Vec<f32>> =
            if parallel() { blocks.par_iter().map(one).collect() } else { blocks.iter().map(one).collect() };
        let mut z = vec![0f32; b * g * rows * hd];
        for (&(bg, i), out) in blocks.iter().zip(outs) {
            let (t0, t1) = bounds[i];
            let n = t1 - t0;
            for (r, part) in out.chunks(n * hd).enumerate() {
                z[(bg * rows + r * t + t0) * hd..][..n * hd].copy_from_slice(part);
            }
        }
        Ok((CpuStorage::F32(z), lq.shape().clone()))
    }
}

/// `softmax(where(mask, q·kᵀ · scale, −∞)) · v` for grouped queries `[B, KV, rep·T, hd]` (the
/// `rep` heads sharing a kv head stacked along the rows), keys and values `[B, KV, Tk, hd]` and a
/// mask `[B, 1, T, Tk]`; `None` where the kernel does not apply (the caller then computes the
/// scores and the pattern): not f32 on the CPU, or products so small that gemm would take them
/// by another kernel.
pub(crate) fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    t: usize,
    scale: f64,
) -> Result<Option<Tensor>> {
    let (b, _, rows, hd) = q.dims4()?;
    let tk = k.dim(2)?;
    let fits = applies(&[q, k, v])
        && mask.dtype() == DType::U8
        && mask.dims() == [b, 1, t, tk]
        && t >= 2
        && tk >= 3
        && hd >= 2
        && rows % t == 0
        && t * tk > GEMM_SMALL
        // A long p·v must run in gemm's general split, as the whole product did.
        && (tk <= GEMM_ONE_PASS || hd > GEMM_SMALL_SIDE || rows > GEMM_SMALL_SIDE);
    if !fits {
        return Ok(None);
    }
    let mask = mask.flatten_all()?.to_vec1::<u8>()?;
    let op = CausalAttention { mask, t, scale: scale as f32 };
    Ok(Some(q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::random::Rng::new(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| (3.0 * rng.normal()) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Each kernel gives candle's composed ops' bits, on odd sizes and on a non-contiguous input.
    #[test]
    fn kernels_equal_candles_ops_bit_for_bit() {
        for (m, k, n) in [(1, 7, 5), (37, 64, 129), (300, 96, 200)] {
            let (x, w) = (randn(&[m, k], 1), randn(&[n, k], 2));
            assert_eq!(bits(&linear(&x, &w).unwrap()), bits(&x.matmul(&w.t().unwrap()).unwrap()), "{m}×{k}×{n}");
        }
        let xt = randn(&[64, 40], 3).t().unwrap();
        let w = randn(&[24, 64], 4);
        assert_eq!(bits(&linear(&xt, &w).unwrap()), bits(&xt.matmul(&w.t().unwrap()).unwrap()));

        for (s, m, k, n) in [(1, 3, 5, 7), (6, 40, 16, 33), (4, 512, 64, 128), (3, 512, 128, 64)] {
            let (a, b, bt) = (randn(&[2, s, m, k], 8), randn(&[2, s, k, n], 9), randn(&[2, s, n, k], 10));
            assert_eq!(bits(&matmul(&a, &b).unwrap()), bits(&a.matmul(&b).unwrap()), "{s}×{m}×{k}×{n}");
            let want = a.matmul(&bt.t().unwrap()).unwrap();
            assert_eq!(bits(&matmul_t(&a, &bt).unwrap()), bits(&want), "ᵀ {s}×{m}×{k}×{n}");
        }
        for len in [1usize, 1000, 40_000] {
            let (g, u) = (randn(&[len], 5), randn(&[len], 6));
            let want = (g.silu().unwrap() * &u).unwrap();
            assert_eq!(bits(&silu_mul(&g, &u).unwrap()), bits(&want), "{len}");
        }

        let (b, h, t, tk) = (3, 4, 9, 13);
        let scores = randn(&[b, h, t, tk], 7);
        // A causal mask with padded keys, and one row that keeps no key (candle's NaN row).
        let mut mask: Vec<u8> =
            (0..b * t * tk).map(|i| u8::from((i % tk) <= (i / tk) % t + 4 && (i % 5) != 3)).collect();
        mask[tk..2 * tk].fill(0);
        let mask = Tensor::from_vec(mask, (b, 1, t, tk), &Device::Cpu).unwrap();
        let scale = 1.0 / 8f64.sqrt();
        let fused = masked_softmax(&scores, &mask, scale).unwrap().expect("applies to f32 on the cpu");
        let shape = scores.shape().clone();
        let neg = Tensor::new(f32::NEG_INFINITY, &Device::Cpu).unwrap().broadcast_as(&shape).unwrap();
        let masked = mask.broadcast_as(&shape).unwrap().where_cond(&(&scores * scale).unwrap(), &neg).unwrap();
        assert_eq!(bits(&fused), bits(&candle_nn::ops::softmax_last_dim(&masked).unwrap()));
        // Not f32, or a mask of another shape: the caller's own path.
        assert!(masked_softmax(&scores.to_dtype(DType::F64).unwrap(), &mask, scale).unwrap().is_none());
        assert!(masked_softmax(&scores, &mask.narrow(0, 0, 1).unwrap(), scale).unwrap().is_none());
    }

    /// The blocked causal attention gives the composed path's bits (scores, masked softmax,
    /// pattern × values) for causal, padded, windowed and cached-prefix masks, odd lengths
    /// (blocks of one row, small last blocks) and grouped queries.
    #[test]
    fn causal_attention_equals_the_composed_path_bit_for_bit() {
        // (b, kv groups, rep, t, past, hd)
        let shapes = [
            (1, 1, 1, 20, 0, 16),
            (2, 2, 4, 33, 0, 16),
            (1, 2, 2, 34, 0, 64),
            (2, 1, 3, 65, 7, 32),
            (1, 2, 4, 128, 0, 64),
            (1, 1, 2, 97, 200, 64),
            (3, 1, 1, 300, 0, 8),
            // Beyond 512 keys: p·v over every key, blocks of more than 64 stacked rows.
            (1, 1, 1, 600, 0, 16),
            (2, 2, 4, 70, 700, 64),
            (1, 1, 2, 530, 0, 128),
        ];
        for (n, &(b, g, rep, t, past, hd)) in shapes.iter().enumerate() {
            let tk = t + past;
            let (q, k, v) = (
                randn(&[b, g, rep * t, hd], 20 + n as u64),
                randn(&[b, g, tk, hd], 40 + n as u64),
                randn(&[b, g, tk, hd], 60 + n as u64),
            );
            let masks: [&dyn Fn(usize, usize, usize) -> bool; 4] = [
                &|_, i, j| j <= i + past,
                // Left padding in the second sequence: its first 5 keys are padding.
                &|bi, i, j| j <= i + past && !(bi == 1 && j < 5),
                // Right padding: the first sequence's last 3 positions are padding.
                &|bi, i, j| j <= i + past && !(bi == 0 && j + 3 >= tk),
                // A sliding window of 16 keys.
                &|_, i, j| j <= i + past && i + past < j + 16,
            ];
            for (mi, keep) in masks.iter().enumerate() {
                let mask: Vec<u8> = (0..b * t * tk).map(|x| u8::from(keep(x / (t * tk), x / tk % t, x % tk))).collect();
                let mask = Tensor::from_vec(mask, (b, 1, t, tk), &Device::Cpu).unwrap();
                let scale = 1.0 / (hd as f64).sqrt();
                let got = causal_attention(&q, &k, &v, &mask, t, scale).unwrap().expect("applies");
                let raw = matmul_t(&q, &k).unwrap().reshape((b, g * rep, t, tk)).unwrap();
                let p = masked_softmax(&raw, &mask, scale).unwrap().unwrap();
                let want = matmul(&p.reshape((b, g, rep * t, tk)).unwrap(), &v).unwrap();
                assert_eq!(bits(&got), bits(&want), "shape {n}, mask {mi}");
            }
        }
        // Too small for gemm's general kernel, or a long p·v that gemm would split its own way
        // for few rows: the caller's path.
        let mask = |t: usize, tk: usize| Tensor::ones((1, 1, t, tk), DType::U8, &Device::Cpu).unwrap();
        let (q, k) = (randn(&[1, 1, 8, 16], 1), randn(&[1, 1, 8, 16], 2));
        assert!(causal_attention(&q, &k, &k, &mask(8, 8), 8, 0.25).unwrap().is_none());
        let (q, k) = (randn(&[1, 1, 40, 8], 1), randn(&[1, 1, 600, 8], 2));
        assert!(causal_attention(&q, &k, &k, &mask(40, 600), 40, 0.25).unwrap().is_none());
    }
}
