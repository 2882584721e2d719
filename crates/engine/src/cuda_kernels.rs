//! Two CUDA kernels (`cuda_kernels.cu`) that replace chains of candle's ops in no-gradient passes
//! on a GPU, where each op is a pass over memory:
//!
//! - **Attention's masked softmax.** candle's ops take five passes over the `[B, H, T, Tk]`
//!   scores (scale, cast to f32, mask, softmax, cast back), each reading and writing every score:
//!   at 8B widths, batch 16 × 256 tokens, about 1.1 GB per layer, by estimate some 0.3 ms on an
//!   H100 against ~2.5 ms of matmuls, growing with the length. The kernel reads a row's scores
//!   and mask and writes its pattern once, in f32 arithmetic, in the scores' dtype.
//! - **The gated MLP's `silu(gate) · up`**: two passes over the MLP's widest activation become one.
//!
//! Both differ from candle's ops by float rounding only: the softmax's sums run in another order,
//! and bf16/f16 values are scaled and multiplied in f32, rounded once, rather than rounded after
//! each op (PyTorch's fused attention also scales in f32). f32 `silu · up` is candle's arithmetic
//! exactly. A NaN or infinite score still makes its row NaN.
//!
//! NVRTC compiles the kernels the first time one is needed (the CUDA build already links
//! libnvrtc). If that fails, one warning says so and candle's ops run instead: the same results,
//! only slower. `REWARD_LENS_CUDA_KERNELS=candle` chooses candle's ops (to time the two against
//! each other, or as an escape hatch).

use candle_core::Tensor;

use crate::error::Result;

/// The softmax kernel's output for scores `[B, H, T, Tk]` (f32, bf16 or f16 on a CUDA device, no
/// gradient) and a u8 mask `[B, 1, T, Tk]`; `None` where it does not apply or is unavailable (the
/// caller then runs candle's ops).
pub(crate) fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        cuda::masked_softmax(scores, mask, scale)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (scores, mask, scale);
        Ok(None)
    }
}

