//! The flags commands share (model, dtype, device, padding, pairs, batching and output) and
//! what they turn into: a loaded model, a device, pairs read and encoded.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use reward_lens_engine::{
    DType, Device, EncodedPair, EngineError, LoadOptions, PairText, Positions, RewardModel, Truncation,
};
use reward_lens_instruments::patching::{Align, Granularity, PatchMode, PatchOptions};
pub use reward_lens_report::shards::{Shard, ShardRecord};

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

impl From<DtypeArg> for DType {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => DType::F32,
            DtypeArg::Bf16 => DType::BF16,
            DtypeArg::F16 => DType::F16,
        }
    }
}

/// Options every command that loads a model shares.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// HuggingFace model directory (config.json, *.safetensors, tokenizer.json). Default: the
    /// embedded example model (audit: the `default` model organism).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Compute dtype. f32 is exact enough for analysis; bf16/f16 halve memory.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Device: `cpu`, or `cuda` / `cuda:N` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    /// How reports name the model.
    pub fn name(&self) -> String {
        self.model.as_ref().map_or("(embedded example model)".into(), |p| p.display().to_string())
    }

    /// The model folder's fingerprint (what `--resume` and an SAE's provenance compare).
    pub fn fingerprint(&self) -> Result<String> {
        Ok(reward_lens_report::fingerprint::model(self.model.as_deref())?)
    }

    pub fn load(&self) -> Result<RewardModel> {
        let dir = match &self.model {
            Some(d) => d.clone(),
            None => {
                eprintln!("using the {}", reward_lens_report::example_model::DESCRIPTION);
                reward_lens_report::example_model::dir()?
            }
        };
        let opts = LoadOptions { dtype: self.dtype.into(), device: parse_device(&self.device)? };
        // A bar only for models that take a while to load (indicatif hides it off a terminal).
        let bar = indicatif::ProgressBar::hidden();
        let progress = |done: usize, total: usize| {
            if total >= 100_000_000 {
                if bar.is_hidden() {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    bar.set_length(total as u64);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template("loading weights [{bar:30}] {percent}% {elapsed}")
                            .expect("valid template")
                            .progress_chars("=> "),
                    );
                }
                bar.set_position(done as u64);
            }
        };
        let model = RewardModel::load_with_progress(&dir, &opts, Some(&progress));
        bar.finish_and_clear();
        let model = model?;
        for w in &model.warnings {
            eprintln!("warning: {w}");
        }
        Ok(model)
    }
}

/// Whether [`ModelArgs::load_shared`] keeps the models it loads, for the life of the process:
/// a Ray actor runs shard after shard (`reward_lens_rs.cli(..., keep_model=True)`) with one load.
static KEEP_MODELS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Folder, dtype, device and the folder's fingerprint (a folder whose files changed is another model).
type ModelKey = (Option<PathBuf>, DtypeArg, String, String);
static MODELS: std::sync::Mutex<Vec<(ModelKey, std::sync::Arc<RewardModel>)>> = std::sync::Mutex::new(Vec::new());

