//! The engine-level figures of `reward-lens bench`: this machine's matmul rate, seeded generated
//! models and inputs, batched-scoring throughput and its GFLOP/s, and the tables they print as.
//! Timing is best-of-N: on a shared machine the fastest run is the least disturbed one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::runtime::{device_name, dtype_name};
use crate::synth::LlamaShape;
use crate::{EncodedPair, Hooks, LoadOptions, MapSource, ModelConfig, PaddingSide, RewardModel, Rng, Site};

/// Seed of every generated benchmark model's weights.
pub const WEIGHT_SEED: u64 = 7;

/// Best-of-10 rate, in GFLOP/s, of one n³ f32 matmul through candle (the kernels the model uses).
pub fn matmul_rate(n: usize) -> Result<f64> {
    matmul_rate_on(n, &Device::Cpu, DType::F32)
}

/// Best-of-10 rate, in GFLOP/s, of one n³ matmul in `dtype` on `device` (cuBLAS on a GPU: the
/// kernels the model's linear layers use, so the fraction below compares like with like).
pub fn matmul_rate_on(n: usize, device: &Device, dtype: DType) -> Result<f64> {
    MatmulProbe::new(n, device, dtype)?.best_rate(10)
}

/// Two n × n operands on a device, kept to sample the machine's matmul rate again and again:
/// on a shared machine a neighbour can slow any one short sample, so the bench takes its rate
/// as the best of samples spread over the whole model timing.
pub struct MatmulProbe {
    n: usize,
    a: Tensor,
    b: Tensor,
}

impl MatmulProbe {
    /// Seeded operands (`b` transposed, as a linear layer's weight), with one warm-up product.
    pub fn new(n: usize, device: &Device, dtype: DType) -> Result<Self> {
        let mut rng = Rng::new(1);
        let v: Vec<f32> = (0..n * n).map(|_| rng.normal() as f32).collect();
        let a = Tensor::from_vec(v.clone(), (n, n), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
        let b = Tensor::from_vec(v, (n, n), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?.t()?;
        a.matmul(&b)?;
        device.synchronize()?;
        Ok(Self { n, a, b })
    }

    /// The rate, in GFLOP/s, of the fastest of `reps` (≥ 1) products.
    pub fn best_rate(&self, reps: usize) -> Result<f64> {
        let device = self.a.device();
        let mut best = f64::MAX;
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            let c = self.a.matmul(&self.b)?;
            // A GPU queues work: wait for it. On the CPU the product is done on return.
            device.synchronize()?;
            drop(c);
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(2.0 * (self.n as f64).powi(3) / best / 1e9)
    }
}

/// The threads rayon uses: `RAYON_NUM_THREADS` if set, else the machine's parallelism.
pub fn threads_label() -> String {
    std::env::var("RAYON_NUM_THREADS")
        .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get()).to_string())
}

/// `n` random token ids, never the three specials (pad, bos, eos) below 3.
pub fn random_tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| 3 + (rng.next_u64() % (vocab as u64 - 3)) as u32).collect()
}

/// Seconds of the fastest of `iters` (≥ 1) timed calls after one warm-up, and the last result.
pub fn best_of<T, E>(iters: usize, f: impl FnMut() -> std::result::Result<T, E>) -> std::result::Result<(f64, T), E> {
    best_of_then(iters, f, || Ok(()))
}

/// [`best_of`], calling `after` (untimed) after every timed call.
pub fn best_of_then<T, E>(
    iters: usize,
    mut f: impl FnMut() -> std::result::Result<T, E>,
    mut after: impl FnMut() -> std::result::Result<(), E>,
) -> std::result::Result<(f64, T), E> {
    let mut last = f()?;
    let mut best = f64::MAX;
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        last = f()?;
        best = best.min(t.elapsed().as_secs_f64());
        after()?;
    }
    Ok((best, last))
}

/// "8 layers, d_model 512, 8 heads / 2 kv heads, d_mlp 1408, vocab 32000".
pub fn describe(s: &LlamaShape) -> String {
    format!(
        "{} layers, d_model {}, {} heads / {} kv heads, d_mlp {}, vocab {}",
        s.n_layers, s.d_model, s.n_heads, s.n_kv_heads, s.d_mlp, s.vocab_size
    )
}

