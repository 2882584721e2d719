//! GPU checks: the same commands on `--device cuda` and on `--device cpu` must give the same
//! numbers (f32: scores within 1e-4, every instrument's output within a float-rounding tolerance).
//!
//! They run only with `REWARD_LENS_CUDA_TESTS=1` (else each test says it skipped). The binary under
//! test is `REWARD_LENS_BIN` when set — a CUDA build made by `scripts/build-cuda.sh`, run on a GPU
//! machine by `scripts/gpu-check.sh` — or this build's own. `REWARD_LENS_CUDA_DEVICE` changes the
//! device compared against the CPU (default `cuda`); `cpu` checks this harness on a machine
//! without a GPU. A test binary carried to another machine finds the repository through
//! `REWARD_LENS_REPO` and writes under `REWARD_LENS_TEST_TMP` (both default to this build's paths).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn enabled(test: &str) -> bool {
    let on = std::env::var("REWARD_LENS_CUDA_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("{test}: skipped (set REWARD_LENS_CUDA_TESTS=1 on a machine with a GPU and a CUDA build)");
    }
    on
}

fn gpu() -> String {
    std::env::var("REWARD_LENS_CUDA_DEVICE").unwrap_or_else(|_| "cuda".into())
}

fn exe() -> Command {
    let mut c = match std::env::var_os("REWARD_LENS_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_reward-lens")),
    };
    c.env("REWARD_LENS_CACHE", tmp_root().join("cache"));
    c
}

fn tmp_root() -> PathBuf {
    std::env::var_os("REWARD_LENS_TEST_TMP")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cuda-tests"), PathBuf::from)
}

/// An empty scratch directory.
fn tmp(name: &str) -> PathBuf {
    let d = tmp_root().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
}

fn fixtures() -> PathBuf {
    std::env::var_os("REWARD_LENS_REPO")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."), PathBuf::from)
        .join("tests/fixtures")
}

fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn pairs() -> PathBuf {
    fixtures().join("pairs.jsonl")
}

/// Runs `args` on `device`, writing `--out` into `dir/<device>-<file>`; returns that path.
fn run_on(device: &str, dir: &Path, file: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(format!("{}-{file}", device.replace(':', "")));
    let mut c = exe();
    c.args(args).args(["--device", device, "--out"]).arg(&out);
    let o = c.output().unwrap_or_else(|e| panic!("cannot run the binary: {e}"));
    assert!(o.status.success(), "`{}` on {device} failed:\n{}", args.join(" "), String::from_utf8_lossy(&o.stderr));
    out
}

fn read(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    match serde_json::from_str(&text) {
        Ok(v) => v,
        // JSONL: one value per line.
        Err(_) => Value::Array(text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()),
    }
}

/// Fields that differ between runs for reasons other than the numbers (clocks, device names).
fn ignored(key: &str) -> bool {
    matches!(key, "timings" | "seconds" | "total_seconds" | "created" | "device" | "elapsed")
}

/// Walks both trees, failing on a structural difference or a number outside `|a−b| ≤ atol + rtol·|a|`;
/// returns the largest absolute difference seen.
fn compare(a: &Value, b: &Value, at: &str, atol: f64, rtol: f64) -> f64 {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let d = (x - y).abs();
            assert!(d <= atol + rtol * x.abs(), "{at}: cpu {x} vs gpu {y} (|Δ| {d:.3e})");
            d
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths differ");
            x.iter()
                .zip(y)
                .enumerate()
                .map(|(i, (p, q))| compare(p, q, &format!("{at}[{i}]"), atol, rtol))
                .fold(0.0, f64::max)
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut worst = 0.0f64;
            for (k, v) in x.iter().filter(|(k, _)| !ignored(k)) {
                let w = y.get(k).unwrap_or_else(|| panic!("{at}.{k}: missing on the gpu"));
                worst = worst.max(compare(v, w, &format!("{at}.{k}"), atol, rtol));
            }
            worst
        }
        _ => {
            assert_eq!(a, b, "{at}: differs");
            0.0
        }
    }
}