/// From now on, [`ModelArgs::load_shared`] keeps each model it loads (or, `false`, forgets them).
pub fn keep_models(keep: bool) {
    KEEP_MODELS.store(keep, std::sync::atomic::Ordering::SeqCst);
    if !keep {
        MODELS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl ModelArgs {
    /// [`load`](Self::load), or the model this process already loaded with the same folder,
    /// dtype and device when [`keep_models`] is on, as long as the folder's fingerprint is the
    /// same (a model retrained in place is loaded again, and the one it replaces dropped).
    pub fn load_shared(&self) -> Result<std::sync::Arc<RewardModel>> {
        if !KEEP_MODELS.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(std::sync::Arc::new(self.load()?));
        }
        let fingerprint = reward_lens_report::fingerprint::model(self.model.as_deref())?;
        let key: ModelKey = (self.model.clone(), self.dtype, self.device.clone(), fingerprint);
        let mut models = MODELS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = models.iter().find(|(k, _)| *k == key) {
            return Ok(m.clone());
        }
        models.retain(|(k, _)| (&k.0, k.1, &k.2) != (&key.0, key.1, &key.2));
        let m = std::sync::Arc::new(self.load()?);
        models.push((key, m.clone()));
        Ok(m)
    }
}

/// Before a resumable command writes `out`: records what made the output (`<out>.meta.json`)
/// — or, with `--resume`, checks that the existing output was made by the same model, options
/// and input files. (That `out` is none of the inputs is checked for every command in `main`.)
pub fn guard_out(
    command: &str,
    out: &std::path::Path,
    resume: bool,
    model: Option<&ModelArgs>,
    inputs: &[&std::path::Path],
    options: String,
) -> Result<()> {
    let models = [model.and_then(|m| m.model.as_deref())];
    guard_shard(command, out, resume, &models, inputs, options, None)
}

/// [`guard_out`] for a shard's output: its fingerprint also records the shard and what `merge`
/// needs to recompute the run's aggregates.
pub fn guard_shard(
    command: &str,
    out: &std::path::Path,
    resume: bool,
    models: &[Option<&std::path::Path>],
    inputs: &[&std::path::Path],
    options: String,
    shard: Option<(ShardRecord, serde_json::Value)>,
) -> Result<()> {
    use reward_lens_report::fingerprint;
    let (shard, aggregate) = shard.map_or((None, serde_json::Value::Null), |(s, a)| (Some(s), a));
    // Several models (`eval`): their fingerprints in order.
    let mut fingerprints = Vec::with_capacity(models.len());
    for m in models {
        fingerprints.push(fingerprint::model(*m)?);
    }
    let model = fingerprints.join("+");
    let fp = fingerprint::Fingerprint {
        command: command.to_string(),
        model,
        options: serde_json::json!(options),
        input: fingerprint::files(inputs)?,
        shard,
        aggregate,
    };
    fingerprint::guard(out, &fp, resume)?;
    Ok(())
}

/// `--shard K/N`'s help: one text for every command that takes it.
pub const SHARD_HELP: &str = "Run only shard K of N (0-based; `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`, \
`$JOB_COMPLETION_INDEX/N`): pairs [⌊K·M/N⌋, ⌊(K+1)·M/N⌋) of the file's M, in file order. Needs --out; \
`reward-lens merge --out FILE SHARDS…` turns the N outputs into exactly what one run writes";

/// This shard's pairs of `pairs` and its record; every pair when not sharded.
pub fn shard_of(shard: Option<Shard>, total: usize) -> (std::ops::Range<usize>, Option<ShardRecord>) {
    match shard {
        Some(s) => (s.range(total), Some(s.record(total))),
        None => (0..total, None),
    }
}

/// `--device`: the library's names (`cpu`, `cuda`, `cuda:N`), the flag named in the error.
pub fn parse_device(s: &str) -> Result<Device> {
    reward_lens_engine::runtime::parse_device(s).map_err(|e| anyhow::anyhow!("--{e}"))
}

/// Where a command's preference pairs come from: a JSONL file or one pair on the command line.
#[derive(clap::Args, Clone, Debug)]
pub struct PairInput {
    /// Preference pairs, JSONL (prompt, chosen, rejected, optional subset and id).
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["prompt", "chosen", "rejected"])]
    pub pairs: Option<PathBuf>,
    /// One pair on the command line (with --chosen and --rejected).
    #[arg(long, requires_all = ["chosen", "rejected"])]
    pub prompt: Option<String>,
    #[arg(long, requires = "prompt")]
    pub chosen: Option<String>,
    #[arg(long, requires = "prompt")]
    pub rejected: Option<String>,
    /// Drop prompt tokens from the left when a conversation exceeds the context.
    #[arg(long)]
    pub truncate_prompt: bool,
}

impl PairInput {
    /// The input file, for fingerprints (none for a pair given on the command line).
    pub fn paths(&self) -> Vec<&std::path::Path> {
        self.pairs.as_deref().into_iter().collect()
    }

    pub fn read(&self) -> Result<Vec<PairText>> {
        match (&self.pairs, &self.prompt, &self.chosen, &self.rejected) {
            (Some(p), ..) => read_pairs(p),
            (None, Some(prompt), Some(c), Some(r)) => {
                let pairs = vec![PairText::new(prompt, c, r).with_id(0)];
                warn_identical(&pairs);
                Ok(pairs)
            }
            _ => bail!("give --pairs FILE.jsonl, or --prompt with --chosen and --rejected"),
        }
    }

