//! The longer workflows: SAEs, model organisms, CART and the audit. Options that the command
//! spells as flags are keyword arguments with the flags' names and defaults.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use reward_lens_cart::analysis::{Analysis, CandidateKind, DiscoverSpec, SplitKind};
use reward_lens_cart::bound::BoundOptions;
use reward_lens_cart::discover::{Layers, PairReadout};
use reward_lens_cart::oracle::{OracleOptions, OracleReport};
use reward_lens_cart::progress::Event;
use reward_lens_cart::table::{run_table, Arm, TableOptions};
use reward_lens_cart::training::{
    parse_curriculum, parse_regularise, read_targets, train as cart_train_fn, TrainData, TrainRequest,
};
use reward_lens_cart::vulnerability::perturb::PerturbKind;
use reward_lens_cart::vulnerability::VulnerabilityOptions;
use reward_lens_engine::{PairText, Positions, Truncation};
use reward_lens_instruments::collect::{self, CollectOptions};
use reward_lens_instruments::sae::{decompose_pairs, features, ExampleSource, Sae};
use reward_lens_instruments::sae_train::{train_collection, TrainOptions};
use reward_lens_organisms::{build, cache_root, BuildOptions, BuildProgress, OrganismSpec};
use reward_lens_report::{run_audit, write_files, AuditInputs, AuditOptions, PairSource};

use crate::convert::{self, choice, report, OneOrMany};
use crate::errors::{input, OrRaise};
use crate::model::{warn, Model};
use crate::progress::{detached, Bar};

/// Keyword options checked against the names a function knows: a misspelt option is an error
/// listing the known ones, not silently ignored.
struct Opts<'py> {
    what: &'static str,
    dict: Option<Bound<'py, PyDict>>,
    known: Vec<&'static str>,
}

impl<'py> Opts<'py> {
    fn new(what: &'static str, kwargs: Option<&Bound<'py, PyDict>>) -> Self {
        Self { what, dict: kwargs.cloned(), known: Vec::new() }
    }

    fn get<T: for<'a> FromPyObject<'a, 'py>>(&mut self, key: &'static str, default: T) -> PyResult<T> {
        self.known.push(key);
        match self.dict.as_ref().map(|d| d.get_item(key)).transpose()?.flatten() {
            Some(v) if !v.is_none() => v.extract().map_err(|_| {
                // Layer options are strings that name layers, not lists.
                let example = if key.ends_with("layers") { " such as \"all\", \"last\" or \"0,1\"" } else { "" };
                input(format!(
                    "{}: option {key} has the wrong type ({}; expected {}{example})",
                    self.what,
                    v.repr().map(|r| r.to_string()).unwrap_or_default(),
                    expected::<T>()
                ))
            }),
            _ => Ok(default),
        }
    }

    /// A count that must be at least 1 (a batch size, epochs).
    fn count(&mut self, key: &'static str, default: usize) -> PyResult<usize> {
        let v = self.get(key, default)?;
        if v == 0 {
            return Err(input(format!("{}: option {key} must be at least 1", self.what)));
        }
        Ok(v)
    }

    /// [`Opts::count`] without a default.
    fn count_opt(&mut self, key: &'static str) -> PyResult<Option<usize>> {
        let v: Option<usize> = self.get(key, None)?;
        if v == Some(0) {
            return Err(input(format!("{}: option {key} must be at least 1", self.what)));
        }
        Ok(v)
    }

    fn parsed<T: std::str::FromStr>(&mut self, key: &'static str, default: &str) -> PyResult<T>
    where
        T::Err: std::fmt::Display,
    {
        let s: String = self.get(key, default.to_string())?;
        choice(&s, key)
    }

    fn list<T: std::str::FromStr>(&mut self, key: &'static str, default: &[&str]) -> PyResult<Vec<T>>
    where
        T::Err: std::fmt::Display,
    {
        let v: Vec<String> = self.get(key, OneOrMany(default.iter().map(|s| s.to_string()).collect()))?.0;
        v.iter().map(|s| choice(s, key)).collect()
    }

    /// Errors on any option not asked for.
    fn finish(self) -> PyResult<()> {
        let Some(d) = self.dict else { return Ok(()) };
        let known: HashSet<&str> = self.known.iter().copied().collect();
        for k in d.keys() {
            let k: String = k.extract()?;
            if !known.contains(k.as_str()) {
                let mut names = self.known.clone();
                names.sort();
                return Err(input(format!("{}: unknown option `{k}` (known: {})", self.what, names.join(", "))));
            }
        }
        Ok(())
    }
}

/// What an option of Rust type `T` takes, in Python's words.
fn expected<T>() -> &'static str {
    let t = std::any::type_name::<T>();
    if t.contains("OneOrMany") {
        "a string or a list of strings"
    } else if t.contains("PathBuf") {
        "a path"
    } else if t.contains("String") {
        "a string"
    } else if t.contains("usize") || t.contains("u64") {
        "a non-negative integer"
    } else if t.contains("f64") {
        "a number"
    } else if t.contains("bool") {
        "True or False"
    } else {
        "another type"
    }
}

