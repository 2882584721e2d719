use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use reward_lens_engine::synth::{LlamaShape, Rng};
use reward_lens_engine::{DType, Device, LoadOptions, MapSource, ModelConfig, PaddingSide, RewardModel, Tensor};

use crate::memory;

#[derive(Args)]
#[command(
    after_help = "Builds a seeded synthetic Llama reward model of the given shape (default: 8 layers, d_model 512, \
8 heads / 2 kv heads, d_mlp 1408, vocab 32000 ≈ 157 MB in f32), measures this machine's f32 matmul rate with the same \
kernels, then times batched scoring at --seq-len tokens and reports tokens/s, achieved GFLOP/s and their fraction of the \
matmul rate. Peak memory is measured in a child `reward-lens score` process loading the model from disk \
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
    /// Instead: time a full sublayer patch sweep (noising) on 20 generated pairs of 40–60 tokens
    /// (default shape then d_mlp 1376), naive vs sweep vs attribution patching. Set
    /// RAYON_NUM_THREADS=1 for one thread.
    #[arg(long)]
    pub patch: bool,
    /// Instead: time TopK SAE training (d_in = --d-model, d_sae 4096, k 32, batch 1024) on
    /// generated sparse data and report activations per second and the FVU reached.
    #[arg(long)]
    pub sae: bool,
    /// Instead: time the tiny CART table of the CLI tests (the `tail` organism, 1 seed, 6 arms,
    /// 160 training pairs, 1 epoch, 2 ensemble members) and its resume, which retrains nothing.
    #[arg(long)]
    pub cart: bool,
}

#[derive(Serialize)]
struct SpeedRow {
    batch: usize,
    seq_len: usize,
    seconds_per_batch: f64,
    tokens_per_s: f64,
    gflops: f64,
    fraction_of_matmul: f64,
}

#[derive(Serialize)]
struct MemRow {
    disk_dtype: String,
    compute_dtype: String,
    weights_mib: f64,
    peak_rss_mib: f64,
    ratio: f64,
}

#[derive(Serialize)]
struct Report {
    shape: String,
    n_params: usize,
    threads: usize,
    matmul_gflops: f64,
    speed: Vec<SpeedRow>,
    memory: Vec<MemRow>,
}

/// Best-of-10 rate of one 1024³ f32 matmul through candle (the kernels the model uses).
fn matmul_rate() -> Result<f64> {
    let n = 1024;
    let mut rng = Rng::new(1);
    let v: Vec<f32> = (0..n * n).map(|_| rng.normal() as f32).collect();
    let a = Tensor::from_vec(v.clone(), (n, n), &Device::Cpu)?;
    let b = Tensor::from_vec(v, (n, n), &Device::Cpu)?.t()?;
    a.matmul(&b)?;
    let mut best = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        c.sum_all()?.to_scalar::<f32>()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// Seconds per pair and forward-equivalents of patching on a generated model.
fn patch_bench(a: &BenchArgs) -> Result<()> {
    use reward_lens_engine::EncodedPair;
    use reward_lens_instruments::patching::{atp, patch, PatchOptions};
    let model = generated_model(a, if a.d_mlp == 1408 { 1376 } else { a.d_mlp })?;
    let mut rng = Rng::new(5);
    let mut tok =
        |n: usize| -> Vec<u32> { (0..n).map(|_| 3 + (rng.next_u64() % (a.vocab as u64 - 3)) as u32).collect() };
    // 20 pairs: a shared 16-token prompt, responses making 40–60 tokens in all.
    let pairs: Vec<EncodedPair> = (0..20)
        .map(|i| {
            let prompt = tok(16);
            let (lc, lr) = (24 + (i * 7) % 21, 24 + (i * 11) % 21);
            let mut c = prompt.clone();
            c.extend(tok(lc));
            let mut r = prompt;
            r.extend(tok(lr));
            EncodedPair::new(c, r, (16, 16))
        })
        .collect();
    let threads = std::env::var("RAYON_NUM_THREADS")
        .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get()).to_string());
    println!("Patch sweep, noising, sublayers: {} layers, d_model {}, {}/{} heads, d_mlp {}; 20 pairs of 40–60 tokens; {threads} thread(s)\n", model.config.n_layers, model.config.d_model, model.config.n_heads, model.config.n_kv_heads, model.config.d_mlp);
    println!("| method | s / pair | forward-equivalents / pair |");
    println!("|---|---|---|");
    let time = |f: &dyn Fn() -> Result<f64>| -> Result<(f64, f64)> {
        f()?; // warm-up
        let mut best = f64::MAX;
        let mut fe = 0.0;
        for _ in 0..a.iters.max(1) {
            let t = Instant::now();
            fe = f()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok((best / pairs.len() as f64, fe))
    };
    let opts = PatchOptions::default();
    let (naive_s, naive_fe) = time(&|| {
        Ok(patch(&model, &pairs, &PatchOptions { naive: true, ..opts.clone() })?.forward_equivalents_per_pair)
    })?;
    println!("| naive (one full forward per patch, the peer's method) | {naive_s:.3} | {naive_fe:.1} |");
    let (sweep_s, sweep_fe) = time(&|| Ok(patch(&model, &pairs, &opts)?.forward_equivalents_per_pair))?;
    println!("| sweep (resume from cached layer inputs, batched) | {sweep_s:.3} | {sweep_fe:.1} |");
    let (atp_s, atp_fe) = time(&|| Ok(atp(&model, &pairs, &opts)?.forward_equivalents_per_pair))?;
    println!("| attribution patching (all components, first order) | {atp_s:.3} | {atp_fe:.1} |");
    println!("\nfloor: 2.0 forward-equivalents per pair (the two clean runs every method needs)");
    println!("sweep speed-up over naive: {:.2}×", naive_s / sweep_s);
    Ok(())
}

