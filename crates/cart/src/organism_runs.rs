//! CART on model organisms: one organism × seed's data (train, test, perturbed copies, a fresh
//! validation draw, probes), the augmentation source that draws more of its rare scenario, and
//! probe effect sizes of a trained model or ensemble.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use reward_lens_engine::synth::LlamaShape;
use reward_lens_engine::{ChatTokenizer, RewardModel, Rng, Tensor, Truncation};
use reward_lens_instruments::probes::{analyze, probe, ProbeInput, ProbeOptions, ProbeScore};
use reward_lens_organisms::build::{init_weights, tokenize, BuildOptions};
use reward_lens_organisms::{
    perturb_record, sample_pairs, try_generate, write_files, OrganismSpec, PlantedRules, MODEL_MAX_LENGTH,
};
use reward_lens_train::{TokenizedPair, TrainOptions};

use crate::error::{AnalysisError, Result};
use crate::interventions::{
    train_cart, CartInputs, CartOutcome, CartStep, CartTrainOptions, CircuitTargets, TailSource,
};
use crate::progress::Event;

/// Augmentation for organisms: fresh pairs of the rare scenario from the organism's own sampler.
pub struct OrganismTail<'a> {
    pub rules: PlantedRules,
    pub tok: &'a ChatTokenizer,
    pub first_id: usize,
}

impl TailSource for OrganismTail<'_> {
    fn draw(&mut self, n: usize, seed: u64) -> Result<Vec<TokenizedPair>> {
        let recs = sample_pairs(&self.rules, n, n, self.first_id, &mut Rng::new(seed));
        tokenize(self.tok, &recs).map_err(|e| AnalysisError::Invalid(e.to_string()))
    }
    fn describe(&self) -> String {
        "fresh draws of the organism's rare (tail) scenario".into()
    }
}

/// Overrides of an organism's size and training length (None: the preset's / the build default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Scale {
    pub epochs: Option<usize>,
    pub n_train: Option<usize>,
    pub n_test: Option<usize>,
}

/// Everything one organism × seed needs.
pub struct OrganismData {
    pub preset: String,
    pub seed: u64,
    pub rules: PlantedRules,
    pub tok: ChatTokenizer,
    pub train: Vec<TokenizedPair>,
    pub test: Vec<TokenizedPair>,
    /// A label-preserving perturbed copy of each training pair (None where none exists).
    pub perturbed: Vec<Option<TokenizedPair>>,
    /// A fresh seeded draw (ensemble weights read it).
    pub validation: Vec<TokenizedPair>,
    pub probes: Vec<ProbeInput>,
    pub config: serde_json::Value,
    pub shape: LlamaShape,
    /// The organism's default training options with this seed and scale.
    pub base: TrainOptions,
}

