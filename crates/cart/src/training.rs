//! `cart train` as a library call: a reward model trained with CART's interventions, either a
//! model organism from scratch or a HuggingFace reward model fine-tuned on text pairs. Writes
//! the model (or `member-K` directories) and `cart_report.json` into the output directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reward_lens_engine::{LoadOptions, PairText, RewardModel, Truncation};
use reward_lens_organisms::dataset::DEFAULT_SEED;
use reward_lens_train::{tokenize, TokenizedPair, TrainOptions, Trainable, Trainer};
use serde::Serialize;

use crate::error::{AnalysisError, Result};
use crate::interventions::{
    perturb_text_pair, train_cart, Augmentation, CartInputs, CartOutcome, CartRun, CartTrainOptions, CircuitTargets,
    Curriculum, Ensemble, PerturbTailSource, Regulariser, TailSource,
};
use crate::light::{find_targets, Light};
use crate::organism_runs::{organism_data, probe_effects, Scale};
use crate::progress::Event;
use crate::vulnerability::perturb::ALL as ALL_KINDS;

/// What is trained.
#[derive(Debug, Clone)]
pub enum TrainData {
    /// A model organism preset, generated with the seed and trained from scratch; `reference`
    /// reuses a model trained without interventions (else one is trained into `OUT/reference`).
    Organism { preset: String, n_train: Option<usize>, n_test: Option<usize>, reference: Option<PathBuf> },
    /// A HuggingFace reward model fine-tuned on text pairs (`held_out` empty: the report covers
    /// the training pairs); `name` describes the pairs in the report.
    Model { dir: PathBuf, train: Vec<PairText>, held_out: Vec<PairText>, name: String, trainable: Trainable },
}

/// A tail share of the curriculum: the data's own, or a fixed one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Share {
    Natural,
    Fixed(f64),
}

impl Share {
    fn value(self, natural: f64) -> f64 {
        match self {
            Share::Natural => natural,
            Share::Fixed(v) => v,
        }
    }
}

/// `START,END` tail shares, each `natural` or a number in [0, 1].
pub fn parse_curriculum(s: &str) -> std::result::Result<(Share, Share), String> {
    let v: Vec<&str> = s.split(',').collect();
    if v.len() != 2 {
        return Err(format!("--curriculum {s}: expected START,END (e.g. natural,0.5)"));
    }
    let p = |x: &str| -> std::result::Result<Share, String> {
        if x.trim() == "natural" {
            return Ok(Share::Natural);
        }
        let v: f64 = x.trim().parse().map_err(|_| format!("--curriculum {s}: `{x}` is not a number"))?;
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("--curriculum {s}: shares lie in [0, 1]"));
        }
        Ok(Share::Fixed(v))
    };
    Ok((p(v[0])?, p(v[1])?))
}

/// `λ_div,λ_stab`, the regulariser's two weights (`--regularise 0.1,0.1`).
pub fn parse_regularise(s: &str) -> Result<(f64, f64)> {
    let v: Vec<&str> = s.split(',').collect();
    if v.len() != 2 {
        return Err(AnalysisError::Invalid(format!("--regularise {s}: expected two numbers separated by a comma")));
    }
    let p = |x: &str| {
        x.trim().parse::<f64>().map_err(|_| AnalysisError::Invalid(format!("--regularise {s}: `{x}` is not a number")))
    };
    Ok((p(v[0])?, p(v[1])?))
}

/// Everything `cart train` takes.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub data: TrainData,
    pub tail_subsets: Vec<String>,
    /// Circuit-guided augmentation: new tail pairs per tail training pair.
    pub augment_per_pair: Option<usize>,
    /// The circuit regulariser's (λ_div, λ_stab).
    pub regularise: Option<(f64, f64)>,
    /// Tail and head pairs (each) in the regulariser's batch.
    pub reg_pairs: usize,
    /// The tail curriculum's start and end shares.
    pub curriculum: Option<(Share, Share)>,
    /// Circuit-diverse ensemble members.
    pub ensemble: Option<usize>,
    pub kappa: f64,
    /// Circuits to target (else a light discovery on the reference model).
    pub targets: Option<CircuitTargets>,
    pub epochs: Option<usize>,
    pub lr: Option<f64>,
    pub batch_size: Option<usize>,
    pub seed: Option<u64>,
    /// Permutations of the light discovery's τ.
    pub permutations: usize,
    pub out: PathBuf,
}