/// CART's progress events on one bar: a training run is a bar of steps, other work a message.
fn cart_events(bar: &Bar) -> impl FnMut(Event<'_>) + '_ {
    let mut total = 0usize;
    move |e| match e {
        Event::Training { label, total_steps } => {
            total = total_steps;
            bar.update(0, total, Some(label));
        }
        Event::Step { step, steps_per_member } => {
            bar.update(step.member * steps_per_member + step.stats.step, total, None);
        }
        Event::Working(msg) => bar.update(0, 0, Some(msg)),
        Event::Count { label, done, total } => bar.update(done, total, Some(label)),
        Event::Finished { label, summary } => bar.update(0, 0, Some(&format!("{label}: {summary}"))),
        Event::Done | Event::Note(_) | Event::Wrote(_) => bar.update(0, 0, None),
    }
}

fn organism_events(bar: &Bar) -> impl FnMut(BuildProgress<'_>) + '_ {
    move |p| match p {
        BuildProgress::Preparing => bar.update(0, 0, Some("generating the organism's data")),
        BuildProgress::Step(s) => bar.update(s.step, s.total_steps, Some(&format!("loss {:.3}", s.loss))),
        BuildProgress::Finishing => bar.update(0, 0, Some("evaluating and saving")),
    }
}

// ---------------------------------------------------------------------------------------------
// SAEs

/// Collects activations at `site` for every text of `pairs` into shards under `out`
/// (positions: "response", "pooled" or "all"). Returns the collection's manifest.
#[pyfunction]
#[pyo3(signature = (model, pairs, site, out, positions="response", shard_rows=65536, resume=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn sae_collect<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: &Bound<'py, PyAny>,
    site: String,
    out: PathBuf,
    positions: &str,
    shard_rows: usize,
    resume: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let positions: Positions = choice(positions, "positions")?;
    let pairs = convert::pairs(pairs)?;
    let bar = Bar::new(py, "collecting", progress.as_ref())?;
    let opts = CollectOptions { site, positions, shard_rows, resume, model: model.fingerprint()? };
    let manifest = detached(py, || {
        let ids = m.encode_pairs(&pairs, Truncation::Error).or_raise()?;
        let seqs = collect::sequences(&ids);
        collect::collect(m, &seqs, &out, &opts, |d, n| bar.update(d, n, None)).or_raise()
    })?;
    report(py, &manifest)
}

/// Trains a top-k SAE on a collection and saves it to `out` (with training.json). Returns the
/// per-epoch metrics.
#[pyfunction]
#[pyo3(signature = (acts, out, d_sae=4096, k=32, epochs=10, batch_size=1024, lr=4e-4, seed=0, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn sae_train<'py>(
    py: Python<'py>,
    acts: PathBuf,
    out: PathBuf,
    d_sae: usize,
    k: usize,
    epochs: usize,
    batch_size: usize,
    lr: f64,
    seed: u64,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let opts = TrainOptions { d_sae, k, epochs, batch_size, lr, seed, ..Default::default() };
    let bar = Bar::new(py, "training SAE", progress.as_ref())?;
    let hist = detached(py, || {
        let (_, sae, hist) =
            train_collection(&acts, &opts, |e| bar.update(e.epoch + 1, epochs, Some(&e.summary()))).or_raise()?;
        sae.save(&out).or_raise()?;
        let text = serde_json::to_string_pretty(&hist).or_raise()?;
        std::fs::write(out.join("training.json"), text).map_err(crate::errors::py_err)?;
        Ok(hist)
    })?;
    report(py, &hist)
}

/// The SAE latents best aligned with the reward direction, with their top activating texts
/// when `acts` (the collection) and `pairs` (the texts it was collected from) are given.
#[pyfunction]
#[pyo3(signature = (model, sae, top=10, acts=None, pairs=None))]
pub fn sae_features<'py>(
    py: Python<'py>,
    model: &Model,
    sae: PathBuf,
    top: usize,
    acts: Option<PathBuf>,
    pairs: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    if acts.is_some() != pairs.is_some() {
        return Err(input("acts= and pairs= go together: the collection and the pairs it was collected from"));
    }
    let pairs: Option<Vec<PairText>> = pairs.map(convert::pairs).transpose()?;
    let sae = load_sae(py, model, &sae)?;
    let rep = detached(py, || {
        let examples = acts.as_deref().zip(pairs.as_deref()).map(|(acts, pairs)| ExampleSource { acts, pairs });
        features(m, &sae, top, examples).or_raise()
    })?;
    report(py, &rep)
}

