//! Training an organism: generate its data, write the tokenizer and data files, train a tiny
//! Llama reward model from scratch with the Bradley–Terry trainer, and save the whole thing as
//! one HuggingFace directory (model + tokenizer + pairs + answer key + probes + concepts).

use std::path::{Path, PathBuf};
use std::time::Instant;

use reward_lens_engine::synth::LlamaShape;
use reward_lens_engine::{ChatTokenizer, Device, LoadOptions, RewardModel, Truncation};
use reward_lens_train::{evaluate, StepStats, TokenizedPair, TrainOptions, TrainReport, Trainable, Trainer};
use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::files::{write_data_files, write_tokenizer_files};
use crate::{try_generate, Dataset, OrganismError, OrganismSpec, PairText, Result, MODEL_MAX_LENGTH};

/// The network shape of an organism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrganismShape {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub d_mlp: usize,
}

impl Default for OrganismShape {
    fn default() -> Self {
        Self { n_layers: 2, d_model: 64, n_heads: 4, d_mlp: 256 }
    }
}

impl OrganismShape {
    pub fn llama(&self) -> LlamaShape {
        LlamaShape {
            n_layers: self.n_layers,
            d_model: self.d_model,
            n_heads: self.n_heads,
            n_kv_heads: self.n_heads,
            d_mlp: self.d_mlp,
            vocab_size: crate::vocab_size(),
            max_positions: MODEL_MAX_LENGTH,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildOptions {
    pub shape: OrganismShape,
    pub train: TrainOptions,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            shape: OrganismShape::default(),
            train: TrainOptions {
                epochs: 3,
                batch_size: 16,
                lr: 3e-3,
                trainable: Trainable::All,
                ..TrainOptions::default()
            },
        }
    }
}

/// What `organism_report.json` holds: how the organism was made and how well it learned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrganismReport {
    pub organism: String,
    pub seed: u64,
    pub options: BuildOptions,
    pub training: TrainReport,
    /// Held-out accuracy on the test pairs, overall and per subset (`head`, `tail`).
    pub test_accuracy: f64,
    pub head_accuracy: Option<f64>,
    pub tail_accuracy: Option<f64>,
    pub seconds: f64,
}

impl OrganismReport {
    /// One line: the organism, its seed, held-out accuracy (overall, head, tail), training
    /// time and where it was saved.
    pub fn summary(&self, out: &Path) -> String {
        let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{:.1}%", 100.0 * v));
        format!(
            "organism `{}` (seed {}): held-out accuracy {:.1}% (head {}, tail {}), trained in {:.0} s → {}",
            self.organism,
            self.seed,
            100.0 * self.test_accuracy,
            pct(self.head_accuracy),
            pct(self.tail_accuracy),
            self.seconds,
            out.display()
        )
    }
}

pub const REPORT_FILE: &str = "organism_report.json";

/// Seeded initial weights with matrices at std 1/√fan_in rather than transformers' 0.02: at 0.02
/// a d_model 64 network's attention starts so flat (q·k ≈ 0, and each of W_q, W_k gets a gradient
/// scaled by the other) that learning which token to look at stalls for hundreds of steps.
pub fn init_weights(
    shape: &LlamaShape,
    seed: u64,
) -> Result<std::collections::HashMap<String, reward_lens_engine::Tensor>> {
    let mut w = shape.random_weights(seed, &Device::Cpu)?;
    for t in w.values_mut() {
        if t.rank() == 2 {
            let fan_in = t.dim(1).map_err(reward_lens_engine::EngineError::from)? as f64;
            *t = (&*t * (1.0 / fan_in.sqrt() / 0.02)).map_err(reward_lens_engine::EngineError::from)?;
        }
    }
    Ok(w)
}

/// Renders and tokenizes pairs with the organism's own tokenizer.
pub fn tokenize(tok: &ChatTokenizer, pairs: &[PairText]) -> Result<Vec<TokenizedPair>> {
    pairs
        .iter()
        .map(|p| {
            let enc = |r: &str| tok.encode_pair(&p.prompt, r, Truncation::Error).map(|e| e.ids);
            Ok(TokenizedPair {
                chosen: enc(&p.chosen)?,
                rejected: enc(&p.rejected)?,
                subset: p.subset_str().to_string(),
            })
        })
        .collect()
}

/// Where a build is, for a progress display: the seconds before the first step (data,
/// tokenizer, initial weights) are otherwise silent.
#[derive(Debug, Clone, Copy)]
pub enum BuildProgress<'a> {
    /// Generating the data and writing the files.
    Preparing,
    /// One training step finished.
    Step(&'a StepStats),
    /// Evaluating on the held-out pairs and saving.
    Finishing,
}