    pub fn truncation(&self) -> Truncation {
        if self.truncate_prompt {
            Truncation::DropPromptLeft
        } else {
            Truncation::Error
        }
    }

    /// Reads and encodes every pair; errors name the file and line.
    pub fn encode(&self, model: &RewardModel) -> Result<(Vec<PairText>, Vec<EncodedPair>)> {
        let pairs = self.read()?;
        let encoded = model.encode_pairs(&pairs, self.truncation()).map_err(|e| match e {
            EngineError::Pair { side, source, .. } if self.pairs.is_none() => {
                EngineError::Pair { at: "command-line pair".into(), side, source }
            }
            e => e,
        })?;
        Ok((pairs, encoded))
    }

    /// One pair encoded as [`encode`](Self::encode) does; errors name the pair and the side.
    pub fn encode_one(&self, model: &RewardModel, p: &PairText) -> Result<EncodedPair> {
        Ok(model.encode_pair(p, self.truncation())?)
    }
}

/// A flag whose value is a library type parsed by its own `FromStr`, offering `names` in
/// `--help` and in errors: the binary keeps no copy of the library's enums.
pub fn choice<T>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<T>().map_err(|e| e.to_string()))
}

/// A pairs file, for commands whose `--pairs` is a plain path.
pub fn read_pairs(path: &std::path::Path) -> Result<Vec<PairText>> {
    let pairs = reward_lens_report::datasets::read_pairs(path)?;
    warn_identical(&pairs);
    Ok(pairs)
}

/// Prints the warning for pairs whose chosen and rejected texts are the same, if any.
pub fn warn_identical(pairs: &[PairText]) {
    if let Some(w) = reward_lens_report::datasets::identical_pairs_warning(pairs) {
        eprintln!("warning: {w}");
    }
}

/// A preference file in either format (pairs or RewardBench 2 rows), warning as [`read_pairs`].
pub fn read_preferences(path: &std::path::Path) -> Result<reward_lens_report::datasets::Preferences> {
    let prefs = reward_lens_report::datasets::read_preferences(path)?;
    if let reward_lens_report::datasets::Preferences::Pairs(p) = &prefs {
        warn_identical(p);
    }
    Ok(prefs)
}

/// Options every instrument command shares: batching, the bootstrap seed, the JSON output.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16, value_parser = crate::args::at_least_one)]
    pub batch_size: usize,
    /// Seed of every random step: bootstrap intervals, permutation tests (same seed, same output bytes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the full report here as JSON.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
}

/// `--shard` for commands that write one report over pairs (`lens`, `attribute`).
#[derive(clap::Args, Clone, Debug)]
pub struct ShardArg {
    #[arg(long, value_name = "K/N", help = SHARD_HELP)]
    pub shard: Option<Shard>,
}

/// A count of at least 1 (`--batch-size 0` is refused here rather than read as something else).
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("expected at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Options `patch`, `atp` and `faithfulness` share.
#[derive(Args, Clone, Debug)]
pub struct PatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: PairInput,
    /// noising: chosen run, component from rejected; denoising: the reverse; zero; mean (over --mean-reference).
    #[arg(long, value_parser = choice::<PatchMode>(&["noising", "denoising", "zero", "mean"]), default_value = "noising")]
    pub mode: PatchMode,
    /// sublayer (attention and MLP outputs), head, or residual (the stream entering each layer at each
    /// position: `resid.{l}.{k}`, k tokens before the pooled one).
    #[arg(long, value_parser = choice::<Granularity>(&["sublayer", "head", "residual"]), default_value = "sublayer")]
    pub granularity: Granularity,
    /// How positions of chosen and rejected line up: anchored (pooled ↔ pooled) or prefix (reward-lens 1.0).
    #[arg(long, value_parser = choice::<Align>(&["anchored", "prefix"]), default_value = "anchored")]
    pub align: Align,
    /// Which token positions each patch touches: all, pooled (where the reward is read) or response.
    #[arg(long, value_parser = choice::<Positions>(&Positions::NAMES), default_value = "all")]
    pub positions: Positions,
    /// Texts for mean mode: a pairs JSONL whose prompt + chosen are the reference set.
    #[arg(long, value_name = "FILE.jsonl")]
    pub mean_reference: Option<PathBuf>,
    /// Divergence check (patch only, sublayers): fit each component's distribution at the pooled
    /// token on these texts (a pairs JSONL; prompt + chosen) and score what every patch put in.
    #[arg(long, value_name = "FILE.jsonl")]
    pub divergence_reference: Option<PathBuf>,
    /// reward-lens 1.0 semantics (prefix alignment, v1 names, mean at the last position; so not
    /// with --align).
    #[arg(long, conflicts_with = "align")]
    pub v1_compat: bool,
    /// Re-run the whole model per patch (slow; for checking).
    #[arg(long)]
    pub naive: bool,
    /// atp only: patch the K components with the largest estimates exactly, per pair, and report
    /// their exact effects (listed under "exact"); the rest stay first-order estimates. Costs
    /// the sweep's work for those K alone, from the clean runs AtP already made.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub verify_top: usize,
    /// Per-pair results, one JSON line each (appended as they finish).
    #[arg(long, value_name = "FILE.jsonl", required = true)]
    pub out: PathBuf,
    /// Continue an interrupted run: keep the pairs already in --out.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 16, value_parser = crate::args::at_least_one)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_name = "K/N", help = SHARD_HELP)]
    pub shard: Option<Shard>,
}

