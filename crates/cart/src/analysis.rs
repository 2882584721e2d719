//! `cart discover`, `vulnerability` and `bound` as library calls: what their shared flags
//! describe ([`DiscoverSpec`]: the head/tail split, the candidate units, the discovery options),
//! and [`Analysis`], a model with its pairs and split, with one method per command returning its
//! report. Reading the pairs file and loading the model stay with the caller (the binary, the
//! Python package), which also prints [`DiscoveryReport::summary`] and friends.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use reward_lens_engine::{EncodedPair, PairText, Positions, RewardModel, Truncation};
use reward_lens_instruments::sae::Sae;

use crate::bound::{bound_report, BoundOptions, BoundReport};
use crate::discover::{
    discover, CoherenceOptions, DiscoverOptions, DiscoveryReport, Layers, PairReadout, ScreeningOptions, Threshold,
    UnitOptions, ValidationOptions,
};
use crate::error::{AnalysisError, Result};
use crate::headtail::{
    scenario_representations, split_by_field, split_by_scenario, split_by_token_rarity, split_random, HeadTailSplit,
    ScenarioOptions,
};
use crate::oracle::{oracle, OracleOptions, OracleReport};
use crate::progress::Event;
use crate::vulnerability::perturb::PerturbKind;
use crate::vulnerability::{
    assess, model_encoder, perturbed_pairs, VulnerabilityInputs, VulnerabilityOptions, VulnerabilityReport,
};

fn invalid(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::Invalid(msg.into())
}

/// `name`'s place in `names` picks the variant from `all`; else an error listing the names.
fn pick<T: Copy>(s: &str, names: &[&str], all: &[T], what: &str) -> Result<T> {
    match names.iter().position(|n| *n == s) {
        Some(i) => Ok(all[i]),
        None => Err(invalid(format!("unknown {what} `{s}`: expected {}", names.join(", ")))),
    }
}

/// How the tail is defined (every split records its rule, see [`crate::headtail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKind {
    /// Pairs whose field value is one of the tail values.
    Field,
    /// Scenario frequency: the smallest k-means clusters of pooled representations.
    Frequency,
    /// Token rarity: the pairs with the rarest tokens.
    Rarity,
    /// A seeded random split: the null, for calibration.
    Random,
}

impl SplitKind {
    pub const NAMES: [&'static str; 4] = ["field", "frequency", "rarity", "random"];
}

impl FromStr for SplitKind {
    type Err = AnalysisError;
    fn from_str(s: &str) -> Result<Self> {
        use SplitKind::*;
        pick(s, &Self::NAMES, &[Field, Frequency, Rarity, Random], "split")
    }
}

/// A kind of candidate unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateKind {
    /// MLP neurons of [`DiscoverSpec::mlp_layers`].
    Mlp,
    /// Attention heads of [`DiscoverSpec::head_layers`].
    Heads,
    /// The latents of [`DiscoverSpec::sae`].
    Sae,
    /// Attention edges of [`DiscoverSpec::edge_layers`]: a head's attention from the read
    /// positions to the keys holding one token (tokens in ≥ 10 % of the tail pairs and at least
    /// twice as common there as among head pairs).
    Edges,
}