/// A model of `shape` over `weights` (f32 on the CPU, e.g. [`LlamaShape::random_weights`]), in
/// `opts`' compute dtype on its device.
pub fn model_from_weights_on(
    shape: &LlamaShape,
    weights: HashMap<String, Tensor>,
    opts: &LoadOptions,
) -> Result<RewardModel> {
    let config = ModelConfig::from_value(&shape.config_json(), Path::new("(generated config)"))?;
    RewardModel::from_source(config, &MapSource { tensors: weights, dtype: DType::F32 }, opts)
}

/// The benchmark's generated Llama: `shape` with seeded random weights ([`WEIGHT_SEED`]).
pub fn generated_model(shape: &LlamaShape) -> Result<RewardModel> {
    generated_model_on(shape, &LoadOptions::default())
}

/// [`generated_model`] in `opts`' compute dtype on its device.
pub fn generated_model_on(shape: &LlamaShape, opts: &LoadOptions) -> Result<RewardModel> {
    model_from_weights_on(shape, shape.random_weights(WEIGHT_SEED, &Device::Cpu)?, opts)
}

/// The patch benchmark's 20 pairs: a shared 16-token prompt, responses making 40–60 tokens in all.
pub fn patch_pairs(vocab: usize) -> Vec<EncodedPair> {
    let mut rng = Rng::new(5);
    (0..20)
        .map(|i| {
            let prompt = random_tokens(&mut rng, 16, vocab);
            let (lc, lr) = (24 + (i * 7) % 21, 24 + (i * 11) % 21);
            let mut c = prompt.clone();
            c.extend(random_tokens(&mut rng, lc, vocab));
            let mut r = prompt;
            r.extend(random_tokens(&mut rng, lr, vocab));
            EncodedPair::new(c, r, (16, 16))
        })
        .collect()
}

/// `n` pairs with a RewardBench-like spread of lengths: a log-normal prompt (median 60 tokens)
/// and two log-normal responses (median 120), each sequence capped at `max_len` tokens.
pub fn spread_pairs(vocab: usize, n: usize, max_len: usize) -> Vec<EncodedPair> {
    let mut rng = Rng::new(13);
    let draw =
        |rng: &mut Rng, median: f64, sigma: f64| (median * (sigma * rng.normal()).exp()).round().max(1.0) as usize;
    (0..n)
        .map(|_| {
            let p = draw(&mut rng, 60.0, 1.0).min(max_len / 2);
            let lc = draw(&mut rng, 120.0, 0.8).min(max_len - p);
            let lr = draw(&mut rng, 120.0, 0.8).min(max_len - p);
            let prompt = random_tokens(&mut rng, p, vocab);
            let (c, r) = (random_tokens(&mut rng, lc, vocab), random_tokens(&mut rng, lr, vocab));
            EncodedPair::new([prompt.clone(), c].concat(), [prompt, r].concat(), (p, p))
        })
        .collect()
}

/// Scoring pairs of spread lengths in one batch order.
#[derive(Debug, Clone, Serialize)]
pub struct OrderRow {
    /// `input order` or `by length`.
    pub order: String,
    pub seconds: f64,
    /// Real (unpadded) tokens per second.
    pub tokens_per_s: f64,
    /// Share of the batches' token slots that are padding.
    pub padding: f64,
}