/// Each pair's chosen and rejected reward decomposed over the SAE's latents (top latents by
/// contribution), in the order chosen, rejected, chosen, …
#[pyfunction]
#[pyo3(signature = (model, sae, pairs, top=10, truncate_prompt=false))]
pub fn sae_decompose<'py>(
    py: Python<'py>,
    model: &Model,
    sae: PathBuf,
    pairs: &Bound<'py, PyAny>,
    top: usize,
    truncate_prompt: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let pairs = convert::pairs(pairs)?;
    let t = if truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };
    let sae = load_sae(py, model, &sae)?;
    let decs = detached(py, || {
        let ids = m.encode_pairs(&pairs, t).or_raise()?;
        decompose_pairs(m, &sae, &ids, top).or_raise()
    })?;
    report(py, &decs)
}

/// Loads an SAE; a UserWarning when it was trained on another model than `model`.
fn load_sae(py: Python<'_>, model: &Model, dir: &std::path::Path) -> PyResult<Sae> {
    let sae = detached(py, || Sae::load(dir).or_raise())?;
    if let Some(w) = sae.provenance_warning(&model.fingerprint()?) {
        warn(py, &format!("{}: {w}", dir.display()))?;
    }
    Ok(sae)
}

// ---------------------------------------------------------------------------------------------
// Model organisms

/// A model organism: a small reward model trained on synthetic data with planted rules
/// (presets: default, control, length, sycophancy, formatting, tail).
///
/// With `out`, generates and trains it there (the `organism` command). Without, returns the
/// cached one (trained on first use, about a minute). Returns {"dir", "report"}; load the model
/// with `load(result["dir"])`.
#[pyfunction]
#[pyo3(signature = (preset="default", out=None, seed=None, epochs=None, progress=None))]
pub fn organism<'py>(
    py: Python<'py>,
    preset: &str,
    out: Option<PathBuf>,
    seed: Option<u64>,
    epochs: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let bar = Bar::new(py, "organism", progress.as_ref())?;
    let (dir, rep) = match out {
        Some(out) => {
            let spec = OrganismSpec::try_preset_seeded(preset, seed).or_raise()?;
            let mut opts = BuildOptions::default();
            opts.train.epochs = epochs.unwrap_or(opts.train.epochs);
            let rep = detached(py, || Ok(build(&spec, &out, &opts, organism_events(&bar)).or_raise()?.0))?;
            (out, rep)
        }
        None => {
            if seed.is_some() || epochs.is_some() {
                return Err(input("seed and epochs need out= (the cached organisms use their preset's own)"));
            }
            let root = cache_root();
            let o = detached(py, || reward_lens_organisms::ensure(preset, &root, organism_events(&bar)).or_raise())?;
            (o.dir, o.report)
        }
    };
    let d = PyDict::new(py);
    d.set_item("dir", dir)?;
    d.set_item("report", report(py, &rep)?)?;
    Ok(d.into_any())
}

// ---------------------------------------------------------------------------------------------
// CART

fn discover_spec(o: &mut Opts<'_>) -> PyResult<DiscoverSpec> {
    let d = DiscoverSpec::default();
    let layers = |s: String, k: &str| s.parse::<Layers>().map_err(|e| input(format!("{k}: {e}")));
    Ok(DiscoverSpec {
        split: o.parsed::<SplitKind>("split", "field")?,
        field: o.get("field", d.field)?,
        tail_values: o.get("tail_subsets", OneOrMany(d.tail_values))?.0,
        alpha: o.get("alpha", d.alpha)?,
        clusters: o.get("clusters", d.clusters)?,
        units: o.list::<CandidateKind>("units", &["mlp", "heads"])?,
        mlp_layers: layers(o.get("mlp_layers", "last".to_string())?, "mlp_layers")?,
        head_layers: layers(o.get("head_layers", "all".to_string())?, "head_layers")?,
        edge_layers: layers(o.get("edge_layers", "all".to_string())?, "edge_layers")?,
        sae: o.get("sae", d.sae)?,
        // `positions`, the one name the other instruments use; `position` is its older spelling.
        position: {
            let old: Option<String> = o.get("position", None)?;
            match old {
                Some(s) => choice(&s, "position")?,
                None => o.parsed::<Positions>("positions", "pooled")?,
            }
        },
        readout: o.parsed::<PairReadout>("readout", "mean")?,
        permutations: o.get("permutations", d.permutations)?,
        family_alpha: o.get("family_alpha", d.family_alpha)?,
        fixed_z: o.get("fixed_z", d.fixed_z)?,
        min_correlation: o.get("min_correlation", d.min_correlation)?,
        random_sets: o.get("random_sets", d.random_sets)?,
        bootstrap: o.get("bootstrap", d.bootstrap)?,
        screen_top: o.get("screen_top", d.screen_top)?,
        batch_size: o.count("batch_size", d.batch_size)?,
        seed: o.get("seed", d.seed)?,
    })
}