/// Generates, trains and saves the organism `spec` into `dir`. Interrupted builds resume from
/// `dir/checkpoint` (removed once the model is saved). `progress` sees every stage and step.
pub fn build(
    spec: &OrganismSpec,
    dir: &Path,
    opts: &BuildOptions,
    mut progress: impl FnMut(BuildProgress<'_>),
) -> Result<(OrganismReport, Dataset)> {
    let start = Instant::now();
    progress(BuildProgress::Preparing);
    let ds = try_generate(spec)?;
    // The tokenizer is every organism's; the data files are written only once a checkpoint left
    // here (an interrupted build) is known to be this build's, so a refusal changes nothing.
    write_tokenizer_files(dir)?;
    let tok = ChatTokenizer::from_dir(dir, MODEL_MAX_LENGTH, Some("llama"))?;
    let (train, test) = (tokenize(&tok, &ds.train)?, tokenize(&tok, &ds.test)?);
    let shape = opts.shape.llama();
    let weights = init_weights(&shape, spec.seed)?;
    let mut topts = opts.train.clone();
    topts.seed = spec.seed;
    let mut trainer = Trainer::new(shape.config_json(), weights, topts)?;
    let ck = dir.join("checkpoint");
    if Trainer::has_checkpoint(&ck) {
        trainer.resume(&ck)?;
        trainer.check_data(&train, Some(&ck))?;
    }
    write_data_files(dir, &ds)?;
    let training = trainer.train(&train, &test, Some(&ck), |s| progress(BuildProgress::Step(s)))?;
    progress(BuildProgress::Finishing);
    trainer.save_pretrained(dir, None)?;
    std::fs::remove_dir_all(&ck).map_err(io_err(&ck))?;
    let held = evaluate(&trainer.model()?, &test, 64)?;
    let report = OrganismReport {
        organism: spec.name.clone(),
        seed: spec.seed,
        options: opts.clone(),
        training,
        test_accuracy: held.accuracy,
        head_accuracy: held.per_subset.get("head").map(|s| s.accuracy),
        tail_accuracy: held.per_subset.get("tail").map(|s| s.accuracy),
        seconds: start.elapsed().as_secs_f64(),
    };
    let path = dir.join(REPORT_FILE);
    let text =
        serde_json::to_string_pretty(&report).map_err(|source| OrganismError::Json { path: path.clone(), source })?;
    std::fs::write(&path, text).map_err(io_err(&path))?;
    Ok((report, ds))
}

/// The cache directory for organisms: `$REWARD_LENS_CACHE`, else `$XDG_CACHE_HOME/reward-lens`,
/// else `~/.cache/reward-lens`, else the temp dir.
pub fn cache_root() -> PathBuf {
    std::env::var_os("REWARD_LENS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("reward-lens")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/reward-lens")))
        .unwrap_or_else(|| std::env::temp_dir().join("reward-lens"))
}

/// A finished organism directory for `spec` + `opts`: reused when one built with the same spec
/// and options exists under `root`, else built (and `progress` sees the build).
pub fn load_or_build(
    spec: &OrganismSpec,
    opts: &BuildOptions,
    root: &Path,
    progress: impl FnMut(BuildProgress<'_>),
) -> Result<(PathBuf, OrganismReport)> {
    // One build at a time in this process: threads asking for the same organism wait for the
    // first and then find it in the cache (across processes the rename below keeps it safe).
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let fingerprint = fingerprint(spec, opts);
    let dir = cache_dir(spec, opts, root);
    let path = dir.join(REPORT_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(report) = serde_json::from_str::<OrganismReport>(&text) {
            if dir.join("model.safetensors").is_file() {
                return Ok((dir, report));
            }
        }
    }
    // Build beside the final name and rename it into place, so two processes asking for the same
    // organism at once never see (or write into) half a directory.
    std::fs::create_dir_all(root).map_err(io_err(root))?;
    let tmp = root.join(format!(".building-{}-{fingerprint:016x}-{}", spec.name, std::process::id()));
    let (report, _) = build(spec, &tmp, opts, progress)?;
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process finished first: keep its copy.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(REPORT_FILE).is_file() {
            return Err(OrganismError::Io {
                path: dir.clone(),
                source: std::io::Error::other("could not move the built organism into place"),
            });
        }
    }
    Ok((dir, report))
}

/// Where [`load_or_build`] keeps the organism `spec` built with `opts` under `root`.
pub fn cache_dir(spec: &OrganismSpec, opts: &BuildOptions, root: &Path) -> PathBuf {
    root.join(format!("organism-{}-{:016x}", spec.name, fingerprint(spec, opts)))
}

/// A built organism in the cache.
#[derive(Debug, Clone)]
pub struct CachedOrganism {
    pub preset: String,
    pub dir: PathBuf,
    pub report: OrganismReport,
}