/// Times scoring `pairs` (`batch_size` sequences per pass, right padding) with batches taken in
/// input order, as before batching by length, and as [`RewardModel::score_pairs`] batches them.
/// Returns both rows and the largest difference between the two orders' rewards, relative to the
/// largest reward.
pub fn batch_orders(
    model: &RewardModel,
    pairs: &[EncodedPair],
    batch_size: usize,
    iters: usize,
) -> Result<(Vec<OrderRow>, f64)> {
    let per_batch = (batch_size / 2).max(1);
    let real: usize = pairs.iter().map(|p| p.chosen.len() + p.rejected.len()).sum();
    let slots = |batches: &[Vec<usize>]| -> usize {
        let longer = |i: usize| pairs[i].chosen.len().max(pairs[i].rejected.len());
        batches.iter().map(|b| 2 * b.len() * b.iter().map(|&i| longer(i)).max().unwrap_or(0)).sum()
    };
    let in_order: Vec<Vec<usize>> =
        (0..pairs.len()).collect::<Vec<_>>().chunks(per_batch).map(<[usize]>::to_vec).collect();
    let longer: Vec<usize> = pairs.iter().map(|p| p.chosen.len().max(p.rejected.len())).collect();
    let by_length = crate::batches_by_length(&longer, per_batch);
    let (t_order, before) = best_of(iters, || -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(2 * pairs.len());
        for b in &in_order {
            let seqs: Vec<Vec<u32>> =
                b.iter().flat_map(|&i| [pairs[i].chosen.clone(), pairs[i].rejected.clone()]).collect();
            out.extend(model.score(&model.batch(&seqs, PaddingSide::Right)?)?.scores);
        }
        Ok(out)
    })?;
    let opts = crate::ScoreOptions { batch_size, padding: PaddingSide::Right };
    let (t_length, after) = best_of(iters, || model.score_pairs(pairs, &opts, &mut |_| {}))?;
    // Relative to the largest reward: one near zero would make any rounding look large.
    let scale = before.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE) as f64;
    let diff = after
        .iter()
        .flat_map(|s| [s.chosen, s.rejected])
        .zip(&before)
        .map(|(a, &b)| (a - b).abs() as f64 / scale)
        .fold(0.0, f64::max);
    let row = |order: &str, seconds: f64, batches: &[Vec<usize>]| OrderRow {
        order: order.into(),
        seconds,
        tokens_per_s: real as f64 / seconds,
        padding: 1.0 - real as f64 / slots(batches) as f64,
    };
    Ok((vec![row("input order", t_order, &in_order), row("by length", t_length, &by_length)], diff))
}

/// [`batch_orders`]' rows as `bench --lengths` prints them: a heading, the table, the speed-up.
pub fn orders_table(pairs: &[EncodedPair], batch: usize, rows: &[OrderRow], diff: f64) -> String {
    let lengths = || pairs.iter().flat_map(|p| [p.chosen.len(), p.rejected.len()]);
    let tokens: usize = lengths().sum();
    let mut s = format!(
        "Scoring {} pairs of spread lengths ({tokens} tokens, sequences {}–{}), batch {batch}, {} threads:\n\n",
        pairs.len(),
        lengths().min().unwrap_or(0),
        lengths().max().unwrap_or(0),
        threads_label()
    );
    s += "| batches | s | tokens/s | padding |\n|---|---|---|---|\n";
    for r in rows {
        let _ = writeln!(s, "| {} | {:.2} | {:.0} | {:.0} % |", r.order, r.seconds, r.tokens_per_s, 100.0 * r.padding);
    }
    if let [order, length, ..] = rows {
        let _ = writeln!(
            s,
            "\nby length: {:.2}× input order; rewards agree to {diff:.1e} (relative)",
            order.seconds / length.seconds
        );
    }
    s
}

/// Forward-equivalents per pair of the two clean runs when the second computes only the positions
/// after the prefix it shares with the first (under causal attention the rest is the same).
pub fn clean_run_cost(pairs: &[EncodedPair]) -> f64 {
    let per_pair = |p: &EncodedPair| {
        let shared = p.shared_prefix();
        1.0 + (p.rejected.len() - shared) as f64 / p.rejected.len().max(1) as f64
    };
    pairs.iter().map(per_pair).sum::<f64>() / pairs.len().max(1) as f64
}