/// Pairs for the analysis, and what errors call their source.
fn analysis_pairs(pairs: &Bound<'_, PyAny>) -> PyResult<(Vec<PairText>, PathBuf)> {
    match convert::PairArg::from_py(pairs)? {
        convert::PairArg::File(p) => Ok((reward_lens_report::datasets::read_pairs(&p).or_raise()?, p)),
        convert::PairArg::Inline(v) => Ok((v, PathBuf::from("pairs given in Python"))),
    }
}

fn analysis(py: Python<'_>, model: &Model, pairs: &Bound<'_, PyAny>, spec: DiscoverSpec) -> PyResult<Analysis> {
    let (pairs, source) = analysis_pairs(pairs)?;
    let m = model.inner.clone();
    let mut analysis = detached(py, || Analysis::new(spec, m, pairs, &source).or_raise())?;
    analysis.model_fingerprint = Some(model.fingerprint()?);
    if let Some(w) = analysis.sae.as_ref().and_then(|s| s.provenance_warning(&model.fingerprint().ok()?)) {
        warn(py, &format!("sae: {w}"))?;
    }
    Ok(analysis)
}

fn other_pairs(p: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<(Vec<PairText>, PathBuf)>> {
    p.map(|p| match convert::PairArg::from_py_as(p, what)? {
        convert::PairArg::File(f) => Ok((reward_lens_report::datasets::read_pairs(&f).or_raise()?, f)),
        convert::PairArg::Inline(v) => Ok((v, PathBuf::from(format!("{what} given in Python")))),
    })
    .transpose()
}

/// CART stage 1–3: tail-specialised units (maxT permutation threshold), their circuits
/// (co-activation clusters) and causal validation by mean ablation. Options are the `cart
/// discover` flags in snake_case (split, field, tail_subsets, alpha, clusters, units,
/// mlp_layers, head_layers, sae, position, readout, permutations, family_alpha, fixed_z,
/// min_correlation, random_sets, bootstrap, screen_top, batch_size, seed; units may include
/// "edges", with edge_layers). oracle: a `cart_oracle` JSON file made on the same pairs, to score
/// the circuits against (the report's `oracle` field).
#[pyfunction]
#[pyo3(signature = (model, pairs, oracle=None, progress=None, **options))]
pub fn cart_discover<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: &Bound<'py, PyAny>,
    oracle: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut o = Opts::new("cart_discover", options);
    let spec = discover_spec(&mut o)?;
    o.finish()?;
    let oracle = oracle.as_deref().map(OracleReport::read).transpose().or_raise()?;
    let a = analysis(py, model, pairs, spec)?;
    let bar = Bar::new(py, "CART discovery", progress.as_ref())?;
    let mut rep = detached(py, || a.discovery(None, &mut cart_events(&bar)).or_raise())?;
    if let Some(o) = &oracle {
        rep.compare_with(o).or_raise()?;
    }
    report(py, &rep)
}

/// The ablation oracle: every unit's exact mean-ablation effect on tail and head margins and the
/// smallest set whose ablation takes the tail to chance (or, with tail_drop, to (1 − tail_drop)
/// of its clean accuracy) while the head loses at most max_head_drop. Options: field,
/// tail_subsets, head_sample, max_head_drop, candidates, max_size, edges ("none", "last", "all"
/// or "0,1"), tail_drop, batch_size, seed.
#[pyfunction]
#[pyo3(signature = (model, pairs, progress=None, **options))]
pub fn cart_oracle<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: &Bound<'py, PyAny>,
    progress: Option<Py<PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut o = Opts::new("cart_oracle", options);
    let d = OracleOptions::default();
    let spec = DiscoverSpec {
        field: o.get("field", "subset".to_string())?,
        tail_values: o.get("tail_subsets", OneOrMany(vec!["tail".to_string()]))?.0,
        batch_size: o.count("batch_size", d.batch_size)?,
        seed: o.get("seed", d.seed)?,
        ..Default::default()
    };
    let edges: String = o.get("edges", "none".to_string())?;
    let opts = OracleOptions {
        head_sample: o.get("head_sample", d.head_sample)?,
        max_head_drop: o.get("max_head_drop", d.max_head_drop)?,
        candidates: o.get("candidates", d.candidates)?,
        max_size: o.get("max_size", d.max_size)?,
        edges: edges.parse::<Layers>().map_err(|e| input(format!("edges: {e}")))?,
        tail_drop: o.get("tail_drop", d.tail_drop)?,
        batch_size: spec.batch_size,
        seed: spec.seed,
        ..d
    };
    o.finish()?;
    let a = analysis(py, model, pairs, spec)?;
    let bar = Bar::new(py, "CART oracle", progress.as_ref())?;
    let rep = detached(py, || a.oracle(&opts, &mut cart_events(&bar)).or_raise())?;
    report(py, &rep)
}

