//! `reward-lens bench`: prints the figures [`reward_lens_engine::bench`] measures; only the
//! peak-memory measurement, which runs this binary as a child, lives here.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use reward_lens_engine::bench;
use reward_lens_engine::synth::LlamaShape;
use reward_lens_engine::{DType, Device, Site};
use reward_lens_instruments::patching::Granularity;

use crate::args::{choice, parse_device, DtypeArg};
use crate::memory;

#[derive(Args)]
#[command(
    after_help = "Builds a seeded synthetic Llama reward model of the given shape (default: 8 layers, d_model 512, \
8 heads / 2 kv heads, d_mlp 1408, vocab 32000 ≈ 157 MB in f32), times batched scoring at --seq-len tokens and reports \
tokens/s, achieved GFLOP/s and their fraction of this machine's f32 matmul rate with the same kernels (the best of \
samples taken before the timings and after every timed run, so a busy moment cannot flatter the fraction). Peak memory is measured in a child `reward-lens score` process loading the model from disk \
(safetensors, f32 and bf16 on disk), as a multiple of the weights' size in the compute dtype."
)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 8)]
    pub layers: usize,
    #[arg(long, default_value_t = 512)]
    pub d_model: usize,
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    #[arg(long, default_value_t = 2)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 1408)]
    pub d_mlp: usize,
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Batch sizes to time (sequences per forward).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch_sizes: Vec<usize>,
    /// Timed repetitions per batch size after one warm-up; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Skip the child-process memory measurement.
    #[arg(long)]
    pub no_memory: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Instead: time a full patch sweep (noising; --patch-granularity) on 20 generated pairs of 40–60 tokens
    /// (default shape then d_mlp 1376), naive vs sweep vs attribution patching, on --device in
    /// --dtype. Set RAYON_NUM_THREADS=1 for one thread.
    #[arg(long)]
    pub patch: bool,
    /// With --patch: what each patch replaces, `sublayer` (attention and MLP outputs) or `head`.
    #[arg(long, value_parser = choice::<Granularity>(&["sublayer", "head"]), default_value = "sublayer")]
    pub patch_granularity: Granularity,
    /// With --patch: how many of the 20 generated pairs to time (fewer for a large model).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub patch_pairs: u16,
    /// Instead: time TopK SAE training (d_in = --d-model, d_sae 4096, k 32, batch 1024) on
    /// generated sparse data and report activations per second and the FVU reached.
    #[arg(long)]
    pub sae: bool,
    /// Instead: time the tiny CART table of the CLI tests (the `tail` organism, 1 seed, 6 arms,
    /// 160 training pairs, 1 epoch, 2 ensemble members) and its resume, which retrains nothing.
    #[arg(long)]
    pub cart: bool,
    /// Instead: time each stage of one forward pass (norm + projections, RoPE, attention scores
    /// and softmax, pattern × values, the MLP's parts, residual adds, head) at the largest
    /// --batch-sizes, waiting for the device at every stage boundary; matmul stages get their
    /// GFLOP/s. Where the time goes, before optimising (any --device and --dtype).
    #[arg(long)]
    pub stages: bool,
    /// Instead: time scoring 64 generated pairs with a RewardBench-like spread of lengths
    /// (log-normal, fixed seed: sequences of 48–512 tokens) at the largest --batch-sizes, with batches taken in
    /// input order and batched by length as every command batches them; reports real tokens/s,
    /// the share of padding and the largest difference between the two orders' rewards (relative to
    /// the largest reward).
    #[arg(long)]
    pub lengths: bool,
    /// Device of the timed model: `cpu`, or `cuda` / `cuda:N` in builds with the `cuda` feature.
    /// The matmul rate is then the GPU's own (cuBLAS, 8192³, in --dtype).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype of the timed model (and of the matmul rate it is compared with).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Instead: write the generated model (bf16 on disk, the example model's tokenizer) to DIR as a
    /// HuggingFace directory, for `scripts/bench_transformers.py` and `scripts/check_transformers.py`.
    #[arg(long, value_name = "DIR")]
    pub save_model: Option<std::path::PathBuf>,
}