/// Activations at `site`, `[batches × per_batch × seq_len, d_model]`, of seeded random sequences.
pub fn site_activations(
    model: &RewardModel,
    site: Site,
    batches: usize,
    per_batch: usize,
    seq_len: usize,
) -> Result<Tensor> {
    let mut rng = Rng::new(3);
    let vocab = model.config.vocab_size;
    let mut parts = Vec::new();
    for _ in 0..batches {
        let seqs: Vec<Vec<u32>> = (0..per_batch).map(|_| random_tokens(&mut rng, seq_len, vocab)).collect();
        let fwd = model.forward(&model.batch(&seqs, PaddingSide::Right)?, &Hooks::cache(&[site.name()]))?;
        let acts = fwd.cache.site(site).ok_or_else(|| EngineError::UnknownSite(site.name()))?;
        parts.push(acts.flatten_to(1)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The patch benchmark's printed table: a heading naming `config`, one row per method
/// `(label, seconds per pair, forward-equivalents per pair)`, the floor (`clean_runs`, from
/// [`clean_run_cost`]), and the speed-up of the second method (the sweep) over the first (naive).
/// `components`: what each patch replaces (`sublayers`, `heads`, …).
pub fn patch_table(
    model: &RewardModel,
    components: &str,
    n_pairs: usize,
    rows: &[(&str, f64, f64)],
    clean_runs: f64,
) -> String {
    let c = &model.config;
    let mut s = format!(
        "Patch sweep, noising, {components}: {} layers, d_model {}, {}/{} heads, d_mlp {}; {n_pairs} pairs of 40–60 tokens; \
         {} {}, {} thread(s)\n\n",
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.d_mlp,
        device_name(&model.device),
        dtype_name(model.dtype),
        threads_label()
    );
    s += "| method | s / pair | forward-equivalents / pair |\n|---|---|---|\n";
    for (label, secs, fe) in rows {
        let _ = writeln!(s, "| {label} | {secs:.3} | {fe:.1} |");
    }
    let _ = writeln!(
        s,
        "\nfloor: {clean_runs:.2} forward-equivalents per pair (the two clean runs every method needs; the second \
         reuses the prompt the first computed)"
    );
    if let [naive, sweep, ..] = rows {
        let _ = writeln!(s, "sweep speed-up over naive: {:.2}×", naive.1 / sweep.1);
    }
    s
}

/// Batched scoring at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedRow {
    pub batch: usize,
    pub seq_len: usize,
    pub seconds_per_batch: f64,
    pub tokens_per_s: f64,
    pub gflops: f64,
    pub fraction_of_matmul: f64,
}

/// Peak memory of scoring a model loaded from disk, against its weights' size.
#[derive(Debug, Clone, Serialize)]
pub struct MemRow {
    pub disk_dtype: String,
    pub compute_dtype: String,
    pub weights_mib: f64,
    pub peak_rss_mib: f64,
    pub ratio: f64,
}

impl MemRow {
    /// The row of `n_params` weights stored as `disk`, computed in `compute`, peaking at `peak` bytes.
    pub fn new(disk: DType, compute: DType, n_params: usize, peak: u64) -> Self {
        let weights = (n_params * compute.size_in_bytes()) as u64;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        MemRow {
            disk_dtype: format!("{disk:?}").to_lowercase(),
            compute_dtype: format!("{compute:?}").to_lowercase(),
            weights_mib: mib(weights),
            peak_rss_mib: mib(peak),
            ratio: peak as f64 / weights as f64,
        }
    }
}

/// Everything `reward-lens bench` reports on a generated model.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    pub shape: String,
    pub n_params: usize,
    pub threads: usize,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The compute dtype of the model and of the matmul rate.
    pub dtype: String,
    /// The side of the square matmul the rate was measured on.
    pub matmul_n: usize,
    pub matmul_gflops: f64,
    pub speed: Vec<SpeedRow>,
    pub memory: Vec<MemRow>,
}

/// Times batched scoring of `model` (of `shape`) at `seq_len` tokens for each batch size.
/// `on_matmul` hears the first matmul rate before the timings start. The machine rate is the best
/// of a sample before the timings and one after every timed run, so a neighbour slowing one
/// sample cannot flatter the ratio: the rate and the model time are both best-of over the same
/// stretch of time.
pub fn speed(
    model: &RewardModel,
    shape: &LlamaShape,
    seq_len: usize,
    batch_sizes: &[usize],
    iters: usize,
    on_matmul: impl FnOnce(f64),
) -> Result<SpeedReport> {
    // The device's own matmul rate in the model's dtype: n = 1024 on the CPU, 8192 on a GPU
    // (which a 1024³ product leaves mostly idle).
    let (device, dtype) = (&model.device, model.dtype);
    let n = if device.is_cpu() { 1024 } else { 8192 };
    let probe = MatmulProbe::new(n, device, dtype)?;
    let mut matmul = probe.best_rate(10)?;
    on_matmul(matmul);
    let mut rng = Rng::new(11);
    let mut speed = Vec::new();
    for &bs in batch_sizes {
        let seqs: Vec<Vec<u32>> = (0..bs).map(|_| random_tokens(&mut rng, seq_len, shape.vocab_size)).collect();
        let batch = model.batch(&seqs, PaddingSide::Right)?;
        let (per, _) = best_of_then(
            iters,
            || model.score(&batch),
            || {
                matmul = matmul.max(probe.best_rate(3)?);
                Ok(())
            },
        )?;
        let gflops = shape.flops_per_sequence(seq_len) * bs as f64 / per / 1e9;
        let tokens_per_s = (bs * seq_len) as f64 / per;
        speed.push(SpeedRow {
            batch: bs,
            seq_len,
            seconds_per_batch: per,
            tokens_per_s,
            gflops,
            fraction_of_matmul: 0.0,
        });
    }
    for r in &mut speed {
        r.fraction_of_matmul = r.gflops / matmul;
    }
    Ok(SpeedReport {
        shape: describe(shape),
        n_params: model.n_params,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        device: device_name(device),
        dtype: dtype_name(dtype),
        matmul_n: n,
        matmul_gflops: matmul,
        speed,
        memory: Vec::new(),
    })
}

impl SpeedReport {
    /// The report as printed: a heading, the speed table and, if measured, the memory table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Synthetic Llama: {} ({:.1} M parameters), {} threads\n",
            self.shape,
            self.n_params as f64 / 1e6,
            self.threads
        );
        s += &format!(
            "{} matmul rate on {} (candle, {n}³): {:.1} GFLOP/s\n\n",
            self.dtype,
            self.device,
            self.matmul_gflops,
            n = self.matmul_n
        );
        s += "| batch × tokens | s / batch | tokens/s | GFLOP/s | of matmul rate |\n|---|---|---|---|---|\n";
        for r in &self.speed {
            let _ = writeln!(
                s,
                "| {} × {} | {:.3} | {:.0} | {:.1} | {:.0} % |",
                r.batch,
                r.seq_len,
                r.seconds_per_batch,
                r.tokens_per_s,
                r.gflops,
                100.0 * r.fraction_of_matmul
            );
        }
        if !self.memory.is_empty() {
            s += "\n| on disk → compute | weights (compute dtype) | peak RSS of `score` | ratio |\n|---|---|---|---|\n";
            for m in &self.memory {
                let _ = writeln!(
                    s,
                    "| {} → {} | {:.1} MiB | {:.1} MiB | {:.2} × |",
                    m.disk_dtype, m.compute_dtype, m.weights_mib, m.peak_rss_mib, m.ratio
                );
            }
        }
        s
    }
}