/// Per circuit: consistency under label-preserving perturbations, sensitivity, coverage and the
/// vulnerability rank. discovery: a `cart_discover` JSON file made on the same pairs (None:
/// discover again). Extra options: kinds, coverage_quantile, vulnerable_share, plus the
/// discovery options.
#[pyfunction]
#[pyo3(signature = (model, pairs, discovery=None, train_pairs=None, progress=None, **options))]
pub fn cart_vulnerability<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: &Bound<'py, PyAny>,
    discovery: Option<PathBuf>,
    train_pairs: Option<&Bound<'py, PyAny>>,
    progress: Option<Py<PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut o = Opts::new("cart_vulnerability", options);
    let spec = discover_spec(&mut o)?;
    let kinds: Vec<PerturbKind> = o.list("kinds", &["whitespace", "casing", "markdown", "list-order", "synonym"])?;
    let vo = VulnerabilityOptions {
        coverage_quantile: o.get("coverage_quantile", 0.95)?,
        vulnerable_share: o.get("vulnerable_share", 0.2)?,
        batch_size: spec.batch_size,
    };
    o.finish()?;
    let a = analysis(py, model, pairs, spec)?;
    let train = other_pairs(train_pairs, "train_pairs")?;
    let bar = Bar::new(py, "CART vulnerability", progress.as_ref())?;
    let rep = detached(py, || {
        let mut ev = cart_events(&bar);
        let d = a.discovery(discovery.as_deref(), &mut ev).or_raise()?;
        let train = train.as_ref().map(|(p, s)| (p.clone(), s.as_path()));
        a.vulnerability(&d, &kinds, train, &vo, &mut ev).or_raise()
    })?;
    report(py, &rep)
}

/// The tail-generalisation bound's ingredients: |C_tail|, N_tail, the complexity term, Div
/// between tail and head circuit read-outs, and the empirical L_tail − L_head on `held_out`.
#[pyfunction]
#[pyo3(signature = (model, pairs, discovery=None, held_out=None, delta=0.05, progress=None, **options))]
#[allow(clippy::too_many_arguments)]
pub fn cart_bound<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: &Bound<'py, PyAny>,
    discovery: Option<PathBuf>,
    held_out: Option<&Bound<'py, PyAny>>,
    delta: f64,
    progress: Option<Py<PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut o = Opts::new("cart_bound", options);
    let spec = discover_spec(&mut o)?;
    o.finish()?;
    let bo = BoundOptions { delta, batch_size: spec.batch_size };
    let a = analysis(py, model, pairs, spec)?;
    let held = other_pairs(held_out, "held_out")?;
    let bar = Bar::new(py, "CART bound", progress.as_ref())?;
    let rep = detached(py, || {
        let d = a.discovery(discovery.as_deref(), &mut cart_events(&bar)).or_raise()?;
        let held = held.as_ref().map(|(p, s)| (p.clone(), s.as_path()));
        a.bound(&d, held, &bo).or_raise()
    })?;
    report(py, &rep)
}

