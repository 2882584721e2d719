//! CPU kernels for no-gradient f32 passes that do the same floating-point operations as candle's
//! composed ops, in the same order, so their outputs are bit-identical; they only skip work
//! candle's generic ops do. Any other device, dtype or a tracked input takes candle's path.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
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

/// `x @ wᵀ` for `x` `[m, k]` and `w` `[n, k]`: the gemm call candle's matmul makes, into an
/// uninitialised output. candle zero-fills the output first although gemm overwrites it
/// (`read_dst = false`): a pass over memory as large as the output, ~5 % of a projection whose
/// inner dimension is 512.
struct Gemm;

impl CustomOp2 for Gemm {
    fn name(&self) -> &'static str {
        "gemm-f32"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (x, w) else {
            candle_core::bail!("gemm-f32 takes f32 tensors");
        };
        let (x, w) = (elements(x, lx, self.name())?, elements(w, lw, self.name())?);
        let (m, k) = lx.shape().dims2()?;
        let (n, k2) = lw.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("gemm-f32: inner dimensions {k} and {k2} differ");
        }
        let parallelism = if parallel() {
            gemm::Parallelism::Rayon(candle_core::utils::get_num_threads())
        } else {
            gemm::Parallelism::None
        };
        let mut dst: Vec<f32> = Vec::with_capacity(m * n);
        // SAFETY: x is m × k row-major and w is n × k row-major (so wᵀ has column stride k), both
        // in bounds; dst has room for m × n, gemm writes every element without reading any
        // (read_dst = false), and only then is the length set.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            );
            dst.set_len(m * n);
        }
        Ok((CpuStorage::F32(dst), (m, n).into()))
    }
}

/// `x @ wᵀ` for `x` `[m, k]`, `w` `[n, k]` (the `nn.Linear` layout).
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if applies(&[x, w]) {
        Ok(x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &Gemm)?)
    } else {
        Ok(x.matmul(&w.t()?)?)
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
            for ((d, &g), &u) in d.iter_mut().zip(g).zip(u) {
                d.write((g / (1.0 + (-g).exp())) * u);
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
    } else {
        Ok((gate.silu()? * up)?)
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
        use candle_core::cpu::kernels::VecOps;
        let (CpuStorage::F32(s), CpuStorage::U8(m)) = (s, m) else {
            candle_core::bail!("masked-softmax-f32 takes f32 scores and a u8 mask");
        };
        let (s, m) = (elements(s, ls, self.name())?, elements(m, lm, self.name())?);
        let (b, h, t, tk) = ls.shape().dims4()?;
        if lm.shape().dims4()? != (b, 1, t, tk) || tk == 0 {
            candle_core::bail!("masked-softmax-f32: mask {:?} for scores {:?}", lm.shape(), ls.shape());
        }
        let (scale, add) = (self.scale, 0.0f32);
        let mut dst: Vec<f32> = vec![0.0; s.len()];
        let row = |(r, (d, s)): (usize, (&mut [f32], &[f32]))| {
            let (bi, i) = (r / (h * t), r % t);
            let mask = &m[(bi * t + i) * tk..][..tk];
            for ((d, &v), &keep) in d.iter_mut().zip(s).zip(mask) {
                *d = if keep != 0 { v * scale + add } else { f32::NEG_INFINITY };
            }
            let mut max = f32::NEG_INFINITY;
            // SAFETY: d holds tk > 0 elements.
            unsafe { f32::vec_reduce_max(d.as_ptr(), &mut max, tk) };
            for d in d.iter_mut() {
                *d = (*d - max).exp();
            }
            let mut sum = 0.0f32;
            unsafe { f32::vec_reduce_sum(d.as_ptr(), &mut sum, tk) };
            for d in d.iter_mut() {
                *d /= sum;
            }
        };
        if parallel() {
            dst.par_chunks_mut(tk).zip(s.par_chunks(tk)).enumerate().for_each(row);
        } else {
            dst.chunks_mut(tk).zip(s.chunks(tk)).enumerate().for_each(row);
        }
        Ok((CpuStorage::F32(dst), ls.shape().clone()))
    }
}

/// `softmax(where(mask, scores · scale, −∞))` over the last axis, for scores `[B, H, T, Tk]` and
/// a mask `[B, 1, T, Tk]` (1 = may attend); `None` where the kernel does not apply (the caller
/// then runs candle's ops).
pub(crate) fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let (b, _, t, tk) = scores.dims4()?;
    if !(applies(&[scores]) && mask.dtype() == DType::U8 && mask.dims() == [b, 1, t, tk] && tk > 0) {
        return Ok(None);
    }
    let op = MaskedSoftmax { scale: scale as f32 };
    Ok(Some(scores.contiguous()?.apply_op2_no_bwd(&mask.contiguous()?, &op)?))
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

        for len in [1usize, 1000, 40_000] {
            let (g, u) = (randn(&[len], 5), randn(&[len], 6));
            let want = (g.silu().unwrap() * &u).unwrap();
            assert_eq!(bits(&silu_mul(&g, &u).unwrap()), bits(&want), "{len}");
        }

        let (b, h, t, tk) = (3, 4, 9, 13);
        let scores = randn(&[b, h, t, tk], 7);
        // A causal mask with padded keys; every row keeps at least one key.
        let mask: Vec<u8> = (0..b * t * tk).map(|i| u8::from((i % tk) <= (i / tk) % t + 4 && (i % 5) != 3)).collect();
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
}