impl CandidateKind {
    pub const NAMES: [&'static str; 4] = ["mlp", "heads", "sae", "edges"];
}

impl FromStr for CandidateKind {
    type Err = AnalysisError;
    fn from_str(s: &str) -> Result<Self> {
        use CandidateKind::*;
        pick(s, &Self::NAMES, &[Mlp, Heads, Sae, Edges], "unit kind")
    }
}

/// What `cart discover`, `vulnerability` and `bound` share, one field per flag; [`Default`] is
/// the command line's defaults.
#[derive(Debug, Clone)]
pub struct DiscoverSpec {
    pub split: SplitKind,
    /// The pair field the `Field` split reads.
    pub field: String,
    /// Field values that are the tail.
    pub tail_values: Vec<String>,
    /// Head mass α of the frequency, rarity and random splits.
    pub alpha: f64,
    /// k-means clusters of the frequency split (fewer than the pairs).
    pub clusters: usize,
    /// Candidate unit kinds; a kind not listed contributes nothing.
    pub units: Vec<CandidateKind>,
    pub mlp_layers: Layers,
    pub head_layers: Layers,
    /// Layers whose attention edges (a head's attention to one key token) are candidates.
    pub edge_layers: Layers,
    /// An SAE directory, required exactly when `units` has [`CandidateKind::Sae`].
    pub sae: Option<PathBuf>,
    pub position: Positions,
    pub readout: PairReadout,
    /// Label permutations of the maxT threshold (unless `fixed_z`).
    pub permutations: usize,
    pub family_alpha: f64,
    pub fixed_z: Option<f64>,
    pub min_correlation: f64,
    /// Random sets in the ablation null; 0 disables causal validation.
    pub random_sets: usize,
    pub bootstrap: usize,
    /// Units screened by attribution patching; 0 disables screening.
    pub screen_top: usize,
    pub batch_size: usize,
    /// Seeds the split (frequency, random), the permutations and the bootstrap.
    pub seed: u64,
}

impl Default for DiscoverSpec {
    fn default() -> Self {
        Self {
            split: SplitKind::Field,
            field: "subset".into(),
            tail_values: vec!["tail".into()],
            alpha: 0.8,
            clusters: 20,
            units: vec![CandidateKind::Mlp, CandidateKind::Heads],
            mlp_layers: Layers::Last,
            head_layers: Layers::All,
            edge_layers: Layers::All,
            sae: None,
            position: Positions::Pooled,
            readout: PairReadout::Mean,
            permutations: 1000,
            family_alpha: 0.05,
            fixed_z: None,
            min_correlation: 0.3,
            random_sets: 20,
            bootstrap: 2000,
            screen_top: 16,
            batch_size: 16,
            seed: 0,
        }
    }
}

impl DiscoverSpec {
    /// The discovery options this spec describes.
    pub fn options(&self) -> DiscoverOptions {
        let has = |k| self.units.contains(&k);
        DiscoverOptions {
            units: UnitOptions {
                mlp: if has(CandidateKind::Mlp) { self.mlp_layers.clone() } else { Layers::None },
                heads: if has(CandidateKind::Heads) { self.head_layers.clone() } else { Layers::None },
                position: self.position,
                readout: self.readout,
                edges: if has(CandidateKind::Edges) { self.edge_layers.clone() } else { Layers::None },
            },
            threshold: match self.fixed_z {
                Some(z) => Threshold::FixedZ { z },
                None => Threshold::MaxT { permutations: self.permutations, family_alpha: self.family_alpha },
            },
            coherence: CoherenceOptions { min_correlation: self.min_correlation, ..Default::default() },
            validation: ValidationOptions {
                enabled: self.random_sets > 0,
                random_sets: self.random_sets,
                bootstrap: self.bootstrap,
                level: 0.95,
            },
            screening: ScreeningOptions { enabled: self.screen_top > 0, top: self.screen_top },
            batch_size: self.batch_size,
            seed: self.seed,
        }
    }

    /// The SAE whose latents are candidates, when `units` asks for them.
    pub fn load_sae(&self) -> Result<Option<Sae>> {
        match (&self.sae, self.units.contains(&CandidateKind::Sae)) {
            (Some(d), true) => Sae::load(d)
                .map(Some)
                .map_err(|e| AnalysisError::from(e).at(format!("{}: cannot load the SAE", d.display()))),
            // Worded for both shells: the command's flags and Python's options.
            (None, true) => Err(invalid("units include `sae` but no SAE folder is given (--sae DIR; sae= in Python)")),
            (Some(_), false) => Err(invalid("an SAE folder is given (--sae; sae=) but the units do not include `sae`")),
            (None, false) => Ok(None),
        }
    }