/// Circuit-aware reward training (`cart train`): a model organism preset trained from scratch,
/// or a HuggingFace model (`model`, a Model or directory) fine-tuned on `pairs`, with any of
/// augment, regularise=(λ_div, λ_stab), curriculum=(start, end) ("natural" allowed), ensemble=M.
/// Writes the model(s) and cart_report.json under `out`; returns the report.
#[pyfunction]
#[pyo3(signature = (out, preset=None, model=None, pairs=None, held_out=None, progress=None, **options))]
#[allow(clippy::too_many_arguments)]
pub fn cart_train<'py>(
    py: Python<'py>,
    out: PathBuf,
    preset: Option<String>,
    model: Option<&Bound<'py, PyAny>>,
    pairs: Option<&Bound<'py, PyAny>>,
    held_out: Option<&Bound<'py, PyAny>>,
    progress: Option<Py<PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut o = Opts::new("cart_train", options);
    let tail_subsets: Vec<String> = o.get("tail_subsets", OneOrMany(vec!["tail".to_string()]))?.0;
    let augment: bool = o.get("augment", false)?;
    let augment_per_pair: usize = o.get("augment_per_pair", 4)?;
    let regularise: Option<(f64, f64)> = o.get("regularise", None)?;
    let reg_pairs: usize = o.get("reg_pairs", 8)?;
    let curriculum: Option<(String, String)> = o.get("curriculum", None)?;
    let ensemble: Option<usize> = o.get("ensemble", None)?;
    let kappa: f64 = o.get("kappa", 10.0)?;
    let discovery: Option<PathBuf> = o.get("discovery", None)?;
    let reference: Option<PathBuf> = o.get("reference", None)?;
    let trainable: String = o.get("trainable", "all".to_string())?;
    let epochs = o.count_opt("epochs")?;
    let lr: Option<f64> = o.get("lr", None)?;
    let batch_size = o.count_opt("batch_size")?;
    let seed: Option<u64> = o.get("seed", None)?;
    let n_train: Option<usize> = o.get("n_train", None)?;
    let n_test: Option<usize> = o.get("n_test", None)?;
    let permutations: usize = o.get("permutations", 1000)?;
    o.finish()?;
    let data = match (preset, model, pairs) {
        (Some(preset), None, None) => TrainData::Organism { preset, n_train, n_test, reference },
        (None, Some(m), Some(p)) => {
            let dir = match m.extract::<PyRef<'py, Model>>() {
                Ok(m) => m.dir.clone(),
                Err(_) => m.extract::<PathBuf>().map_err(|_| input("model: expected a Model or a directory"))?,
            };
            let (train, name) = analysis_pairs(p)?;
            TrainData::Model {
                dir,
                train,
                held_out: other_pairs(held_out, "held_out")?.map(|x| x.0).unwrap_or_default(),
                name: name.display().to_string(),
                trainable: choice(&trainable, "trainable")?,
            }
        }
        _ => return Err(input("cart_train: give preset=, or model= with pairs=")),
    };
    let curriculum = curriculum
        .map(|(a, b)| parse_curriculum(&format!("{a},{b}")))
        .transpose()
        .map_err(|e| input(format!("curriculum: {e}")))?;
    let fingerprint = match &data {
        TrainData::Model { dir, .. } => Some(reward_lens_report::fingerprint::model(Some(dir)).or_raise()?),
        TrainData::Organism { .. } => None,
    };
    let intervenes = augment || regularise.is_some() || ensemble.is_some();
    let targets =
        discovery.as_deref().map(|f| read_targets(f, intervenes, fingerprint.as_deref())).transpose().or_raise()?;
    let request = TrainRequest {
        data,
        tail_subsets,
        augment_per_pair: augment.then_some(augment_per_pair),
        regularise,
        reg_pairs,
        curriculum,
        ensemble,
        kappa,
        targets,
        epochs,
        lr,
        batch_size,
        seed,
        permutations,
        out,
    };
    let _ = parse_regularise;
    let bar = Bar::new(py, "CART training", progress.as_ref())?;
    let rep = detached(py, || cart_train_fn(&request, &mut cart_events(&bar)).or_raise())?;
    report(py, &rep)
}

/// The CART table (`cart table`): organisms × seeds × arms trained from scratch and evaluated,
/// aggregated with Student-t intervals, plus the bound's direction test. Each finished run is
/// appended to `runs` (default beside `out`); resume=True skips runs already there.
#[pyfunction]
#[pyo3(signature = (out, progress=None, **options))]
pub fn cart_table<'py>(
    py: Python<'py>,
    out: PathBuf,
    progress: Option<Py<PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut t = TableOptions::beside(&out);
    let mut o = Opts::new("cart_table", options);
    t.presets = o.get("preset", t.presets)?;
    t.seeds = o.get("seeds", t.seeds)?;
    t.arms = o.list::<Arm>("arms", &["plain", "augment", "regularise", "curriculum", "ensemble", "all"])?;
    t.runs = o.get("runs", t.runs)?;
    t.work = o.get("work", t.work)?;
    t.resume = o.get("resume", t.resume)?;
    (t.lambda_div, t.lambda_stab) = o.get("regularise", (t.lambda_div, t.lambda_stab))?;
    t.curriculum_end = o.get("curriculum_end", t.curriculum_end)?;
    t.members = o.get("ensemble", t.members)?;
    t.augment_per_pair = o.get("augment_per_pair", t.augment_per_pair)?;
    t.permutations = o.get("permutations", t.permutations)?;
    t.scale.epochs = o.get("epochs", t.scale.epochs)?;
    t.scale.n_train = o.get("n_train", t.scale.n_train)?;
    t.scale.n_test = o.get("n_test", t.scale.n_test)?;
    o.finish()?;
    let bar = Bar::new(py, "CART table", progress.as_ref())?;
    let rep = detached(py, || {
        let rep = run_table(&t, &mut cart_events(&bar)).or_raise()?;
        write_json(&out, &rep)?;
        Ok(rep)
    })?;
    report(py, &rep)
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> PyResult<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(crate::errors::py_err)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value).or_raise()?).map_err(crate::errors::py_err)
}