/// The organism `preset` (its own seed, default build options) from the cache under `root`
/// (e.g. [`cache_root`]), built there first if missing; `progress` sees a build. An unknown
/// preset is refused before anything is built; a failed build names the preset and the root.
pub fn ensure(preset: &str, root: &Path, progress: impl FnMut(BuildProgress<'_>)) -> Result<CachedOrganism> {
    let spec = OrganismSpec::try_preset(preset)?;
    let (dir, report) = load_or_build(&spec, &BuildOptions::default(), root, progress).map_err(|source| {
        OrganismError::Build { preset: preset.to_string(), root: root.to_path_buf(), source: Box::new(source) }
    })?;
    Ok(CachedOrganism { preset: preset.to_string(), dir, report })
}

/// FNV-1a over the spec and options as JSON: a cache key that changes when either does.
fn fingerprint(spec: &OrganismSpec, opts: &BuildOptions) -> u64 {
    let text = serde_json::to_string(&(spec, opts, env!("CARGO_PKG_VERSION"))).expect("spec serialises");
    reward_lens_engine::hash::Fnv::of(text.as_bytes()).0
}

/// Loads a built organism as a reward model.
pub fn load(dir: &Path) -> Result<RewardModel> {
    Ok(RewardModel::load(dir, &LoadOptions::default())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seed: u64) -> OrganismReport {
        let training = reward_lens_train::TrainReport {
            options: TrainOptions::default(),
            n_train: 0,
            n_held_out: 0,
            trainable_parameters: 0,
            steps: 0,
            epochs: vec![],
            held_out: None,
        };
        let (head_accuracy, tail_accuracy) = (None, None);
        let options = BuildOptions::default();
        OrganismReport {
            organism: "length".into(),
            seed,
            options,
            training,
            test_accuracy: 0.9,
            head_accuracy,
            tail_accuracy,
            seconds: 1.0,
        }
    }

    #[test]
    fn a_checkpoint_of_another_build_is_refused_before_any_data_file_is_written() {
        let dir = std::env::temp_dir().join(format!("rl-organism-foreign-ck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = OrganismSpec { n_train: 32, n_test: 8, ..OrganismSpec::try_preset("length").unwrap() };
        let train_opts = TrainOptions { epochs: 1, ..BuildOptions::default().train };
        let opts = BuildOptions { train: train_opts.clone(), ..BuildOptions::default() };
        // What an interrupted build of the same organism with 2 epochs would leave.
        let shape = opts.shape.llama();
        write_tokenizer_files(&dir).unwrap();
        let tok = ChatTokenizer::from_dir(&dir, MODEL_MAX_LENGTH, Some("llama")).unwrap();
        let train = tokenize(&tok, &try_generate(&spec).unwrap().train).unwrap();
        let two = TrainOptions { epochs: 2, seed: spec.seed, ..train_opts };
        let mut t = Trainer::new(shape.config_json(), init_weights(&shape, spec.seed).unwrap(), two).unwrap();
        let mut steps = 0;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.train(&train, &[], Some(&dir.join("checkpoint")), |_| {
                steps += 1;
                assert!(steps < 3, "interrupted in the second epoch (on purpose)");
            })
        }));
        assert!(Trainer::has_checkpoint(&dir.join("checkpoint")));
        let e = build(&spec, &dir, &opts, |_| {}).unwrap_err().to_string();
        assert!(e.contains("written for 2 epochs, not 1"), "{e}");
        for f in ["train.jsonl", "test.jsonl", "answer_key.json", REPORT_FILE] {
            assert!(!dir.join(f).exists(), "{f} written before the refusal");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ensure_finds_a_cached_organism_without_building_and_refuses_unknown_presets() {
        let root = std::env::temp_dir().join(format!("rl-organism-ensure-{}", std::process::id()));
        let spec = OrganismSpec::try_preset("length").unwrap();
        let dir = cache_dir(&spec, &BuildOptions::default(), &root);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(REPORT_FILE), serde_json::to_string(&report(spec.seed)).unwrap()).unwrap();
        std::fs::write(dir.join("model.safetensors"), b"").unwrap();
        let mut events = 0;
        let o = ensure("length", &root, |_| events += 1).unwrap();
        assert_eq!((o.preset.as_str(), &o.dir, o.report.seed, events), ("length", &dir, spec.seed, 0));
        assert_eq!(
            o.report.summary(Path::new("out")),
            "organism `length` (seed 1): held-out accuracy 90.0% (head n/a, tail n/a), trained in 1 s → out"
                .replace("seed 1", &format!("seed {}", spec.seed))
        );
        let seeded = OrganismSpec::try_preset_seeded("length", Some(99)).unwrap();
        assert_eq!((seeded.seed, OrganismSpec::try_preset_seeded("length", None).unwrap().seed), (99, spec.seed));
        let other = std::env::temp_dir().join(format!("rl-organism-none-{}", std::process::id()));
        assert!(matches!(ensure("nope", &other, |_| {}), Err(OrganismError::UnknownPreset { .. })));
        assert!(!other.exists(), "nothing is built for an unknown preset");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