/// `silu(gate) · up` by the kernel, for tensors of one shape and dtype (f32, bf16 or f16) on a
/// CUDA device that no gradient tracks; `None` otherwise.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        cuda::silu_mul(gate, up)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (gate, up);
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::OnceLock;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Shape, Tensor};

    use crate::error::Result;

    const SOURCE: &str = include_str!("cuda_kernels.cu");
    const MODULE: &str = "reward_lens_kernels";

    /// The compiled PTX, or `None` after the one warning that it could not be compiled.
    fn ptx() -> Option<&'static str> {
        static PTX: OnceLock<Option<String>> = OnceLock::new();
        PTX.get_or_init(|| match candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE) {
            Ok(ptx) => Some(ptx.to_src()),
            Err(e) => {
                eprintln!(
                    "warning: reward-lens could not compile its CUDA kernels ({e}); \
                     candle's ops run instead (same results, slower)"
                );
                None
            }
        })
        .as_deref()
    }

    /// Whether the kernels may run: not with `REWARD_LENS_CUDA_KERNELS=candle`, and only once they compiled.
    fn available() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("REWARD_LENS_CUDA_KERNELS").map_or(true, |v| v != "candle")) && ptx().is_some()
    }

    fn supported(t: &Tensor) -> bool {
        t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) && !t.track_op()
    }

    /// The PTX and the kernel's name, `name_{f32,bf16,f16}` for `dtype` (candle's `CudaFunc`,
    /// which `get_or_load_custom_func` returns, has no public path, so callers load it).
    fn kernel(name: &str, dtype: DType) -> candle_core::Result<(&'static str, String)> {
        let suffix = match dtype {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            dt => candle_core::bail!("{name}: {dt:?} tensors"),
        };
        let Some(ptx) = ptx() else { candle_core::bail!("{name}: the CUDA kernels did not compile") };
        Ok((ptx, format!("{name}_{suffix}")))
    }

    fn offsets(l: &Layout, op: &str) -> candle_core::Result<(usize, usize)> {
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{op} takes contiguous tensors")))
    }

    /// A kernel of one of the three float dtypes on two inputs, returning its output.
    trait Launch {
        fn name(&self) -> &'static str;
        fn launch<T: CudaDType + DeviceRepr>(
            &self,
            s: &CudaStorage,
            ls: &Layout,
            other: &CudaStorage,
            lo: &Layout,
        ) -> candle_core::Result<CudaSlice<T>>;
    }

    fn by_dtype<L: Launch>(
        l: &L,
        s: &CudaStorage,
        ls: &Layout,
        other: &CudaStorage,
        lo: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        let slice = match s.dtype() {
            DType::F32 => CudaStorageSlice::F32(l.launch::<f32>(s, ls, other, lo)?),
            DType::BF16 => CudaStorageSlice::BF16(l.launch::<half::bf16>(s, ls, other, lo)?),
            DType::F16 => CudaStorageSlice::F16(l.launch::<half::f16>(s, ls, other, lo)?),
            dt => candle_core::bail!("reward-lens CUDA kernels: {dt:?} tensors"),
        };
        Ok(CudaStorage { slice, device: s.device().clone() })
    }

    /// A [`Launch`] as a candle op (callers only apply it to CUDA tensors).
    struct CudaOp<L>(L);

    impl<L: Launch + Send + Sync> CustomOp2 for CudaOp<L> {
        fn name(&self) -> &'static str {
            self.0.name()
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("{} runs on CUDA devices only", self.0.name())
        }

        fn cuda_fwd(
            &self,
            a: &CudaStorage,
            la: &Layout,
            b: &CudaStorage,
            lb: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            Ok((by_dtype(&self.0, a, la, b, lb)?, la.shape().clone()))
        }
    }

    struct MaskedSoftmax {
        scale: f32,
    }

    impl Launch for MaskedSoftmax {
        fn name(&self) -> &'static str {
            "masked-softmax-cuda"
        }

        fn launch<T: CudaDType + DeviceRepr>(
            &self,
            s: &CudaStorage,
            ls: &Layout,
            m: &CudaStorage,
            lm: &Layout,
        ) -> candle_core::Result<CudaSlice<T>> {
            let (b, h, t, tk) = ls.shape().dims4()?;
            if lm.shape().dims4()? != (b, 1, t, tk) {
                candle_core::bail!("masked-softmax-cuda: mask {:?} for scores {:?}", lm.shape(), ls.shape());
            }
            let ((s0, s1), (m0, m1)) = (offsets(ls, "masked-softmax-cuda")?, offsets(lm, "masked-softmax-cuda")?);
            let dev = s.device();
            let (ptx, name) = kernel("masked_softmax", s.dtype())?;
            let func = dev.get_or_load_custom_func(&name, MODULE, ptx)?;
            let src = s.as_cuda_slice::<T>()?.slice(s0..s1);
            let mask = m.as_cuda_slice::<u8>()?.slice(m0..m1);
            // SAFETY: the kernel writes every element (each row in full).
            let dst = unsafe { dev.alloc::<T>(s1 - s0)? };
            let (heads, t32, tk32) = (h as i32, t as i32, tk as i32);
            // One block per row; up to 256 threads (a multiple of 32) stride along it.
            let threads = (tk.div_ceil(32) * 32).min(256) as u32;
            let cfg =
                LaunchConfig { grid_dim: ((b * h * t) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
            let mut builder = func.builder();
            builder.arg(&src);
            builder.arg(&mask);
            builder.arg(&dst);
            builder.arg(&heads);
            builder.arg(&t32);
            builder.arg(&tk32);
            builder.arg(&self.scale);
            // SAFETY: the arguments match the kernel's signature; the shapes were checked above.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(dst)
        }
    }

    struct SiluMul;

    impl Launch for SiluMul {
        fn name(&self) -> &'static str {
            "silu-mul-cuda"
        }

        fn launch<T: CudaDType + DeviceRepr>(
            &self,
            g: &CudaStorage,
            lg: &Layout,
            u: &CudaStorage,
            lu: &Layout,
        ) -> candle_core::Result<CudaSlice<T>> {
            if lg.shape() != lu.shape() || g.dtype() != u.dtype() {
                candle_core::bail!("silu-mul-cuda: gate {:?} and up {:?} differ", lg.shape(), lu.shape());
            }
            let ((g0, g1), (u0, u1)) = (offsets(lg, "silu-mul-cuda")?, offsets(lu, "silu-mul-cuda")?);
            let dev = g.device();
            let (ptx, name) = kernel("silu_mul", g.dtype())?;
            let func = dev.get_or_load_custom_func(&name, MODULE, ptx)?;
            let (gate, up) = (g.as_cuda_slice::<T>()?.slice(g0..g1), u.as_cuda_slice::<T>()?.slice(u0..u1));
            let n = g1 - g0;
            // SAFETY: the grid-stride loop writes every element.
            let dst = unsafe { dev.alloc::<T>(n)? };
            let n64 = n as u64;
            let blocks = n.div_ceil(256).clamp(1, 1 << 20) as u32;
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let mut builder = func.builder();
            builder.arg(&gate);
            builder.arg(&up);
            builder.arg(&dst);
            builder.arg(&n64);
            // SAFETY: the arguments match the kernel's signature; the shapes were checked above.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(dst)
        }
    }

    pub(super) fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Option<Tensor>> {
        let Ok((b, h, t, tk)) = scores.dims4() else { return Ok(None) };
        let applies = supported(scores)
            && mask.dtype() == DType::U8
            && mask.dims() == [b, 1, t, tk]
            && tk > 0
            // The grid holds one block per row.
            && b * h * t <= i32::MAX as usize;
        if !applies || !available() {
            return Ok(None);
        }
        let op = CudaOp(MaskedSoftmax { scale: scale as f32 });
        Ok(Some(scores.contiguous()?.apply_op2_no_bwd(&mask.contiguous()?, &op)?))
    }

    pub(super) fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
        let applies = supported(gate) && supported(up) && gate.shape() == up.shape() && gate.dtype() == up.dtype();
        if !applies || !available() {
            return Ok(None);
        }
        Ok(Some(gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &CudaOp(SiluMul))?))
    }
}
