//! Peak resident memory, from the kernel's own accounting.

/// This process's peak resident set (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Set in a child's environment to make it print its peak memory on exit.
pub const REPORT_ENV: &str = "REWARD_LENS_REPORT_PEAK_RSS";
pub const REPORT_TAG: &str = "reward-lens-peak-rss-bytes";