// ---------------------------------------------------------------------------------------------
// Audit

/// The audit: every instrument in one pass (evaluation, lens, attribution, patching, AtP and
/// faithfulness, probes, concepts, conflicts, CART tail circuits), findings in plain words,
/// and `out`/results.json + `out`/report.html. Returns results.json's content.
///
/// model: a Model (audited from its directory with its dtype and device), or None for a model
/// organism (`preset`, default "default"), whose test pairs, probes, concepts and answer key
/// become the defaults. pairs: a JSONL path, dicts or a DataFrame (None: the built-in examples,
/// or the organism's test pairs).
#[pyfunction]
#[pyo3(signature = (model=None, pairs=None, out="audit-out".into(), probes=None, concepts=None, answer_key=None,
    tail_subsets=OneOrMany(vec!["tail".to_string()]), preset=None, max_pairs=64, batch_size=16, permutations=10000, seed=0,
    truncate_prompt=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn audit<'py>(
    py: Python<'py>,
    model: Option<&Model>,
    pairs: Option<&Bound<'py, PyAny>>,
    out: PathBuf,
    probes: Option<OneOrMany<PathBuf>>,
    concepts: Option<OneOrMany<PathBuf>>,
    answer_key: Option<PathBuf>,
    tail_subsets: OneOrMany<String>,
    preset: Option<String>,
    max_pairs: usize,
    batch_size: usize,
    permutations: usize,
    seed: u64,
    truncate_prompt: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let bar = Bar::new(py, "audit", progress.as_ref())?;
    let mut options = AuditOptions { seed, max_pairs, batch_size, permutations, truncate_prompt, ..Default::default() };
    // Read and checked before an organism is built (minutes on first use).
    let answer_key: Option<serde_json::Value> = answer_key
        .map(|k| {
            let text = std::fs::read_to_string(&k).map_err(|e| input(format!("{}: cannot read: {e}", k.display())))?;
            serde_json::from_str(&text).map_err(|e| input(format!("{}: not valid JSON: {e}", k.display())))
        })
        .transpose()?;
    reward_lens_report::audit::check(&options, answer_key.as_ref()).or_raise()?;
    let mut inputs = match (model, &preset) {
        (Some(_), Some(_)) => return Err(input("audit: give model= or preset=, not both")),
        (Some(m), None) => {
            options.dtype = reward_lens_engine::runtime::parse_dtype(&m.dtype).or_raise()?;
            options.device = reward_lens_engine::runtime::parse_device(&m.device).or_raise()?;
            AuditInputs {
                model_dir: m.dir.clone(),
                model_name: m.name.clone(),
                pairs: PairSource::examples().or_raise()?,
                probes: Vec::new(),
                concepts: Vec::new(),
                options,
                answer_key: None,
                tail_subsets: Vec::new(),
            }
        }
        (None, _) => {
            let name = preset.clone().unwrap_or_else(|| "default".into());
            let root = cache_root();
            let o = detached(py, || reward_lens_organisms::ensure(&name, &root, organism_events(&bar)).or_raise())?;
            let label = format!("model organism `{name}` ({})", o.dir.display());
            AuditInputs::organism(&o.dir, label, options).or_raise()?
        }
    };
    if let Some(p) = pairs {
        inputs.pairs = match convert::PairArg::from_py(p)? {
            convert::PairArg::File(f) => PairSource::File(f),
            convert::PairArg::Inline(v) => PairSource::Inline { name: "pairs given in Python".into(), pairs: v },
        };
    }
    if answer_key.is_some() {
        inputs.answer_key = answer_key;
    }
    if probes.is_some() || concepts.is_some() {
        (inputs.probes, inputs.concepts) =
            (probes.map(|p| p.0).unwrap_or_default(), concepts.map(|c| c.0).unwrap_or_default());
    }
    inputs.tail_subsets = tail_subsets.0;
    let res = detached(py, || {
        let res = run_audit(&inputs, &mut |i: usize, n: usize, name: &str| bar.update(i, n, Some(name))).or_raise()?;
        write_files(&res, &out).or_raise()?;
        Ok(res)
    })?;
    if let Some(w) = res.identical_pairs_warning() {
        crate::model::warn(py, &w)?;
    }
    report(py, &res)
}