/// The benchmark's generated Llama (seeded random weights) with the given MLP width.
fn generated_model(a: &BenchArgs, d_mlp: usize) -> Result<RewardModel> {
    let shape = LlamaShape {
        n_layers: a.layers,
        d_model: a.d_model,
        n_heads: a.heads,
        n_kv_heads: a.kv_heads,
        d_mlp,
        vocab_size: a.vocab,
        max_positions: 2048,
    };
    let config = ModelConfig::from_value(&shape.config_json(), Path::new("(generated config)"))?;
    Ok(RewardModel::from_source(
        config,
        &MapSource { tensors: shape.random_weights(7, &Device::Cpu)?, dtype: DType::F32 },
        &LoadOptions::default(),
    )?)
}

/// Training throughput of a TopK SAE on activations collected from the generated benchmark model.
fn sae_bench(a: &BenchArgs) -> Result<()> {
    use reward_lens_engine::{Hooks, Site};
    use reward_lens_instruments::sae_train::{train, TrainOptions};
    let model = generated_model(a, a.d_mlp)?;
    // 128 generated sequences × 128 tokens: 16,384 activations of the middle layer's output.
    let site = Site::ResidPost(a.layers / 2);
    let mut rng = Rng::new(3);
    let mut parts = Vec::new();
    for _ in 0..16 {
        let seqs: Vec<Vec<u32>> =
            (0..8).map(|_| (0..128).map(|_| 3 + (rng.next_u64() % (a.vocab as u64 - 3)) as u32).collect()).collect();
        let fwd = model.forward(&model.batch(&seqs, PaddingSide::Right)?, &Hooks::cache(&[site.name()]))?;
        let acts = fwd.cache.site(site).ok_or_else(|| anyhow::anyhow!("site {} was not cached", site.name()))?;
        parts.push(acts.flatten_to(1)?);
    }
    let data = Tensor::cat(&parts, 0)?;
    let n = data.dim(0)?;
    let opts = TrainOptions {
        d_sae: 4096,
        k: 32,
        batch_size: 1024,
        epochs: a.iters.max(1),
        lr: 4e-4,
        seed: 1,
        ..Default::default()
    };
    let t = Instant::now();
    let (_, hist) = train(&data, &opts, |m| {
        eprintln!("epoch {}: FVU {:.3}, L0 {:.1}, dead {:.1}%", m.epoch, m.fvu, m.l0, 100.0 * m.dead_fraction)
    })?;
    let secs = t.elapsed().as_secs_f64();
    let threads = std::env::var("RAYON_NUM_THREADS")
        .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get()).to_string());
    println!(
        "TopK SAE training on {n} activations collected at {} of the generated {}-layer d_model {} Llama: d_sae 4096, k 32, batch 1024, {} epochs, {threads} thread(s)",
        site.name(),
        a.layers,
        a.d_model,
        opts.epochs
    );
    println!("| activations / s | FVU after the last epoch | dead latents |");
    println!("|---|---|---|");
    let last = hist.last().expect("epochs ≥ 1");
    println!("| {:.0} | {:.3} | {:.1} % |", (n * opts.epochs) as f64 / secs, last.fvu, 100.0 * last.dead_fraction);
    Ok(())
}