/// Writes `config` and `weights` converted to `dtype` as a HuggingFace directory's
/// config.json and model.safetensors, with the tokenizer files copied from `tokenizer_dir`.
pub fn save_generated(
    dir: &Path,
    config: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
    dtype: DType,
    tokenizer_dir: &Path,
) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let text = serde_json::to_string_pretty(config).expect("a JSON value serialises");
    std::fs::write(dir.join("config.json"), text).map_err(io(dir))?;
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(tokenizer_dir.join(f), dir.join(f)).map_err(io(&tokenizer_dir.join(f)))?;
    }
    let converted: HashMap<String, Tensor> =
        weights.iter().map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?))).collect::<Result<_>>()?;
    candle_core::safetensors::save(&converted, dir.join("model.safetensors"))?;
    Ok(())
}

/// The (on disk, compute) dtypes whose peak memory the bench measures.
pub const MEMORY_CASES: [(DType, DType); 3] =
    [(DType::F32, DType::F32), (DType::BF16, DType::F32), (DType::BF16, DType::BF16)];

/// Peak memory of scoring the model from disk in each of [`MEMORY_CASES`]: saves it under a
/// temporary directory `tmp` (removed afterwards) with the tokenizer of `tokenizer_dir` and one
/// example pair, and asks `peak(model_dir, pairs_file, compute_dtype)` for the peak bytes of a
/// scoring run (the CLI spawns itself, so the figure is a fresh process's).
pub fn memory_rows<E: From<EngineError>>(
    tmp: &Path,
    config: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
    tokenizer_dir: &Path,
    mut peak: impl FnMut(&Path, &Path, DType) -> std::result::Result<u64, E>,
) -> std::result::Result<Vec<MemRow>, E> {
    let pairs = tmp.join("pairs.jsonl");
    std::fs::create_dir_all(tmp).map_err(|source| EngineError::Io { path: tmp.to_path_buf(), source })?;
    std::fs::write(&pairs, "{\"prompt\": \"How do I boil an egg?\", \"chosen\": \"Simmer it for nine minutes, then cool it in cold water.\", \"rejected\": \"Eggs are food.\"}\n")
        .map_err(|source| EngineError::Io { path: pairs.clone(), source })?;
    let n_params: usize = weights.values().map(|t| t.elem_count()).sum();
    let mut rows = Vec::new();
    for (disk, compute) in MEMORY_CASES {
        let dir = tmp.join(format!("{disk:?}").to_lowercase());
        save_generated(&dir, config, weights, disk, tokenizer_dir)?;
        rows.push(MemRow::new(disk, compute, n_params, peak(&dir, &pairs, compute)?));
    }
    let _ = std::fs::remove_dir_all(tmp);
    Ok(rows)
}