/// Seconds per pair and forward-equivalents of patching on a generated model.
fn patch_bench(a: &BenchArgs) -> Result<()> {
    use reward_lens_instruments::patching::{atp, patch, PatchOptions};
    let shape = shape(a, if a.d_mlp == 1408 { 1376 } else { a.d_mlp })?;
    let opts = reward_lens_engine::LoadOptions { dtype: a.dtype.into(), device: parse_device(&a.device)? };
    let model = bench::generated_model_on(&shape, &opts)?;
    let mut pairs = bench::patch_pairs(a.vocab);
    pairs.truncate(a.patch_pairs.into());
    let opts = PatchOptions { granularity: a.patch_granularity, ..Default::default() };
    let mut rows = Vec::new();
    let naive = PatchOptions { naive: true, ..opts.clone() };
    let verified = PatchOptions { verify_top: VERIFY_TOP, ..opts.clone() };
    let verified_label = format!("attribution patching, its {VERIFY_TOP} largest estimates patched exactly");
    for (label, atp_run, o) in [
        ("naive (one full forward per patch, the peer's method)", false, &naive),
        ("sweep (resume from cached layer inputs, batched)", false, &opts),
        ("attribution patching (all components, first order)", true, &opts),
        (verified_label.as_str(), true, &verified),
    ] {
        let (s, fe) = bench::best_of(a.iters, || {
            let r = if atp_run { atp(&model, &pairs, o) } else { patch(&model, &pairs, o) };
            r.map(|r| r.forward_equivalents_per_pair)
        })?;
        rows.push((label, s / pairs.len() as f64, fe));
    }
    let components = match a.patch_granularity {
        Granularity::Head => "heads",
        _ => "sublayers",
    };
    print!("{}", bench::patch_table(&model, components, pairs.len(), &rows, bench::clean_run_cost(&pairs)));
    // What verification buys: how many of each pair's truly largest effects it reports exactly.
    let (exact, checked) = (patch(&model, &pairs, &opts)?, atp(&model, &pairs, &verified)?);
    let found: usize = exact
        .pairs
        .iter()
        .zip(&checked.pairs)
        .map(|(x, v)| {
            let mut by_size: Vec<usize> = (0..x.effects.len()).collect();
            by_size.sort_by(|&i, &j| x.effects[j].abs().total_cmp(&x.effects[i].abs()));
            by_size[..VERIFY_TOP.min(by_size.len())].iter().filter(|k| v.exact.contains(k)).count()
        })
        .sum();
    println!(
        "verification found {found} of the {} largest exact effects ({VERIFY_TOP} per pair); the rest of its \
         effects are first-order estimates",
        VERIFY_TOP * pairs.len()
    );
    Ok(())
}

/// Batches in input order against batches by length, on pairs of spread lengths.
fn lengths_bench(a: &BenchArgs, model: &reward_lens_engine::RewardModel) -> Result<()> {
    let batch = a.batch_sizes.iter().copied().max().context("--batch-sizes is empty")?;
    let pairs = bench::spread_pairs(a.vocab, 64, 512);
    let (rows, diff) = bench::batch_orders(model, &pairs, batch, a.iters)?;
    if a.json {
        // The pairs' lengths, so scripts/bench_transformers.py can time the same batches.
        let sequences: Vec<[usize; 2]> = pairs.iter().map(|p| [p.chosen.len(), p.rejected.len()]).collect();
        println!(
            "{}",
            serde_json::json!({ "batch": batch, "pairs": pairs.len(), "sequences": sequences, "rows": rows, "max_rel_diff": diff })
        );
        return Ok(());
    }
    print!("{}", bench::orders_table(&pairs, batch, &rows, diff));
    Ok(())
}

/// Components per pair the verified attribution-patching row patches exactly.
const VERIFY_TOP: usize = 4;

/// Training throughput of a TopK SAE on activations collected from the generated benchmark model.
fn sae_bench(a: &BenchArgs) -> Result<()> {
    use reward_lens_instruments::sae_train::{bench, bench_options};
    let model = generated(a, a.d_mlp)?;
    let t = bench(&model, Site::ResidPost(a.layers / 2), a.iters, |m| eprintln!("epoch {}: {}", m.epoch, m.summary()))?;
    print!("{}", t.markdown(&bench_options(a.iters)));
    Ok(())
}

fn shape(a: &BenchArgs, d_mlp: usize) -> Result<LlamaShape> {
    let shape = LlamaShape::new(a.layers, a.d_model, a.heads, a.kv_heads, d_mlp, a.vocab);
    shape.check().map_err(|_| anyhow!("--heads must divide --d-model and be a multiple of --kv-heads"))?;
    Ok(shape)
}

fn generated(a: &BenchArgs, d_mlp: usize) -> Result<reward_lens_engine::RewardModel> {
    Ok(bench::generated_model(&shape(a, d_mlp)?)?)
}