    /// The head/tail split of `pairs` (encoded as `inputs`); errors name `source`, the file.
    pub fn split(
        &self,
        model: &RewardModel,
        pairs: &[PairText],
        inputs: &[EncodedPair],
        source: &Path,
    ) -> Result<HeadTailSplit> {
        let at = |e: AnalysisError| e.at(source.display());
        match self.split {
            SplitKind::Field => {
                let values: Vec<String> = pairs.iter().map(|p| field_value(p, &self.field)).collect();
                let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                let tail: Vec<&str> = self.tail_values.iter().map(String::as_str).collect();
                split_by_field(&refs, &self.field, &tail).map_err(|e| {
                    let mut seen = refs.clone();
                    seen.sort();
                    seen.dedup();
                    let (file, field, seen) = (source.display(), &self.field, seen.join(", "));
                    invalid(format!("{file}: {e} (the pairs' values of `{field}`: {seen})"))
                })
            }
            SplitKind::Frequency => {
                let opts =
                    ScenarioOptions { alpha: self.alpha, k: self.clusters, seed: self.seed, ..Default::default() };
                let reps = scenario_representations(model, inputs, &opts).map_err(at)?;
                split_by_scenario(&reps, &opts).map_err(at)
            }
            SplitKind::Rarity => {
                let items: Vec<Vec<u32>> =
                    inputs.iter().map(|p| [p.chosen.as_slice(), p.rejected.as_slice()].concat()).collect();
                split_by_token_rarity(&items, self.alpha).map_err(at)
            }
            SplitKind::Random => {
                let n = pairs.len();
                // α checked here, so a value outside (0, 1) is named as such, not as an empty side.
                let k = crate::headtail::tail_count(self.alpha, n, "random split").map_err(at)?;
                split_random(n, k, self.seed).map_err(at)
            }
        }
    }
}

/// A field's value as the split compares it: strings as they are, other JSON as JSON, absent or
/// null as "".
fn field_value(p: &PairText, field: &str) -> String {
    match p.field(field) {
        Some(serde_json::Value::String(s)) => s,
        Some(v) if !v.is_null() => v.to_string(),
        _ => String::new(),
    }
}

impl DiscoveryReport {
    /// A report `cart discover --out` wrote.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| invalid(format!("{}: cannot read: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            let p = path.display();
            invalid(format!("{p}: not a discovery report (write one with `reward-lens cart discover --out`): {e}"))
        })
    }
}

/// A model with its pairs (encoded with its chat template), their split and the SAE: what
/// `discover`, `vulnerability` and `bound` work on.
pub struct Analysis {
    pub spec: DiscoverSpec,
    /// Shared, so a caller that keeps the model (the Python package) need not reload it.
    pub model: std::sync::Arc<RewardModel>,
    pub pairs: Vec<PairText>,
    pub inputs: Vec<EncodedPair>,
    pub split: HeadTailSplit,
    pub sae: Option<Sae>,
    /// Where the pairs came from (named in errors).
    pub source: PathBuf,
    /// The model folder's fingerprint when the caller knows it: stamped on discoveries made
    /// here and checked against the ones read (`None`: neither).
    pub model_fingerprint: Option<String>,
}

impl Analysis {
    /// Encodes `pairs` (read from `source`), splits them and loads the SAE.
    pub fn new(
        spec: DiscoverSpec,
        model: impl Into<std::sync::Arc<RewardModel>>,
        pairs: Vec<PairText>,
        source: &Path,
    ) -> Result<Self> {
        let model = model.into();
        let (inputs, split) = encode_and_split(&spec, &model, &pairs, source)?;
        let sae = spec.load_sae()?;
        Ok(Self { spec, model, pairs, inputs, split, sae, source: source.to_path_buf(), model_fingerprint: None })
    }