/// Every fixture architecture scores the same pairs on both devices to 1e-4 (f32).
#[test]
fn scores_match_the_cpu_on_every_architecture() {
    if !enabled("scores_match_the_cpu_on_every_architecture") {
        return;
    }
    let dir = tmp("cuda-scores");
    let p = pairs();
    for arch in ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "armorm"] {
        let m = model(arch);
        let args = ["score", "--dtype", "f32", "--model", m.to_str().unwrap(), "--pairs", p.to_str().unwrap()];
        let cpu = read(&run_on("cpu", &dir, &format!("{arch}.jsonl"), &args));
        let gpu = read(&run_on(&gpu(), &dir, &format!("{arch}.jsonl"), &args));
        let worst = compare(&cpu, &gpu, arch, 1e-4, 0.0);
        eprintln!("{arch}: max |Δ| {worst:.2e} over {} pairs", cpu.as_array().map_or(0, Vec::len));
    }
}

/// On the GPU attention forms its scores as tensors, so the budget on their bytes splits queries
/// into blocks there: blocks of one query row give the scores one block gives, and both the CPU's
/// (f32, left padding, every architecture; bf16 against its own whole-block run).
#[test]
fn attention_query_blocks_match_one_block_on_the_gpu() {
    use reward_lens_engine::{DType, LoadOptions, PaddingSide, RewardModel, Truncation, DEFAULT_ATTENTION_BUDGET};
    if !enabled("attention_query_blocks_match_one_block_on_the_gpu") {
        return;
    }
    let device = reward_lens_engine::runtime::parse_device(&gpu()).unwrap();
    let pairs: Vec<Value> = read(&pairs()).as_array().unwrap().clone();
    for arch in ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "armorm"] {
        let cpu = RewardModel::load(&model(arch), &LoadOptions::default()).unwrap();
        let seqs: Vec<Vec<u32>> = pairs[..4]
            .iter()
            .flat_map(|p| {
                let enc = |side: &str| {
                    cpu.encode(p["prompt"].as_str().unwrap(), p[side].as_str().unwrap(), Truncation::Error).unwrap().ids
                };
                [enc("chosen"), enc("rejected")]
            })
            .collect();
        let batch = cpu.batch(&seqs, PaddingSide::Left).unwrap();
        let reference = cpu.score(&batch).unwrap().scores;
        for dtype in [DType::F32, DType::BF16] {
            let mut m = RewardModel::load(&model(arch), &LoadOptions { dtype, device: device.clone() }).unwrap();
            m.set_attention_budget(DEFAULT_ATTENTION_BUDGET);
            let whole = m.score(&batch).unwrap().scores;
            m.set_attention_budget(1);
            let rows = m.score(&batch).unwrap().scores;
            let tol = if dtype == DType::F32 { 1e-4 } else { 2e-2 };
            for (i, ((w, r), c)) in whole.iter().zip(&rows).zip(&reference).enumerate() {
                assert!(
                    (w - r).abs() <= tol * w.abs().max(1.0),
                    "{arch} {dtype:?} row {i}: one block {w}, row blocks {r}"
                );
                if dtype == DType::F32 {
                    assert!((w - c).abs() <= 1e-4, "{arch} row {i}: gpu {w}, cpu {c}");
                }
            }
            eprintln!("{arch} {dtype:?}: row blocks agree with one block on {} sequences", rows.len());
        }
    }
}

