//! The engine's CUDA kernels (`src/cuda_kernels.cu`) run on the CPU: `tests/cuda_kernels/emulate.cpp`
//! compiles them as C++ with each CUDA thread a `std::thread` and checks the attention softmax
//! against a double-precision softmax (f32, bf16, f16; partial warps, rows longer than the block,
//! masks, NaN rows) and `silu(gate) · up` against candle's f32 arithmetic bit for bit and the
//! exact value within one bf16/f16 rounding (grid-stride loops), and bf16 rounding to nearest
//! even. This checks the kernels' logic on machines with no GPU, which is every CI run;
//! `crates/cli/tests/cuda.rs` checks them on a device.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn cuda_kernels_match_exact_arithmetic_on_emulated_threads() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_kernels/emulate.cpp");
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cuda_kernels_emulate");
    let built = Command::new(&cxx).args(["-std=c++17", "-O1", "-pthread", "-o"]).arg(&exe).arg(&src).output();
    let built = match built {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: no C++ compiler `{cxx}` (set CXX) to build {}", src.display());
            return;
        }
        other => other.expect("running the C++ compiler"),
    };
    assert!(built.status.success(), "{cxx} failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let run = Command::new(&exe).output().expect("running the emulation");
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "the emulated kernel failed:\n{text}{}", String::from_utf8_lossy(&run.stderr));
    // silu_mul in 3 dtypes, the softmax on 6 shapes × 3 dtypes and 2 NaN rows, the bf16 rounding
    // and the emulation's f16 conversions: each line names its case and its error.
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 25, "{text}");
}