    /// The circuits: read from `given` (checked against these pairs and the SAE), else
    /// discovered now.
    pub fn discovery(&self, given: Option<&Path>, progress: &mut dyn FnMut(Event<'_>)) -> Result<DiscoveryReport> {
        let Some(f) = given else {
            progress(Event::Working("discovering circuits"));
            let mut r = discover(&self.model, &self.inputs, &self.split, &self.spec.options(), self.sae.as_ref())
                .map_err(|e| e.at(format!("circuit discovery on {}", self.source.display())))?;
            r.model = self.model_fingerprint.clone();
            progress(Event::Done);
            return Ok(r);
        };
        let r = DiscoveryReport::read(f)?;
        if r.n_pairs != self.pairs.len() {
            return Err(invalid(format!(
                "{}: the discovery ran on {} pairs but {} holds {}; pass the pairs file it was made from",
                f.display(),
                r.n_pairs,
                self.source.display(),
                self.pairs.len()
            )));
        }
        if r.input.as_ref().is_some_and(|h| *h != crate::discover::inputs_hash(&self.inputs)) {
            return Err(invalid(format!(
                "{}: the discovery ran on other pairs than {} holds (their texts or order differ); pass the pairs \
                 file it was made from",
                f.display(),
                self.source.display()
            )));
        }
        if let (Some(then), Some(now)) = (&r.model, &self.model_fingerprint) {
            if then != now {
                return Err(invalid(format!(
                    "{}: the discovery was made with another model (fingerprint {then}; this one is {now}): its \
                     units and ablation values are that model's; pass the report made with this model",
                    f.display()
                )));
            }
        }
        if r.split != self.split {
            let (then, now) = (crate::text::describe_rule(&r.split.rule), crate::text::describe_rule(&self.split.rule));
            return Err(invalid(format!(
                "{}: the discovery split the pairs otherwise (tail: {then}, {} pairs) than these options do (tail: \
                 {now}, {} pairs); pass the split options it was made with",
                f.display(),
                r.split.n_tail,
                self.split.n_tail
            )));
        }
        if r.sae_site.is_some() && self.sae.is_none() {
            let f = f.display();
            return Err(invalid(format!(
                "{f}: the circuits include SAE latents; pass the same --sae DIR with --units …,sae"
            )));
        }
        Ok(r)
    }

    /// The ablation oracle on these pairs and this split (every unit of the model).
    pub fn oracle(&self, opts: &OracleOptions, progress: &mut dyn FnMut(Event<'_>)) -> Result<OracleReport> {
        oracle(&self.model, &self.inputs, &self.split, opts, progress)
            .map_err(|e| e.at(format!("the ablation oracle on {}", self.source.display())))
    }

    /// Other pairs (training or held-out, read from `source`) encoded and split the same way;
    /// `None`: these pairs and `report`'s split.
    fn other(
        &self,
        report: &DiscoveryReport,
        other: Option<(Vec<PairText>, &Path)>,
    ) -> Result<(Vec<EncodedPair>, HeadTailSplit)> {
        match other {
            Some((pairs, source)) => encode_and_split(&self.spec, &self.model, &pairs, source),
            None => Ok((self.inputs.clone(), report.split.clone())),
        }
    }

    /// How fragile each of `report`'s circuits is, perturbing every tail pair with `kinds`;
    /// coverage over `train` (default: these pairs).
    pub fn vulnerability(
        &self,
        report: &DiscoveryReport,
        kinds: &[PerturbKind],
        train: Option<(Vec<PairText>, &Path)>,
        opts: &VulnerabilityOptions,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<VulnerabilityReport> {
        if report.circuits.is_empty() {
            return Err(invalid("no tail circuit was found: nothing to assess (see `reward-lens cart discover`)"));
        }
        let tail: Vec<EncodedPair> = report.split.tail.iter().map(|&i| self.inputs[i].clone()).collect();
        let mut perturbed = Vec::with_capacity(tail.len());
        for &i in &report.split.tail {
            let (p, seed) = (&self.pairs[i], self.spec.seed ^ i as u64);
            let encode = model_encoder(&self.model);
            perturbed.push(
                perturbed_pairs(&p.prompt, &p.chosen, &p.rejected, kinds, seed, encode)
                    .map_err(|e| e.at(format!("{}: perturbing", p.location())))?,
            );
        }
        let (train_inputs, train_split) = self.other(report, train)?;
        progress(Event::Working("assessing circuit vulnerability"));
        let inputs =
            VulnerabilityInputs { tail: &tail, perturbed: &perturbed, train: &train_inputs, train_split: &train_split };
        let v = assess(&self.model, report, &inputs, opts, self.sae.as_ref())?;
        progress(Event::Done);
        Ok(v)
    }

    /// The bound's ingredients for `report`'s circuits; L_tail − L_head on `held_out` (default:
    /// these pairs).
    pub fn bound(
        &self,
        report: &DiscoveryReport,
        held_out: Option<(Vec<PairText>, &Path)>,
        opts: &BoundOptions,
    ) -> Result<BoundReport> {
        let (eval, eval_split) = self.other(report, held_out)?;
        let sae = self.sae.as_ref();
        bound_report(&self.model, report, &self.inputs, &report.split, &eval, &eval_split, opts, sae)
    }
}

fn encode_and_split(
    spec: &DiscoverSpec,
    model: &RewardModel,
    pairs: &[PairText],
    source: &Path,
) -> Result<(Vec<EncodedPair>, HeadTailSplit)> {
    let inputs = model.encode_pairs(pairs, Truncation::Error)?;
    let split = spec.split(model, pairs, &inputs, source)?;
    Ok((inputs, split))
}

/// `cart discover` in one call: encode, split and discover (the summary is
/// [`DiscoveryReport::summary`]).
pub fn discover_pairs(
    spec: DiscoverSpec,
    model: RewardModel,
    pairs: Vec<PairText>,
    source: &Path,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<DiscoveryReport> {
    Analysis::new(spec, model, pairs, source)?.discovery(None, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::parse_regularise;

    #[test]
    fn names_parse_and_errors_say_what_was_given() {
        assert_eq!("rarity".parse::<SplitKind>().unwrap(), SplitKind::Rarity);
        assert_eq!("heads".parse::<CandidateKind>().unwrap(), CandidateKind::Heads);
        assert_eq!("difference".parse::<PairReadout>().unwrap(), PairReadout::Difference);
        assert_eq!("list_order".parse::<PerturbKind>().unwrap(), PerturbKind::ListOrder);
        assert_eq!("0, 2".parse::<Layers>().unwrap(), Layers::List(vec![0, 2]));
        assert_eq!("none".parse::<Layers>().unwrap(), Layers::None);
        let e = "x,1".parse::<Layers>().unwrap_err().to_string();
        assert_eq!(e, "x,1: expected `last`, `all`, `none` or layers like `0,2`");
        let e = "nope".parse::<SplitKind>().unwrap_err().to_string();
        assert_eq!(e, "unknown split `nope`: expected field, frequency, rarity, random");
        assert_eq!(parse_regularise("0.1, 0.2").unwrap(), (0.1, 0.2));
        let e = parse_regularise("0.1").unwrap_err().to_string();
        assert_eq!(e, "--regularise 0.1: expected two numbers separated by a comma");
    }

    #[test]
    fn the_default_spec_is_the_default_discovery() {
        assert_eq!(DiscoverSpec::default().options(), DiscoverOptions::default());
        let spec = DiscoverSpec {
            units: vec![CandidateKind::Heads],
            fixed_z: Some(2.0),
            random_sets: 0,
            ..Default::default()
        };
        let o = spec.options();
        assert_eq!((o.units.mlp, o.units.heads), (Layers::None, Layers::All));
        assert_eq!(o.threshold, Threshold::FixedZ { z: 2.0 });
        assert!(!o.validation.enabled);
        let sae = DiscoverSpec { units: vec![CandidateKind::Sae], ..Default::default() }.load_sae();
        assert_eq!(
            sae.err().map(|e| e.to_string()).as_deref(),
            Some("units include `sae` but no SAE folder is given (--sae DIR; sae= in Python)")
        );
    }
}
