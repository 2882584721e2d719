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