/// Seconds of the tiny CART table, fresh and resumed, in a temporary directory.
fn cart_bench(a: &BenchArgs) -> Result<()> {
    use reward_lens_cart::organism_runs::Scale;
    use reward_lens_cart::table::{run_table, TableOptions};
    let dir = std::env::temp_dir().join(format!("reward-lens-bench-cart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut o = TableOptions::beside(&dir.join("cart_table.json"));
    (o.presets, o.seeds, o.members, o.permutations) = (vec!["tail".into()], 1, 2, 200);
    o.scale = Scale { epochs: Some(1), n_train: Some(160), n_test: Some(60) };
    let (fresh, _) = bench::timed(|| run_table(&o, &mut |_| {}))?;
    o.resume = true;
    let (resumed, _) = bench::timed(|| run_table(&o, &mut |_| {}))?;
    let _ = std::fs::remove_dir_all(&dir);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let j = serde_json::json!({ "cart_table_seconds": fresh, "resume_seconds": resumed, "threads": &threads });
    match a.json {
        true => println!("{j}"),
        false => println!("tiny CART table (tail, 1 seed, 6 arms, 160 pairs, 1 epoch, RAYON_NUM_THREADS {threads}): {fresh:.1} s; resume {resumed:.2} s"),
    }
    Ok(())
}

pub fn run(a: BenchArgs) -> Result<()> {
    // A zero would time nothing (or only the warm-up) and still print a rate.
    if a.iters == 0 || a.seq_len == 0 || a.batch_sizes.contains(&0) {
        bail!("--iters, --seq-len and every --batch-sizes value must be at least 1");
    }
    match (a.cart, a.sae, a.patch) {
        (true, ..) => return cart_bench(&a),
        (_, true, _) => return sae_bench(&a),
        (.., true) => return patch_bench(&a),
        _ => {}
    }
    let mut shape = shape(&a, a.d_mlp)?;
    shape.max_positions = a.seq_len.max(2048);
    let weights = shape.random_weights(bench::WEIGHT_SEED, &Device::Cpu)?;
    if let Some(dir) = &a.save_model {
        let tokenizer = reward_lens_report::example_model::dir()?;
        bench::save_generated(dir, &shape.config_json(), &weights, DType::BF16, &tokenizer)?;
        eprintln!("wrote {} ({}, bf16 on disk)", dir.display(), bench::describe(&shape));
        return Ok(());
    }
    let device = parse_device(&a.device)?;
    let opts = reward_lens_engine::LoadOptions { dtype: a.dtype.into(), device: device.clone() };
    let model = bench::model_from_weights_on(&shape, weights.clone(), &opts)?;
    if a.lengths {
        return lengths_bench(&a, &model);
    }
    if a.stages {
        let batch = a.batch_sizes.iter().copied().max().context("--batch-sizes is empty")?;
        let r = reward_lens_engine::profile::stage_times(&model, &shape, batch, a.seq_len, a.iters)?;
        match a.json {
            true => println!("{}", serde_json::to_string_pretty(&r)?),
            false => print!("{}", r.markdown()),
        }
        return Ok(());
    }
    let mut report = bench::speed(&model, &shape, a.seq_len, &a.batch_sizes, a.iters, |m| {
        eprintln!("matmul rate {m:.1} GFLOP/s; timing {} batch sizes…", a.batch_sizes.len())
    })?;
    // Peak memory is a child process's RSS: a CPU figure. On a GPU, scripts/gpu-check.sh samples
    // the GPU's own memory counter instead.
    if !a.no_memory && device.is_cpu() {
        let tmp = std::env::temp_dir().join(format!("reward-lens-bench-{}", std::process::id()));
        report.memory = bench::memory_rows(
            &tmp,
            &shape.config_json(),
            &weights,
            &reward_lens_report::example_model::dir()?,
            child_peak,
        )?;
    }
    match a.json {
        true => println!("{}", serde_json::to_string_pretty(&report)?),
        false => print!("{}", report.markdown()),
    }
    Ok(())
}

/// Peak resident memory of a child `reward-lens score` on `model`, as the kernel counted it.
fn child_peak(model: &Path, pairs: &Path, compute: DType) -> Result<u64> {
    let out = Command::new(std::env::current_exe()?)
        .args([OsStr::new("score"), "--model".as_ref(), model.as_os_str(), "--pairs".as_ref(), pairs.as_os_str()])
        .args(["--out", "/dev/null", "--dtype", if compute == DType::F32 { "f32" } else { "bf16" }])
        .env(memory::REPORT_ENV, "1")
        .output()
        .context("running the child `reward-lens score`")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("child `reward-lens score` on {} failed: {stderr}", model.display());
    }
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(memory::REPORT_TAG))
        .and_then(|v| v.trim().parse().ok())
        .context("the child did not report its peak memory")
}