/// Seconds of the tiny CART table, fresh and resumed, in a temporary directory.
fn cart_bench(a: &BenchArgs) -> Result<()> {
    use reward_lens_cart::organism_runs::Scale;
    use reward_lens_cart::table::{run_table, TableOptions};
    let dir = std::env::temp_dir().join(format!("reward-lens-bench-cart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut o = TableOptions::beside(&dir.join("cart_table.json"));
    o.presets = vec!["tail".into()];
    o.seeds = 1;
    o.members = 2;
    o.permutations = 200;
    o.scale = Scale { epochs: Some(1), n_train: Some(160), n_test: Some(60) };
    let start = Instant::now();
    run_table(&o, &mut |_| {})?;
    let fresh = start.elapsed().as_secs_f64();
    o.resume = true;
    let start = Instant::now();
    run_table(&o, &mut |_| {})?;
    let resumed = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    if a.json {
        let j = serde_json::json!({ "cart_table_seconds": fresh, "resume_seconds": resumed, "threads": threads });
        println!("{j}");
    } else {
        println!(
            "tiny CART table (tail, 1 seed, 6 arms, 160 pairs, 1 epoch, RAYON_NUM_THREADS {threads}): {fresh:.1} s; \
             resume {resumed:.2} s"
        );
    }
    Ok(())
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.cart {
        return cart_bench(&a);
    }
    if a.sae {
        return sae_bench(&a);
    }
    if a.patch {
        return patch_bench(&a);
    }
    if a.heads == 0 || a.kv_heads == 0 || !a.heads.is_multiple_of(a.kv_heads) || !a.d_model.is_multiple_of(a.heads) {
        bail!("--heads must divide --d-model and be a multiple of --kv-heads");
    }
    let shape = LlamaShape {
        n_layers: a.layers,
        d_model: a.d_model,
        n_heads: a.heads,
        n_kv_heads: a.kv_heads,
        d_mlp: a.d_mlp,
        vocab_size: a.vocab,
        max_positions: a.seq_len.max(2048),
    };
    let cfg_json = shape.config_json();
    let config = ModelConfig::from_value(&cfg_json, Path::new("(generated config)"))?;
    let weights = shape.random_weights(7, &Device::Cpu)?;
    let model = RewardModel::from_source(
        config,
        &MapSource { tensors: weights.clone(), dtype: DType::F32 },
        &LoadOptions::default(),
    )?;
    let matmul = matmul_rate()?;
    eprintln!("matmul rate {matmul:.1} GFLOP/s; timing {} batch sizes…", a.batch_sizes.len());

    let mut rng = Rng::new(11);
    let mut speed = Vec::new();
    for &bs in &a.batch_sizes {
        let seqs: Vec<Vec<u32>> = (0..bs)
            .map(|_| (0..a.seq_len).map(|_| 3 + (rng.next_u64() % (a.vocab as u64 - 3)) as u32).collect())
            .collect();
        let batch = model.batch(&seqs, PaddingSide::Right)?;
        model.score(&batch)?;
        // Best of N: on a shared machine the fastest run is the least disturbed one.
        let mut per = f64::MAX;
        for _ in 0..a.iters.max(1) {
            let t = Instant::now();
            model.score(&batch)?;
            per = per.min(t.elapsed().as_secs_f64());
        }
        let flops = shape.flops_per_sequence(a.seq_len) * bs as f64;
        speed.push(SpeedRow {
            batch: bs,
            seq_len: a.seq_len,
            seconds_per_batch: per,
            tokens_per_s: (bs * a.seq_len) as f64 / per,
            gflops: flops / per / 1e9,
            fraction_of_matmul: flops / per / 1e9 / matmul,
        });
    }

    // The machine rate is the better of two measurements around the model timings, so a noisy
    // moment during one of them cannot flatter the ratio.
    let after = matmul_rate()?;
    let matmul = matmul.max(after);
    for r in &mut speed {
        r.fraction_of_matmul = r.gflops / matmul;
    }
    let memory = if a.no_memory { Vec::new() } else { measure_memory(&weights, &cfg_json)? };
    let report = Report {
        shape: format!(
            "{} layers, d_model {}, {} heads / {} kv heads, d_mlp {}, vocab {}",
            a.layers, a.d_model, a.heads, a.kv_heads, a.d_mlp, a.vocab
        ),
        n_params: model.n_params,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        matmul_gflops: matmul,
        speed,
        memory,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "Synthetic Llama: {} ({:.1} M parameters), {} threads",
        report.shape,
        report.n_params as f64 / 1e6,
        report.threads
    );
    println!("f32 matmul rate (candle, 1024³): {:.1} GFLOP/s\n", report.matmul_gflops);
    println!("| batch × tokens | s / batch | tokens/s | GFLOP/s | of matmul rate |");
    println!("|---|---|---|---|---|");
    for r in &report.speed {
        println!(
            "| {} × {} | {:.3} | {:.0} | {:.1} | {:.0} % |",
            r.batch,
            r.seq_len,
            r.seconds_per_batch,
            r.tokens_per_s,
            r.gflops,
            100.0 * r.fraction_of_matmul
        );
    }
    if !report.memory.is_empty() {
        println!("\n| on disk → compute | weights (compute dtype) | peak RSS of `score` | ratio |");
        println!("|---|---|---|---|");
        for m in &report.memory {
            println!(
                "| {} → {} | {:.1} MiB | {:.1} MiB | {:.2} × |",
                m.disk_dtype, m.compute_dtype, m.weights_mib, m.peak_rss_mib, m.ratio
            );
        }
    }
    Ok(())
}

/// Saves the model to disk and runs `reward-lens score` on it in child processes, reading each
/// child's peak resident memory from the kernel.
fn measure_memory(weights: &HashMap<String, Tensor>, cfg: &serde_json::Value) -> Result<Vec<MemRow>> {
    let exe = std::env::current_exe()?;
    let tmp = std::env::temp_dir().join(format!("reward-lens-bench-{}", std::process::id()));
    let tokenizer_dir = crate::default_model::dir()?;
    let pairs = tmp.join("pairs.jsonl");
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(&pairs, "{\"prompt\": \"How do I boil an egg?\", \"chosen\": \"Simmer it for nine minutes, then cool it in cold water.\", \"rejected\": \"Eggs are food.\"}\n")?;
    let n_params: usize = weights.values().map(|t| t.elem_count()).sum();
    let mut rows = Vec::new();
    for (disk, compute) in [(DType::F32, DType::F32), (DType::BF16, DType::F32), (DType::BF16, DType::BF16)] {
        let dir = tmp.join(format!("{disk:?}").to_lowercase());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(cfg)?)?;
        for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
            std::fs::copy(tokenizer_dir.join(f), dir.join(f))?;
        }
        let converted: HashMap<String, Tensor> =
            weights.iter().map(|(k, t)| Ok((k.clone(), t.to_dtype(disk)?))).collect::<Result<_>>()?;
        candle_core::safetensors::save(&converted, dir.join("model.safetensors"))?;
        drop(converted);
        let dtype_arg = if compute == DType::F32 { "f32" } else { "bf16" };
        let out = Command::new(&exe)
            .args(["score", "--model"])
            .arg(&dir)
            .args(["--pairs"])
            .arg(&pairs)
            .args(["--out", "/dev/null", "--dtype", dtype_arg])
            .env(memory::REPORT_ENV, "1")
            .output()
            .context("running the child `reward-lens score`")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("child `reward-lens score` on {} failed: {stderr}", dir.display());
        }
        let peak: u64 = stderr
            .lines()
            .find_map(|l| l.strip_prefix(memory::REPORT_TAG))
            .and_then(|v| v.trim().parse().ok())
            .context("the child did not report its peak memory")?;
        let weights_bytes = (n_params * compute.size_in_bytes()) as u64;
        rows.push(MemRow {
            disk_dtype: format!("{disk:?}").to_lowercase(),
            compute_dtype: format!("{compute:?}").to_lowercase(),
            weights_mib: memory::mib(weights_bytes),
            peak_rss_mib: memory::mib(peak),
            ratio: peak as f64 / weights_bytes as f64,
        });
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(rows)
}