/// `cart_report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutput {
    pub source: String,
    pub head_accuracy: Option<f64>,
    pub tail_accuracy: Option<f64>,
    pub tail_margin: Option<f64>,
    pub head_margin: Option<f64>,
    pub probe_effect_sizes: Option<BTreeMap<String, Option<f64>>>,
    pub models: Vec<String>,
    pub run: CartRun,
}

fn io(path: &Path, what: &str, e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::Invalid(format!("{}: {what}: {e}", path.display()))
}

fn options(r: &TrainRequest, base: TrainOptions, natural: f64) -> CartTrainOptions {
    let reg = r.regularise.map(|(d, s)| Regulariser { lambda_div: d, lambda_stab: s, pairs_per_side: r.reg_pairs });
    CartTrainOptions {
        base,
        tail_subsets: r.tail_subsets.clone(),
        augmentation: r.augment_per_pair.map(|m| Augmentation { per_tail_pair: m, oversample: 2 }),
        regulariser: reg.clone(),
        curriculum: r.curriculum.map(|(a, b)| Curriculum {
            start_tail_share: a.value(natural),
            end_tail_share: b.value(natural),
            warm_fraction: 1.0,
        }),
        ensemble: r.ensemble.map(|m| Ensemble {
            members: m,
            member_regulariser: Some(reg.clone().unwrap_or_default()),
            kappa: r.kappa,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A `cart discover` report read as training targets. `intervenes`: whether augmentation, the
/// regulariser or an ensemble will read them (else the report would be dropped unread);
/// `model_fingerprint`: the fingerprint of the model being fine-tuned, when there is one, which
/// a report recording another model's is refused against (its units are that model's).
pub fn read_targets(file: &Path, intervenes: bool, model_fingerprint: Option<&str>) -> Result<CircuitTargets> {
    if !intervenes {
        return Err(AnalysisError::Invalid(
            "a discovery report's circuits are what augmentation, the regulariser and the ensemble target \
             (--augment, --regularise, --ensemble); without one of them nothing reads it"
                .into(),
        ));
    }
    let report = crate::discover::DiscoveryReport::read(file)?;
    if let (Some(then), Some(now)) = (&report.model, model_fingerprint) {
        if then != now {
            return Err(AnalysisError::Invalid(format!(
                "{}: the discovery was made with another model than the one being trained; pass one made with it",
                file.display()
            )));
        }
    }
    Ok(CircuitTargets::from_report(&report, None, 16))
}

/// Trains, saves the model(s) and writes `OUT/cart_report.json`.
pub fn train(r: &TrainRequest, progress: &mut dyn FnMut(Event<'_>)) -> Result<TrainOutput> {
    // Before the reference model trains (minutes on a real model), not after.
    crate::interventions::check_weights(&options(r, TrainOptions::default(), 0.5))?;
    std::fs::create_dir_all(&r.out).map_err(|e| io(&r.out, "cannot create", e))?;
    let light = Light { permutations: r.permutations, seed: r.seed.unwrap_or(0) };
    let needs_targets = r.augment_per_pair.is_some() || r.regularise.is_some() || r.ensemble.is_some();
    let (source, out, models, probes) = match &r.data {
        TrainData::Organism { preset, n_train, n_test, reference } => {
            let seed = r.seed.unwrap_or(DEFAULT_SEED);
            let scale = Scale { epochs: r.epochs, n_train: *n_train, n_test: *n_test };
            let data = organism_data(preset, seed, &scale, &r.out)?;
            let mut base = data.base.clone();
            if let Some(lr) = r.lr {
                base.lr = lr;
            }
            if let Some(b) = r.batch_size {
                base.batch_size = b;
            }
            let opts = options(r, base.clone(), data.natural_tail_share());
            let (targets, reference) = if needs_targets {
                let reference = match reference {
                    Some(d) => {
                        RewardModel::load(d, &LoadOptions::default()).map_err(|e| io(d, "reference model", e))?
                    }
                    None => {
                        let plain = CartTrainOptions {
                            base: base.clone(),
                            tail_subsets: r.tail_subsets.clone(),
                            ..Default::default()
                        };
                        let out = data.train_reported(&plain, None, None, "reference (plain BT)", progress)?;
                        let dir = r.out.join("reference");
                        out.members[0].save_pretrained(&dir, Some(&r.out))?;
                        progress(Event::Note(&format!("reference model (plain BT, same seed) → {}", dir.display())));
                        out.members[0].model()?
                    }
                };
                let t = match &r.targets {
                    Some(t) => t.clone(),
                    None => {
                        progress(Event::Working("finding the reference model's tail circuits"));
                        let (t, _, _) =
                            find_targets(&reference, &data.train, &data.perturbed, &r.tail_subsets, &light)?;
                        progress(Event::Done);
                        t
                    }
                };
                (Some(t), Some(reference))
            } else {
                (None, None)
            };
            if let Some(t) = &targets {
                note_targets(t, progress);
            }
            let out = data.train_reported(&opts, targets.as_ref(), reference.as_ref(), "CART", progress)?;
            let models = save_members(&out, &r.out, None)?;
            let weights = out.report.ensemble.as_ref().map_or(vec![1.0], |e| e.weights.clone());
            let trained: Vec<RewardModel> =
                out.members.iter().map(|t| t.model()).collect::<std::result::Result<_, _>>()?;
            let probes = probe_effects(&trained, &weights, &data.probes, seed)?;
            (format!("organism `{preset}` (seed {seed})"), out, models, Some(probes))
        }
        TrainData::Model { dir, train, held_out, name, trainable } => {
            let (out, models) = train_model(r, dir, train, held_out, name, *trainable, &light, progress)?;
            (format!("{} fine-tuned on {name}", dir.display()), out, models, None)
        }
    };
    let h = &out.report.held_out;
    let report = TrainOutput {
        source,
        head_accuracy: h.head_accuracy,
        tail_accuracy: h.tail_accuracy,
        tail_margin: h.tail_margin,
        head_margin: h.head_margin,
        probe_effect_sizes: probes,
        models,
        run: out.report,
    };
    let path = r.out.join("cart_report.json");
    let text = serde_json::to_string_pretty(&report).map_err(|e| io(&path, "cannot serialise", e))?;
    std::fs::write(&path, text).map_err(|e| io(&path, "cannot write", e))?;
    progress(Event::Wrote(&path));
    Ok(report)
}

fn note_targets(t: &CircuitTargets, progress: &mut dyn FnMut(Event<'_>)) {
    let msg = format!("targets: {} ({} tail units, {} head units)", t.source, t.tail_units().len(), t.head_units.len());
    progress(Event::Note(&msg));
}

#[allow(clippy::too_many_arguments)]
fn train_model(
    r: &TrainRequest,
    dir: &Path,
    text: &[PairText],
    held_text: &[PairText],
    name: &str,
    trainable: Trainable,
    light: &Light,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<(CartOutcome, Vec<String>)> {
    let reference = RewardModel::load(dir, &LoadOptions::default()).map_err(|e| io(dir, "loading", e))?;
    let (config, weights) = Trainer::load_weights(dir)?;
    let tokenized = tokenize(reference.tokenizer()?, text)?;
    let held = tokenize(reference.tokenizer()?, held_text)?;
    let is_tail: Vec<bool> = tokenized.iter().map(|p| r.tail_subsets.contains(&p.subset)).collect();
    let n_tail = is_tail.iter().filter(|&&t| t).count();
    if n_tail == 0 {
        return Err(AnalysisError::Invalid(format!(
            "{name}: no pair has a subset in --tail-subsets {}",
            r.tail_subsets.join(",")
        )));
    }
    let base = TrainOptions {
        epochs: r.epochs.unwrap_or(3),
        batch_size: r.batch_size.unwrap_or(16),
        lr: r.lr.unwrap_or(1e-4),
        seed: r.seed.unwrap_or(0),
        trainable,
        ..Default::default()
    };
    let opts = options(r, base, n_tail as f64 / tokenized.len() as f64);
    let encode = |p: &str, resp: &str| -> Result<Vec<u32>> { Ok(reference.encode(p, resp, Truncation::Error)?.ids) };
    let mut perturbed = Vec::with_capacity(text.len());
    for (i, p) in text.iter().enumerate() {
        let kind = ALL_KINDS[i % ALL_KINDS.len()];
        perturbed.push(match (is_tail[i], perturb_text_pair(p, kind, i as u64)) {
            (true, Some(q)) => Some(TokenizedPair {
                chosen: encode(&q.prompt, &q.chosen)?,
                rejected: encode(&q.prompt, &q.rejected)?,
                subset: tokenized[i].subset.clone(),
            }),
            _ => None,
        });
    }
    let needs_targets = r.augment_per_pair.is_some() || r.regularise.is_some() || r.ensemble.is_some();
    let targets = match (&r.targets, needs_targets) {
        (Some(t), true) => Some(t.clone()),
        (None, true) => {
            progress(Event::Working("finding the model's tail circuits"));
            let (t, _, _) = find_targets(&reference, &tokenized, &perturbed, &r.tail_subsets, light)?;
            progress(Event::Done);
            Some(t)
        }
        (_, false) => None,
    };
    let mut source = PerturbTailSource {
        seeds: text.iter().zip(&is_tail).filter(|(_, &t)| t).map(|(p, _)| p.clone()).collect(),
        subset: r.tail_subsets[0].clone(),
        kinds: ALL_KINDS.to_vec(),
        encode: Box::new(|p: &str, resp: &str| Ok(reference.encode(p, resp, Truncation::Error)?.ids)),
    };
    let held_or_train: &[TokenizedPair] = if held.is_empty() { &tokenized } else { &held };
    let inputs = CartInputs {
        train: &tokenized,
        held_out: held_or_train,
        perturbed: Some(&perturbed),
        validation: None,
        reference: Some(&reference),
        targets: targets.as_ref(),
    };
    let members = opts.ensemble.as_ref().map_or(1, |e| e.members);
    let steps = tokenized.len().div_ceil(opts.base.batch_size) * opts.base.epochs;
    let init = |_: u64| Ok(weights.clone());
    let src: Option<&mut dyn TailSource> = if opts.augmentation.is_some() { Some(&mut source) } else { None };
    progress(Event::Training { label: "CART", total_steps: steps * members });
    let out =
        train_cart(&config, &init, &inputs, &opts, src, |s| progress(Event::Step { step: s, steps_per_member: steps }));
    progress(Event::Done);
    let out = out?;
    let models = save_members(&out, &r.out, Some(dir))?;
    Ok((out, models))
}

/// Saves the model (or every member as `member-K`) and returns the directories.
pub fn save_members(out: &CartOutcome, dir: &Path, tokenizer: Option<&Path>) -> Result<Vec<String>> {
    let tok = tokenizer.unwrap_or(dir);
    if out.members.len() == 1 {
        out.members[0].save_pretrained(dir, Some(tok))?;
        return Ok(vec![dir.display().to_string()]);
    }
    let mut dirs = Vec::new();
    for (m, t) in out.members.iter().enumerate() {
        let d = dir.join(format!("member-{m}"));
        t.save_pretrained(&d, Some(tok))?;
        dirs.push(d.display().to_string());
    }
    Ok(dirs)
}
