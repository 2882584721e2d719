//! Process-wide settings that make the forward pass fast. A library should not change global
//! state behind its users' backs, so this is a function the binary (or a user) calls once.

/// Keeps freed tensor buffers in the heap instead of handing them back to the kernel.
///
/// candle allocates a fresh buffer for every intermediate tensor (several MB each for a batch).
/// glibc serves such sizes with `mmap` and returns them with `munmap` on free, so every
/// operation page-faults in freshly zeroed memory; on the 8-layer benchmark model that costs a
/// third of the forward pass. Raising the mmap and trim thresholds lets glibc reuse the memory.
/// Peak memory is unchanged (the same buffers are live at the peak). No effect off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// A device by name: `cpu`, `cuda` or `cuda:N` (CUDA only in builds with the `cuda` feature).
pub fn parse_device(s: &str) -> crate::Result<candle_core::Device> {
    use crate::EngineError::Invalid;
    if s == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    if let Some(rest) = s.strip_prefix("cuda") {
        let ordinal = match rest.strip_prefix(':') {
            Some(n) => n.parse().map_err(|_| Invalid(format!("device `{s}`: expected cuda:N")))?,
            None if rest.is_empty() => 0,
            None => return Err(Invalid(format!("device `{s}`: expected cpu, cuda or cuda:N"))),
        };
        if !cfg!(feature = "cuda") {
            return Err(Invalid(format!(
                "device `{s}`: this build has no CUDA support (rebuild with --features cuda)"
            )));
        }
        return candle_core::Device::new_cuda(ordinal).map_err(|e| {
            // candle appends a backtrace to driver errors; the first line is the message.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or_default();
            Invalid(format!(
                "device `{s}`: cannot open CUDA device {ordinal}: {first} (needs the NVIDIA driver, 580 or \
                 newer for CUDA 13, and a visible GPU: `nvidia-smi` should list it)"
            ))
        });
    }
    Err(Invalid(format!("device `{s}`: expected cpu, cuda or cuda:N")))
}

/// A compute dtype by name: `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> crate::Result<candle_core::DType> {
    match s {
        "f32" => Ok(candle_core::DType::F32),
        "bf16" => Ok(candle_core::DType::BF16),
        "f16" => Ok(candle_core::DType::F16),
        _ => Err(crate::EngineError::Invalid(format!("dtype `{s}`: expected f32, bf16 or f16"))),
    }
}

/// `cpu`, `cuda:0`, … as the command line spells devices (the inverse of [`parse_device`]).
pub fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// `f32`, `bf16`, … as results name a dtype (the inverse of [`parse_dtype`]).
pub fn dtype_name(dtype: candle_core::DType) -> String {
    format!("{dtype:?}").to_lowercase()
}