/// Seconds of one call of `f`, and its result.
pub fn timed<T, E>(f: impl FnOnce() -> std::result::Result<T, E>) -> std::result::Result<(f64, T), E> {
    let start = Instant::now();
    let out = f()?;
    Ok((start.elapsed().as_secs_f64(), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> LlamaShape {
        LlamaShape { n_layers: 2, d_model: 16, n_heads: 4, n_kv_heads: 2, d_mlp: 32, vocab_size: 50, max_positions: 64 }
    }

    #[test]
    fn tokens_avoid_specials_and_pairs_have_the_stated_lengths() {
        let mut rng = Rng::new(1);
        let t = random_tokens(&mut rng, 1000, 50);
        assert!(t.iter().all(|&x| (3..50).contains(&x)));
        let pairs = patch_pairs(50);
        assert_eq!(pairs.len(), 20);
        for p in &pairs {
            for s in p.sides() {
                assert!((40..=60).contains(&s.len()), "{}", s.len());
            }
            assert_eq!(p.chosen[..16], p.rejected[..16]);
        }
        assert_eq!(patch_pairs(50)[3].chosen, pairs[3].chosen, "seeded");
    }

    #[test]
    fn batching_by_length_pads_less_and_gives_the_same_rewards() {
        let model = generated_model(&tiny()).unwrap();
        let pairs = spread_pairs(50, 24, 512);
        let lens: Vec<usize> = pairs.iter().flat_map(|p| [p.chosen.len(), p.rejected.len()]).collect();
        assert!(lens.iter().all(|&l| (2..=512).contains(&l)), "{lens:?}");
        assert!(lens.iter().max() > Some(&300) && lens.iter().min() < Some(&100), "spread: {lens:?}");
        assert_eq!(spread_pairs(50, 24, 512)[5].chosen, pairs[5].chosen, "seeded");
        let (rows, diff) = batch_orders(&model, &pairs, 8, 1).unwrap();
        assert_eq!((rows[0].order.as_str(), rows[1].order.as_str()), ("input order", "by length"));
        assert!(rows[1].padding < 0.75 * rows[0].padding, "{rows:?}");
        assert!(diff < 1e-5, "{diff}");
        let t = orders_table(&pairs, 8, &rows, diff);
        assert!(t.starts_with("Scoring 24 pairs of spread lengths ("), "{t}");
        assert_eq!(t.lines().filter(|l| l.starts_with("| input order |") || l.starts_with("| by length |")).count(), 2);
        assert!(t.contains(&format!("by length: {:.2}× input order", rows[0].seconds / rows[1].seconds)), "{t}");
        // Pairs come back in input order: each equals the pair scored alone.
        let opts = crate::ScoreOptions { batch_size: 8, padding: PaddingSide::Right };
        let all = model.score_pairs(&pairs, &opts, &mut |_| {}).unwrap();
        for k in [0, 7, 23] {
            let alone = model.score_pairs(&pairs[k..=k], &opts, &mut |_| {}).unwrap();
            assert!((alone[0].chosen - all[k].chosen).abs() <= 1e-5 * alone[0].chosen.abs().max(1.0));
            assert!((alone[0].rejected - all[k].rejected).abs() <= 1e-5 * alone[0].rejected.abs().max(1.0));
        }
    }

    #[test]
    fn speed_rows_are_consistent_and_the_report_prints_them() {
        let shape = tiny();
        let model = generated_model(&shape).unwrap();
        let mut heard = 0.0;
        let r = speed(&model, &shape, 8, &[1, 2], 1, |m| heard = m).unwrap();
        assert!(heard > 0.0 && r.matmul_gflops >= heard);
        assert_eq!(r.n_params, shape.tensor_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>());
        for row in &r.speed {
            assert!((row.tokens_per_s * row.seconds_per_batch - (row.batch * 8) as f64).abs() < 1e-6);
            assert!((row.fraction_of_matmul - row.gflops / r.matmul_gflops).abs() < 1e-12);
        }
        let text = r.markdown();
        assert!(text.starts_with("Synthetic Llama: 2 layers, d_model 16, 4 heads / 2 kv heads, d_mlp 32, vocab 50 ("));
        assert_eq!(text.lines().filter(|l| l.starts_with("| 1 × 8 |") || l.starts_with("| 2 × 8 |")).count(), 2);
        assert!(!text.contains("peak RSS"));
        let acts = site_activations(&model, Site::ResidPost(1), 2, 3, 5).unwrap();
        let pairs = patch_pairs(50);
        let floor = clean_run_cost(&pairs);
        // Responses of 24–44 tokens after a 16-token prompt: the second run costs 60–73 % of one.
        assert!(floor > 1.6 && floor < 1.73, "{floor}");
        let one = EncodedPair::new(vec![1, 2, 3, 4], vec![1, 2, 5], (2, 2));
        assert!((clean_run_cost(&[one]) - (1.0 + 1.0 / 3.0)).abs() < 1e-12);
        let t = patch_table(&model, "sublayers", 20, &[("naive", 0.4, 6.0), ("sweep", 0.1, 2.9)], floor);
        assert!(t.starts_with("Patch sweep, noising, sublayers: "), "{t}");
        assert!(t.contains("; 20 pairs of 40–60 tokens; cpu f32, "), "{t}");
        assert!(t.contains("| naive | 0.400 | 6.0 |\n| sweep | 0.100 | 2.9 |\n"), "{t}");
        assert!(t.contains(&format!("floor: {floor:.2} forward-equivalents")), "{t}");
        assert!(t.ends_with("sweep speed-up over naive: 4.00×\n"), "{t}");
        assert_eq!(acts.dims(), &[30, 16]);
    }

    #[test]
    fn memory_rows_save_each_case_and_clean_up() {
        let shape = tiny();
        let weights = shape.random_weights(WEIGHT_SEED, &Device::Cpu).unwrap();
        let root = std::env::temp_dir().join(format!("rl-bench-test-{}", std::process::id()));
        let tok = root.join("tok");
        std::fs::create_dir_all(&tok).unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
            std::fs::write(tok.join(f), f).unwrap();
        }
        let tmp = root.join("run");
        let mut seen = Vec::new();
        let rows = memory_rows(&tmp, &shape.config_json(), &weights, &tok, |dir, pairs, compute| {
            assert!(pairs.exists() && dir.join("tokenizer.json").exists());
            let st = dir.join("model.safetensors");
            let loaded = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
            seen.push((loaded["score.weight"].dtype(), compute));
            Ok::<_, EngineError>(1 << 20)
        })
        .unwrap();
        assert_eq!(seen, MEMORY_CASES.to_vec());
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].weights_mib * 2.0, rows[0].weights_mib, "bf16 weights are half the f32 ones");
        assert!(!tmp.exists(), "the temporary directory is removed");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn memory_rows_measure_against_the_compute_dtype() {
        let m = MemRow::new(DType::BF16, DType::F32, 1 << 20, 8 << 20);
        assert_eq!((m.disk_dtype.as_str(), m.compute_dtype.as_str()), ("bf16", "f32"));
        assert_eq!((m.weights_mib, m.peak_rss_mib, m.ratio), (4.0, 8.0, 2.0));
        let (secs, v) = best_of(3, || Ok::<_, EngineError>(41 + 1)).unwrap();
        assert!(secs >= 0.0 && v == 42);
    }
}