/// One `reward-lens` command line, run in this process as the binary runs it (same flags, same
/// files, same errors), e.g. `cli(["score", "--pairs", "p.jsonl", "--shard", "0/4", "--out",
/// "s.0.jsonl"])`. What the Ray driver's workers call: no binary is needed on the machines that
/// have the package. With `keep_model`, the model stays loaded in this process for the next
/// call with the same folder, dtype and device while the folder's files are unchanged (score,
/// eval, lens, attribute, patch, atp, faithfulness; a folder retrained in place is loaded
/// again); without it, models kept by earlier calls are dropped. `bench` is refused (it
/// runs the binary). Raises `RewardLensError` with the message the binary prints.
#[pyfunction]
#[pyo3(signature = (args, keep_model = false))]
pub fn cli(py: Python<'_>, args: &Bound<'_, PyAny>, keep_model: bool) -> PyResult<()> {
    let args = command_line(args)?;
    reward_lens_cli::keep_models(keep_model);
    crate::progress::detached(py, || {
        reward_lens_cli::run_args(&args).map_err(|m| crate::errors::raise(crate::errors::Kind::Other, m))
    })
}

/// `cli`'s command line: a list whose items are strings, paths (`os.PathLike`) or numbers, as a
/// subprocess argument list would be written. A bare string is refused: it is not split, and
/// taking it as one word would run the wrong command.
fn command_line(args: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    use pyo3::types::{PyBool, PyFloat, PyInt, PyString};
    let type_name = |o: &Bound<'_, PyAny>| o.get_type().name().map_or_else(|_| "?".to_string(), |n| n.to_string());
    if args.is_instance_of::<PyString>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "cli takes the command line as a list, e.g. cli([\"score\", \"--pairs\", \"p.jsonl\"]); got the string {:?} \
             (use shlex.split to turn a string into that list)",
            args.to_string()
        )));
    }
    let items = args.try_iter().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "cli takes the command line as a list of strings; got {}",
            type_name(args)
        ))
    })?;
    let os = PyModule::import(args.py(), "os")?;
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        let item = item?;
        let word = if item.is_instance_of::<PyString>() {
            item.extract::<String>()?
        } else if item.is_instance_of::<PyBool>() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "cli: argument {i} is a bool; flags are given by name (\"--v1-compat\"), not as True/False"
            )));
        } else if item.is_instance_of::<PyInt>() || item.is_instance_of::<PyFloat>() {
            item.str()?.to_string()
        } else if let Ok(path) = os.call_method1("fspath", (&item,)) {
            path.extract::<String>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(format!("cli: argument {i} is a bytes path; give it as str"))
            })?
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "cli: argument {i} is a {}; expected a string, a path or a number",
                type_name(&item)
            )));
        };
        out.push(word);
    }
    Ok(out)
}

/// Merges the shards of one run (their outputs, or directories holding them) into `out`: exactly
/// the file one run writes, with its fingerprint beside it (`reward-lens merge`). Refuses shards
/// of different runs, duplicates, missing and unfinished shards, naming each. `summary` (`score`
/// shards only) also receives the accuracy summary. Returns the text the command prints.
#[pyfunction]
#[pyo3(signature = (shards, out, summary = None))]
pub fn merge(py: Python<'_>, shards: &Bound<'_, PyAny>, out: PathBuf, summary: Option<PathBuf>) -> PyResult<String> {
    use reward_lens_report::merge::{merge, Printed};
    let shards = shard_paths(shards)?;
    let m = detached(py, || merge(&shards, &out, summary.as_deref()).or_raise())?;
    Ok(match m.printed {
        Printed::Stdout(t) | Printed::Stderr(t) => t,
    })
}

/// Which shards K/N of the run found in `shards` (outputs or directories) are done, partial or
/// missing, as the table `reward-lens status` prints.
#[pyfunction]
pub fn shard_status(shards: &Bound<'_, PyAny>) -> PyResult<String> {
    reward_lens_report::merge::status(&shard_paths(shards)?).or_raise()
}

/// One path (a directory of shards, most often) or a sequence of them.
fn shard_paths(shards: &Bound<'_, PyAny>) -> PyResult<Vec<PathBuf>> {
    shards
        .extract::<OneOrMany<PathBuf>>()
        .map(|s| s.0)
        .map_err(|_| input("shards: expected a path or a list of paths (shard outputs or directories holding them)"))
}