/// Attention's masked softmax and `silu · up` run as CUDA kernels (`cuda_kernels.cu`); with
/// `REWARD_LENS_CUDA_KERNELS=candle` as candle's ops. Both agree to float rounding on every
/// architecture, in f32 and in bf16, and the kernels compiled (no fallback warning). In bf16 the
/// kernels round once where candle's ops round after each step, so the two differ by bf16's own
/// noise (about 1 %); an indexing or masking error would move rewards by their whole size.
#[test]
fn the_cuda_kernels_match_candles_ops_on_the_gpu() {
    if !enabled("the_cuda_kernels_match_candles_ops_on_the_gpu") {
        return;
    }
    let dir = tmp("cuda-softmax");
    let p = pairs();
    for arch in ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "armorm"] {
        let m = model(arch);
        for (dtype, atol, rtol) in [("f32", 1e-5, 1e-5), ("bf16", 5e-2, 5e-2)] {
            let run = |composed: bool| {
                let out = dir.join(format!("{arch}-{dtype}-{}.jsonl", if composed { "composed" } else { "kernel" }));
                let mut c = exe();
                if composed {
                    c.env("REWARD_LENS_CUDA_KERNELS", "candle");
                }
                c.args(["score", "--dtype", dtype, "--device", &gpu(), "--model", m.to_str().unwrap()])
                    .args(["--pairs", p.to_str().unwrap(), "--out"])
                    .arg(&out);
                let o = c.output().unwrap_or_else(|e| panic!("cannot run the binary: {e}"));
                let stderr = String::from_utf8_lossy(&o.stderr);
                assert!(o.status.success(), "{arch} {dtype}: score failed:\n{stderr}");
                assert!(!stderr.contains("could not compile"), "{arch} {dtype}: the kernels fell back:\n{stderr}");
                read(&out)
            };
            let worst = compare(&run(true), &run(false), &format!("{arch} {dtype}"), atol, rtol);
            eprintln!("{arch} {dtype}: the kernels against candle's ops, max |Δ| {worst:.2e}");
        }
    }
}

/// Every instrument runs on the GPU and agrees with the CPU to float rounding.
#[test]
fn every_instrument_matches_the_cpu() {
    if !enabled("every_instrument_matches_the_cpu") {
        return;
    }
    let dir = tmp("cuda-instruments");
    let (llama, qwen3, gemma2) = (model("llama"), model("qwen3"), model("gemma2"));
    let (llama, qwen3, gemma2) = (llama.to_str().unwrap(), qwen3.to_str().unwrap(), gemma2.to_str().unwrap());
    let p = pairs();
    let p = p.to_str().unwrap();
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("lens.json", vec!["lens", "--model", llama, "--pairs", p]),
        ("attribute.json", vec!["attribute", "--model", gemma2, "--pairs", p, "--heads"]),
        ("patch.jsonl", vec!["patch", "--model", llama, "--pairs", p]),
        ("patch-heads.jsonl", vec!["patch", "--granularity", "head", "--model", qwen3, "--pairs", p]),
        ("atp.jsonl", vec!["atp", "--model", llama, "--pairs", p]),
        ("path.jsonl", vec!["path-patch", "--model", llama, "--pairs", p, "--sender", "0.0"]),
        ("faithfulness.jsonl", vec!["faithfulness", "--model", llama, "--pairs", p]),
        ("concepts.json", vec!["concepts", "--model", gemma2]),
        ("conflict.json", vec!["conflict", "--model", llama, "--pairs", p]),
        ("compare.json", vec!["compare", "--model", llama, "--model", qwen3, "--pairs", p]),
        ("probe.json", vec!["probe", "--model", llama]),
        ("diagnose.json", vec!["diagnose", "--model", llama, "--truncate-prompt"]),
        ("eval.json", vec!["eval", "--model", llama, "--pairs", p]),
        (
            "cart.json",
            vec![
                "cart",
                "discover",
                "--model",
                llama,
                "--pairs",
                p,
                "--tail-subsets",
                "safety,sycophancy",
                "--permutations",
                "50",
                "--random-sets",
                "3",
                "--bootstrap",
                "50",
            ],
        ),
    ];
    for (file, args) in &runs {
        let cpu = read(&run_on("cpu", &dir, file, args));
        let gpu = read(&run_on(&gpu(), &dir, file, args));
        // Rankings built on near-ties may legitimately reorder; the tolerance covers values only.
        let worst = compare(&cpu, &gpu, file, 1e-3, 1e-3);
        eprintln!("{file}: max |Δ| {worst:.2e}");
    }
    // The audit (every stage, the findings, the report) on the GPU.
    let args = ["audit", "--model", llama, "--pairs", p];
    let cpu = read(&run_on("cpu", &dir, "audit", &args).join("results.json"));
    let gpu = read(&run_on(&gpu(), &dir, "audit", &args).join("results.json"));
    let worst = compare(&cpu, &gpu, "audit", 1e-3, 1e-3);
    eprintln!("audit results.json: max |Δ| {worst:.2e}");
}