impl PatchArgs {
    /// Records or checks `--out`'s fingerprint (see [`guard_out`]); `total`: the input's pairs.
    pub fn guard(&self, command: &str, total: usize) -> Result<()> {
        let mut inputs = self.input.paths();
        inputs.extend(self.mean_reference.as_deref());
        inputs.extend(self.divergence_reference.as_deref());
        // Every parsed option (aliases resolved), less --resume, the output path and the shard.
        let options = format!("{:?}", PatchArgs { resume: false, out: PathBuf::new(), shard: None, ..self.clone() });
        let shard = shard_of(self.shard, total).1.map(|s| (s, serde_json::json!({"seed": self.seed})));
        guard_shard(command, &self.out, self.resume, &[self.model.model.as_deref()], &inputs, options, shard)
    }

    pub fn options(&self, model: &RewardModel) -> Result<PatchOptions> {
        let mean_reference = match &self.mean_reference {
            None => Vec::new(),
            Some(f) => reference_texts(model, f)?,
        };
        if self.mode == PatchMode::Mean && mean_reference.is_empty() {
            bail!("--mode mean needs --mean-reference FILE.jsonl (its prompt + chosen texts)");
        }
        if self.mode != PatchMode::Mean && self.mean_reference.is_some() {
            bail!("--mean-reference is read by --mode mean only (the mode is {})", self.mode);
        }
        Ok(PatchOptions {
            mode: self.mode,
            granularity: self.granularity,
            align: self.align,
            positions: self.positions,
            v1_compat: self.v1_compat,
            naive: self.naive,
            mean_reference,
            verify_top: self.verify_top,
            batch_size: self.batch_size,
            seed: self.seed,
        })
    }
}

/// prompt + chosen of every pair in a file, encoded.
pub fn reference_texts(model: &RewardModel, f: &std::path::Path) -> Result<Vec<Vec<u32>>> {
    read_pairs(f)?
        .iter()
        .map(|p| {
            model
                .encode(&p.prompt, &p.chosen, Truncation::Error)
                .map(|e| e.ids)
                .with_context(|| format!("{}:{}", f.display(), p.line()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept model is reused only while its folder's files are the same: one retrained in
    /// place (here: another architecture's files copied over) is loaded again.
    #[test]
    fn a_kept_model_is_reloaded_when_its_folder_changes() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models");
        let dir = std::env::temp_dir().join(format!("reward-lens-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let copy = |from: &str| {
            std::fs::create_dir_all(&dir).unwrap();
            for f in std::fs::read_dir(fixtures.join(from)).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
            }
        };
        copy("llama");
        let args = ModelArgs { model: Some(dir.clone()), dtype: DtypeArg::F32, device: "cpu".into() };
        keep_models(true);
        let a = args.load_shared().unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &args.load_shared().unwrap()), "same files: the kept model");
        copy("qwen3");
        let b = args.load_shared().unwrap();
        assert!(!std::sync::Arc::ptr_eq(&a, &b), "changed files: loaded again");
        assert_ne!(a.config.architecture, b.config.architecture);
        keep_models(false);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