/// Generates organism `preset` with `seed` (files written into `dir`) and tokenizes everything.
pub fn organism_data(preset: &str, seed: u64, scale: &Scale, dir: &Path) -> Result<OrganismData> {
    let mut spec = OrganismSpec::try_preset(preset)?;
    spec.seed = seed;
    if let Some(n) = scale.n_train {
        spec.n_train = n;
    }
    if let Some(n) = scale.n_test {
        spec.n_test = n;
    }
    let ds = try_generate(&spec)?;
    write_files(dir, &ds)?;
    let tok = ChatTokenizer::from_dir(dir, MODEL_MAX_LENGTH, Some("llama"))?;
    let train = tokenize(&tok, &ds.train)?;
    let test = tokenize(&tok, &ds.test)?;
    let rules = spec.rules;
    let mut perturbed = Vec::with_capacity(ds.train.len());
    for (i, rec) in ds.train.iter().enumerate() {
        perturbed.push(match perturb_record(rec, &rules, seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
            Some(p) => Some(tokenize(&tok, std::slice::from_ref(&p))?.remove(0)),
            None => None,
        });
    }
    let n_val = 100;
    let first = ds.train.len() + ds.test.len();
    let val_recs = sample_pairs(&rules, n_val, n_val, first, &mut Rng::new(seed ^ 0x5641_4C44));
    let validation = tokenize(&tok, &val_recs)?;
    let enc = |p: &str, r: &str| -> Result<Vec<u32>> { Ok(tok.encode_pair(p, r, Truncation::Error)?.ids) };
    let probes = ds
        .probes
        .iter()
        .map(|p| {
            Ok(ProbeInput {
                id: p.id.clone(),
                dimension: p.dimension.clone(),
                neutral: enc(&p.prompt, &p.neutral)?,
                biased: enc(&p.prompt, &p.biased)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let build = BuildOptions::default();
    let shape = build.shape.llama();
    let mut base = build.train.clone();
    base.seed = seed;
    if let Some(e) = scale.epochs {
        base.epochs = e;
    }
    Ok(OrganismData {
        preset: preset.to_string(),
        seed,
        rules,
        tok,
        train,
        test,
        perturbed,
        validation,
        probes,
        config: shape.config_json(),
        shape,
        base,
    })
}

impl OrganismData {
    pub fn natural_tail_share(&self) -> f64 {
        self.train.iter().filter(|p| p.subset == "tail").count() as f64 / self.train.len().max(1) as f64
    }

    /// The organism's seeded initial weights.
    pub fn init(&self) -> impl Fn(u64) -> Result<HashMap<String, Tensor>> + '_ {
        move |s| init_weights(&self.shape, s).map_err(|e| AnalysisError::Invalid(e.to_string()))
    }

    /// Optimizer steps per member of a run with `opts`.
    pub fn steps(&self, opts: &CartTrainOptions) -> usize {
        self.train.len().div_ceil(opts.base.batch_size) * opts.base.epochs
    }

    /// Trains one arm from scratch on this organism (`on_step` sees every member's steps).
    pub fn train_arm(
        &self,
        opts: &CartTrainOptions,
        targets: Option<&CircuitTargets>,
        reference: Option<&RewardModel>,
        on_step: impl FnMut(&CartStep),
    ) -> Result<CartOutcome> {
        let inputs = CartInputs {
            train: &self.train,
            held_out: &self.test,
            perturbed: Some(&self.perturbed),
            validation: Some(&self.validation),
            reference,
            targets,
        };
        let mut source =
            OrganismTail { rules: self.rules, tok: &self.tok, first_id: self.train.len() + self.test.len() + 1000 };
        let init = self.init();
        let src: Option<&mut dyn TailSource> = if opts.augmentation.is_some() { Some(&mut source) } else { None };
        train_cart(&self.config, &init, &inputs, opts, src, on_step)
    }
}

impl OrganismData {
    /// [`train_arm`](Self::train_arm) between `Training` and `Done` events; errors name the
    /// organism, the seed and the run.
    pub fn train_reported(
        &self,
        opts: &CartTrainOptions,
        targets: Option<&CircuitTargets>,
        reference: Option<&RewardModel>,
        label: &str,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<CartOutcome> {
        let steps = self.steps(opts);
        let members = opts.ensemble.as_ref().map_or(1, |e| e.members);
        progress(Event::Training { label, total_steps: steps * members });
        let out = self
            .train_arm(opts, targets, reference, |s| progress(Event::Step { step: s, steps_per_member: steps }))
            .map_err(|e| {
                AnalysisError::Invalid(format!("training `{}` (seed {}): {label}: {e}", self.preset, self.seed))
            });
        progress(Event::Done);
        out
    }
}

/// Probe effect sizes (Cohen's d per dimension) of a model or a weighted ensemble: the ensemble's
/// probe delta is the weighted mean of its members'.
pub fn probe_effects(
    models: &[RewardModel],
    weights: &[f64],
    probes: &[ProbeInput],
    seed: u64,
) -> Result<BTreeMap<String, Option<f64>>> {
    let opts = ProbeOptions { permutations: 2000, seed, ..Default::default() };
    let mut combined: Option<Vec<ProbeScore>> = None;
    for (m, w) in models.iter().zip(weights) {
        let r = probe(m, probes, &opts)?;
        match &mut combined {
            None => {
                combined = Some(
                    r.probes
                        .into_iter()
                        .map(|mut p| {
                            p.neutral_score *= w;
                            p.biased_score *= w;
                            p.delta *= w;
                            p
                        })
                        .collect(),
                )
            }
            Some(c) => {
                for (a, b) in c.iter_mut().zip(r.probes) {
                    a.neutral_score += w * b.neutral_score;
                    a.biased_score += w * b.biased_score;
                    a.delta += w * b.delta;
                }
            }
        }
    }
    let report = analyze(combined.unwrap_or_default(), &opts);
    Ok(report.dimensions.into_iter().map(|d| (d.dimension, d.cohens_d)).collect())
}
