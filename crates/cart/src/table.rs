//! The CART table: every intervention arm against plain Bradley–Terry on model organisms ×
//! seeds. Each finished run is appended to a runs JSONL at once (so a long table resumes); the
//! aggregate gives, per organism × arm, the mean over seeds with a 95% Student-t interval, and
//! the bound's direction test (Spearman of the held-out gap against `|C_tail|/√N_tail` and Div).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use reward_lens_engine::{LoadOptions, RewardModel};
use reward_lens_instruments::stats::{spearman_permutation, t_interval};
use reward_lens_organisms::dataset::DEFAULT_SEED;
use reward_lens_organisms::OrganismSpec;
use serde::{Deserialize, Serialize};

pub use reward_lens_instruments::stats::{Correlation, MeanCi as Interval};

use crate::error::{AnalysisError, Result};
use crate::interventions::{
    Augmentation, CartOutcome, CartTrainOptions, CircuitTargets, Curriculum, Ensemble, HeadTailMetrics, Regulariser,
};
use crate::light::{bound_point, find_targets, Light};
use crate::organism_runs::{organism_data, probe_effects, OrganismData, Scale};
use crate::progress::Event;

const SEED_RANDOM_GUIDE: u64 = 0x5241_4E44;

/// One intervention arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// Plain Bradley–Terry.
    Plain,
    /// Circuit-guided augmentation.
    Augment,
    /// The circuit regulariser (Div + stability).
    Regularise,
    /// The tail curriculum.
    Curriculum,
    /// The circuit-diverse ensemble.
    Ensemble,
    /// All four together.
    All,
    /// Augmentation with as many extra tail pairs, kept without looking at any circuit.
    AugmentUnguided,
    /// Augmentation guided by random units (same kinds and sites as the tail circuits).
    AugmentRandom,
    /// The regulariser on random units (same kinds and sites as the circuits).
    RegulariseRandom,
}

impl Arm {
    pub const ALL: [Arm; 9] = [
        Arm::Plain,
        Arm::Augment,
        Arm::Regularise,
        Arm::Curriculum,
        Arm::Ensemble,
        Arm::All,
        Arm::AugmentUnguided,
        Arm::AugmentRandom,
        Arm::RegulariseRandom,
    ];
    /// The arms of the original table (the guidance controls are asked for by name).
    pub const INTERVENTIONS: [Arm; 6] =
        [Arm::Plain, Arm::Augment, Arm::Regularise, Arm::Curriculum, Arm::Ensemble, Arm::All];
    pub fn name(&self) -> &'static str {
        match self {
            Arm::Plain => "plain",
            Arm::Augment => "augment",
            Arm::Regularise => "regularise",
            Arm::Curriculum => "curriculum",
            Arm::Ensemble => "ensemble",
            Arm::All => "all",
            Arm::AugmentUnguided => "augment-unguided",
            Arm::AugmentRandom => "augment-random",
            Arm::RegulariseRandom => "regularise-random",
        }
    }

    /// Guided by random units instead of the discovered circuits.
    pub fn random_guide(&self) -> bool {
        matches!(self, Arm::AugmentRandom | Arm::RegulariseRandom)
    }
}

impl std::str::FromStr for Arm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Arm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown arm `{s}`: expected {}", Arm::ALL.map(|a| a.name()).join(", ")))
    }
}

/// What a table runs.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// Organism presets.
    pub presets: Vec<String>,
    /// Seeds per organism (seed k uses data and initialisation seed 2024 + k).
    pub seeds: usize,
    pub arms: Vec<Arm>,
    /// One JSON line per finished run.
    pub runs: PathBuf,
    /// Organism files, reference models and circuit targets.
    pub work: PathBuf,
    /// Skip runs already in the runs file (else an existing runs file is an error).
    pub resume: bool,
    pub lambda_div: f64,
    pub lambda_stab: f64,
    /// Tail share of the last curriculum batch (the first has the data's natural share).
    pub curriculum_end: f64,
    pub members: usize,
    pub augment_per_pair: usize,
    /// Permutations of the light discoveries' τ.
    pub permutations: usize,
    pub scale: Scale,
}

impl TableOptions {
    /// The defaults, with the runs file and work directory beside `out` (`.runs.jsonl`, `.work`).
    pub fn beside(out: &Path) -> Self {
        Self {
            presets: vec!["tail".into(), "control".into()],
            seeds: 3,
            arms: Arm::INTERVENTIONS.to_vec(),
            runs: beside(out, ".runs.jsonl"),
            work: beside(out, ".work"),
            resume: false,
            lambda_div: 0.1,
            lambda_stab: 0.1,
            curriculum_end: 0.5,
            members: 3,
            augment_per_pair: 4,
            permutations: 1000,
            scale: Scale::default(),
        }
    }
}

/// `out` with its extension replaced by `suffix` (`cart_table.json` → `cart_table.runs.jsonl`).
pub fn beside(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().map_or("cart_table".to_string(), |s| s.to_string_lossy().to_string());
    out.with_file_name(format!("{stem}{suffix}"))
}

/// One finished run of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub organism: String,
    pub seed: u64,
    pub arm: Arm,
    pub held_out: HeadTailMetrics,
    /// Cohen's d per probe dimension.
    pub probe_d: BTreeMap<String, Option<f64>>,
    /// Tail circuits of the trained model (ensembles: the members' mean).
    pub c_tail: f64,
    /// Distinct tail training pairs (with augmentation).
    pub n_tail: usize,
    /// `|C_tail| / √N_tail`.
    pub complexity: f64,
    /// Standardised mean distance of the circuit units, tail vs head (ensembles: members' mean).
    pub div: Option<f64>,
    /// Held-out `L_tail − L_head`.
    pub l_gap: Option<f64>,
    pub disagreement_head: Option<f64>,
    pub disagreement_tail: Option<f64>,
    pub steps: usize,
    pub members: usize,
    pub seconds: f64,
    /// Fingerprint of the table's settings ([`settings`]) the run was made with: a resumed table
    /// refuses runs of other settings ("" in records that predate it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub settings: String,
}

/// Everything besides the grid (organisms × seeds × arms) that changes a run's numbers.
pub fn settings(o: &TableOptions) -> serde_json::Value {
    serde_json::json!({
        "lambda_div": o.lambda_div, "lambda_stab": o.lambda_stab, "curriculum_end": o.curriculum_end,
        "members": o.members, "augment_per_pair": o.augment_per_pair, "permutations": o.permutations,
        "epochs": o.scale.epochs, "n_train": o.scale.n_train, "n_test": o.scale.n_test,
    })
}

impl RunRecord {
    /// Held-out accuracies, tail margin, the bound's ingredients and the time, on one line.
    pub fn summary(&self) -> String {
        let opt = |x: Option<f64>| x.map_or("undefined".into(), |v| format!("{v:+.3}"));
        format!(
            "head {:.1}% tail {:.1}% tail margin {} · |C_tail| {:.1} Div {} · {:.0} s",
            100.0 * self.held_out.head_accuracy.unwrap_or(f64::NAN),
            100.0 * self.held_out.tail_accuracy.unwrap_or(f64::NAN),
            opt(self.held_out.tail_margin),
            self.c_tail,
            opt(self.div),
            self.seconds
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TableRow {
    pub organism: String,
    pub arm: Arm,
    pub seeds: Vec<u64>,
    pub metrics: BTreeMap<String, Interval>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BoundDirection {
    pub description: String,
    pub gap_vs_complexity: Correlation,
    pub gap_vs_div: Correlation,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub ci_method: String,
    pub organisms: Vec<String>,
    pub seeds: Vec<u64>,
    pub arms: Vec<Arm>,
    pub settings: serde_json::Value,
    pub runs_file: String,
    pub rows: Vec<TableRow>,
    pub bound_direction: BoundDirection,
}

fn io(path: &Path, what: &str, e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::Invalid(format!("{}: {what}: {e}", path.display()))
}

/// The finished runs in a runs file (none when it does not exist).
pub fn read_runs(path: &Path) -> Result<Vec<RunRecord>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| io(path, &format!("line {}: not a run record", i + 1), e)))
        .collect()
}

pub fn append_run(path: &Path, r: &RunRecord) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io(path, "cannot open for appending", e))?;
    let line = serde_json::to_string(r).map_err(|e| io(path, "cannot serialise", e))?;
    writeln!(f, "{line}").map_err(|e| io(path, "cannot write", e))
}

/// Runs (or resumes) the table and aggregates every run in the runs file that it covers.
pub fn run_table(o: &TableOptions, progress: &mut dyn FnMut(Event<'_>)) -> Result<TableReport> {
    if o.seeds == 0 || o.presets.is_empty() || o.arms.is_empty() {
        return Err(AnalysisError::Invalid("need at least one organism, one seed and one arm".into()));
    }
    for p in &o.presets {
        OrganismSpec::try_preset(p)?;
    }
    if let Some(dir) = o.runs.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "cannot create", e))?;
    }
    let mut records = if o.resume { read_runs(&o.runs)? } else { Vec::new() };
    if !o.resume && o.runs.exists() {
        return Err(AnalysisError::Invalid(format!(
            "{} exists: pass --resume to continue it (finished runs are skipped), or choose another --runs",
            o.runs.display()
        )));
    }
    // Runs of other settings would be averaged with these as if they were the same experiment.
    let id = reward_lens_engine::hash::Fnv::of(settings(o).to_string().as_bytes()).hex();
    if let Some(i) = records.iter().position(|r| !r.settings.is_empty() && r.settings != id) {
        return Err(AnalysisError::Invalid(format!(
            "{}: line {} was run with other settings than these ({}); resume with the settings that started it, or \
             choose another --runs",
            o.runs.display(),
            i + 1,
            settings(o)
        )));
    }
    let mut arms = o.arms.clone();
    arms.sort();
    arms.dedup();
    let seeds: Vec<u64> = (0..o.seeds as u64).map(|k| DEFAULT_SEED + k).collect();
    let tails = vec!["tail".to_string()];
    let total = o.presets.len() * seeds.len() * arms.len();
    let mut done_count = 0;
    for organism in &o.presets {
        for &seed in &seeds {
            let have = |arm: Arm, recs: &[RunRecord]| {
                recs.iter().any(|r| &r.organism == organism && r.seed == seed && r.arm == arm)
            };
            let todo: Vec<Arm> = arms.iter().copied().filter(|&arm| !have(arm, &records)).collect();
            done_count += arms.len() - todo.len();
            if todo.is_empty() {
                continue;
            }
            // The reference model and its circuit targets are reused from here: per settings.
            let dir = o.work.join(format!("{organism}-s{seed}-{}", &id[..8]));
            let data = organism_data(organism, seed, &o.scale, &dir)?;
            let light = Light { permutations: o.permutations, seed };
            let plain_opts =
                CartTrainOptions { base: data.base.clone(), tail_subsets: tails.clone(), ..Default::default() };
            // The reference: the plain arm's model, reused from disk when there.
            let ref_dir = dir.join("plain");
            let targets_path = dir.join("targets.json");
            let mut plain_outcome = None;
            let reference = if ref_dir.join("model.safetensors").is_file() && targets_path.is_file() {
                RewardModel::load(&ref_dir, &LoadOptions::default()).map_err(|e| io(&ref_dir, "reference model", e))?
            } else {
                let label = format!("[{}/{total}] {organism} seed {seed} plain", done_count + 1);
                let start = Instant::now();
                let out = data.train_reported(&plain_opts, None, None, &label, progress)?;
                out.members[0].save_pretrained(&ref_dir, Some(&dir))?;
                let m = out.members[0].model()?;
                plain_outcome = Some((out, start.elapsed().as_secs_f64()));
                m
            };
            let targets: CircuitTargets = if targets_path.is_file() {
                let text = std::fs::read_to_string(&targets_path).map_err(|e| io(&targets_path, "cannot read", e))?;
                serde_json::from_str(&text).map_err(|e| io(&targets_path, "not circuit targets", e))?
            } else {
                progress(Event::Working(&format!("{organism} seed {seed}: the plain model's tail circuits")));
                let (t, _, _) = find_targets(&reference, &data.train, &data.perturbed, &tails, &light)?;
                progress(Event::Done);
                let text = serde_json::to_string_pretty(&t).map_err(|e| io(&targets_path, "cannot serialise", e))?;
                std::fs::write(&targets_path, text).map_err(|e| io(&targets_path, "cannot write", e))?;
                progress(Event::Wrote(&targets_path));
                t
            };
            for arm in todo {
                done_count += 1;
                let label = format!("[{done_count}/{total}] {organism} seed {seed} {}", arm.name());
                let start = Instant::now();
                let (out, seconds) = match (arm, plain_outcome.take()) {
                    (Arm::Plain, Some((out, s))) => (out, s),
                    (Arm::Plain, None) => {
                        let out = data.train_reported(&plain_opts, None, None, &label, progress)?;
                        (out, start.elapsed().as_secs_f64())
                    }
                    (_, keep) => {
                        plain_outcome = keep;
                        let opts = arm_options(arm, &data, o);
                        let guide = if arm.random_guide() {
                            targets.randomised(&reference, seed ^ SEED_RANDOM_GUIDE)?
                        } else {
                            targets.clone()
                        };
                        let out = data.train_reported(&opts, Some(&guide), Some(&reference), &label, progress)?;
                        (out, start.elapsed().as_secs_f64())
                    }
                };
                progress(Event::Working(&format!("{label}: probes and circuits")));
                let rec = RunRecord {
                    settings: id.clone(),
                    ..record_of(organism, seed, arm, &data, &out, &tails, &light, seconds)?
                };
                progress(Event::Done);
                append_run(&o.runs, &rec)?;
                progress(Event::Finished { label: &label, summary: &rec.summary() });
                records.push(rec);
            }
        }
    }
    Ok(aggregate(o, &records, &seeds, &arms))
}

/// The training options of `arm` on `data`.
pub fn arm_options(arm: Arm, data: &OrganismData, o: &TableOptions) -> CartTrainOptions {
    let reg = Regulariser { lambda_div: o.lambda_div, lambda_stab: o.lambda_stab, pairs_per_side: 8 };
    let aug = Augmentation { per_tail_pair: o.augment_per_pair, oversample: 2 };
    let cur = Curriculum {
        start_tail_share: data.natural_tail_share(),
        end_tail_share: o.curriculum_end,
        warm_fraction: 1.0,
    };
    let ens = Ensemble { members: o.members, member_regulariser: Some(reg.clone()), ..Default::default() };
    let mut c = CartTrainOptions { base: data.base.clone(), tail_subsets: vec!["tail".into()], ..Default::default() };
    match arm {
        Arm::Plain => {}
        Arm::Augment | Arm::AugmentRandom => c.augmentation = Some(aug),
        // One candidate per kept pair: the same number of extra tail pairs, none chosen by a circuit.
        Arm::AugmentUnguided => c.augmentation = Some(Augmentation { oversample: 1, ..aug }),
        Arm::Regularise | Arm::RegulariseRandom => c.regulariser = Some(reg),
        Arm::Curriculum => c.curriculum = Some(cur),
        Arm::Ensemble => c.ensemble = Some(ens),
        Arm::All => {
            c.augmentation = Some(aug);
            c.regulariser = Some(reg);
            c.curriculum = Some(cur);
            c.ensemble = Some(ens);
        }
    }
    c
}

/// The run record of a trained arm: held-out metrics, probe effect sizes and the bound's
/// ingredients of its own circuits.
#[allow(clippy::too_many_arguments)]
pub fn record_of(
    organism: &str,
    seed: u64,
    arm: Arm,
    data: &OrganismData,
    out: &CartOutcome,
    tails: &[String],
    light: &Light,
    seconds: f64,
) -> Result<RunRecord> {
    let r = &out.report;
    let models: Vec<RewardModel> = out.members.iter().map(|t| t.model()).collect::<std::result::Result<_, _>>()?;
    let weights = r.ensemble.as_ref().map_or(vec![1.0], |e| e.weights.clone());
    let probe_d = probe_effects(&models, &weights, &data.probes, seed)?;
    let (mut cs, mut ds) = (Vec::new(), Vec::new());
    for m in &models {
        let (c, d) = bound_point(m, &data.train, tails, light)?;
        cs.push(c as f64);
        ds.extend(d);
    }
    let c_tail = cs.iter().sum::<f64>() / cs.len().max(1) as f64;
    let n_tail = r.n_train_tail + r.augmentation.as_ref().map_or(0, |x| x.n_added);
    let h = &r.held_out;
    Ok(RunRecord {
        organism: organism.to_string(),
        seed,
        arm,
        held_out: h.clone(),
        probe_d,
        c_tail,
        n_tail,
        complexity: c_tail / (n_tail.max(1) as f64).sqrt(),
        div: (!ds.is_empty()).then(|| ds.iter().sum::<f64>() / ds.len() as f64),
        l_gap: h.tail_loss.zip(h.head_loss).map(|(t, hl)| t - hl),
        disagreement_head: r.ensemble.as_ref().and_then(|e| e.disagreement_head),
        disagreement_tail: r.ensemble.as_ref().and_then(|e| e.disagreement_tail),
        steps: r.steps,
        members: r.members.len(),
        seconds,
        settings: String::new(),
    })
}

pub const PROBE_DIMS: [&str; 4] = ["length", "sycophancy", "formatting", "caution"];

/// Per organism × arm, the mean over seeds and a 95% Student-t interval of every metric, and
/// the bound's direction test over all runs.
pub fn aggregate(o: &TableOptions, records: &[RunRecord], seeds: &[u64], arms: &[Arm]) -> TableReport {
    let mut rows = Vec::new();
    for organism in &o.presets {
        for &arm in arms {
            let rs: Vec<&RunRecord> =
                records.iter().filter(|r| &r.organism == organism && r.arm == arm && seeds.contains(&r.seed)).collect();
            let col = |f: &dyn Fn(&RunRecord) -> Option<f64>| -> Interval {
                t_interval(&rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let mut metrics = BTreeMap::new();
            metrics.insert("head_accuracy".to_string(), col(&|r| r.held_out.head_accuracy));
            metrics.insert("tail_accuracy".to_string(), col(&|r| r.held_out.tail_accuracy));
            metrics.insert("tail_margin".to_string(), col(&|r| r.held_out.tail_margin));
            metrics.insert("head_margin".to_string(), col(&|r| r.held_out.head_margin));
            metrics.insert("l_gap".to_string(), col(&|r| r.l_gap));
            metrics.insert("c_tail".to_string(), col(&|r| Some(r.c_tail)));
            metrics.insert("div".to_string(), col(&|r| r.div));
            for d in PROBE_DIMS {
                metrics.insert(format!("probe_d_{d}"), col(&|r| r.probe_d.get(d).copied().flatten()));
            }
            if arm == Arm::Ensemble || arm == Arm::All {
                metrics.insert("disagreement_head".to_string(), col(&|r| r.disagreement_head));
                metrics.insert("disagreement_tail".to_string(), col(&|r| r.disagreement_tail));
            }
            let mut s: Vec<u64> = rs.iter().map(|r| r.seed).collect();
            s.sort();
            rows.push(TableRow { organism: organism.clone(), arm, seeds: s, metrics });
        }
    }
    let pts: Vec<&RunRecord> = records
        .iter()
        .filter(|r| o.presets.contains(&r.organism) && seeds.contains(&r.seed) && arms.contains(&r.arm))
        .collect();
    let (x1, y1): (Vec<f64>, Vec<f64>) = pts.iter().filter_map(|r| r.l_gap.map(|g| (r.complexity, g))).unzip();
    let (x2, y2): (Vec<f64>, Vec<f64>) = pts.iter().filter_map(|r| r.l_gap.zip(r.div).map(|(g, d)| (d, g))).unzip();
    TableReport {
        ci_method: "mean over seeds with a 95% Student-t interval (n − 1 df); undefined for one seed".into(),
        organisms: o.presets.clone(),
        seeds: seeds.to_vec(),
        arms: arms.to_vec(),
        settings: settings(o),
        runs_file: o.runs.display().to_string(),
        rows,
        bound_direction: BoundDirection {
            description: "Spearman ρ over runs of the held-out L_tail − L_head against |C_tail|/√N_tail and against \
                Div (standardised mean distance of each run's own circuit units); the bound predicts ρ > 0"
                .into(),
            gap_vs_complexity: spearman_permutation(&x1, &y1, 10_000, 1),
            gap_vs_div: spearman_permutation(&x2, &y2, 10_000, 2),
        },
    }
}

fn cell(i: Option<&Interval>, scale: f64, digits: usize) -> String {
    match i {
        Some(Interval { mean: Some(m), ci_low: Some(lo), ci_high: Some(hi), .. }) => {
            format!("{:.d$} [{:.d$}, {:.d$}]", m * scale, lo * scale, hi * scale, d = digits)
        }
        Some(Interval { mean: Some(m), .. }) => format!("{:.d$}", m * scale, d = digits),
        _ => "—".into(),
    }
}

/// The table as Markdown (the README's form).
pub fn markdown(t: &TableReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "CART arms on model organisms ({} seed{}: {}); {}.\n\n",
        t.seeds.len(),
        if t.seeds.len() == 1 { "" } else { "s" },
        t.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        t.ci_method
    ));
    s.push_str("| organism | arm | head acc % | tail acc % | tail margin |");
    for d in PROBE_DIMS {
        s.push_str(&format!(" d({d}) |"));
    }
    s.push_str("\n|---|---|---|---|---|");
    for _ in PROBE_DIMS {
        s.push_str("---|");
    }
    s.push('\n');
    for r in &t.rows {
        let m = |k: &str| r.metrics.get(k);
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |",
            r.organism,
            r.arm.name(),
            cell(m("head_accuracy"), 100.0, 1),
            cell(m("tail_accuracy"), 100.0, 1),
            cell(m("tail_margin"), 1.0, 2)
        ));
        for d in PROBE_DIMS {
            s.push_str(&format!(" {} |", cell(m(&format!("probe_d_{d}")), 1.0, 2)));
        }
        s.push('\n');
    }
    let b = &t.bound_direction;
    let c = |x: &Correlation| {
        format!(
            "ρ = {} (p {}, n {})",
            x.spearman.map_or("undefined".into(), |v| format!("{v:+.2}")),
            x.p_value.map_or("—".into(), |v| format!("{v:.3}")),
            x.n
        )
    };
    s.push_str(&format!(
        "\nBound direction (Spearman over runs, held-out L_tail − L_head): vs |C_tail|/√N_tail {}; vs Div {}.\n",
        c(&b.gap_vs_complexity),
        c(&b.gap_vs_div)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_parse_and_cells_format() {
        assert_eq!("regularise".parse::<Arm>(), Ok(Arm::Regularise));
        assert!("nosuch".parse::<Arm>().unwrap_err().contains("plain"));
        let i = t_interval(&[0.5, 0.6, 0.7]);
        assert!(cell(Some(&i), 100.0, 1).starts_with("60.0 ["));
        assert_eq!(cell(Some(&t_interval(&[0.25])), 1.0, 2), "0.25");
        assert_eq!(cell(None, 1.0, 2), "—");
        assert_eq!(beside(Path::new("d/t.json"), ".work"), Path::new("d/t.work"));
    }

    /// A resumed table refuses a runs file made with other settings before training anything.
    #[test]
    fn resuming_with_other_settings_is_refused() {
        let dir = std::env::temp_dir().join(format!("rl-table-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let o = TableOptions { resume: true, seeds: 1, ..TableOptions::beside(&dir.join("t.json")) };
        let metrics = HeadTailMetrics::of(&[1.0, -1.0], &[false, true]);
        let record = |settings: String| RunRecord {
            organism: "tail".into(),
            seed: DEFAULT_SEED,
            arm: Arm::Plain,
            held_out: metrics.clone(),
            probe_d: BTreeMap::new(),
            c_tail: 1.0,
            n_tail: 4,
            complexity: 0.5,
            div: None,
            l_gap: None,
            disagreement_head: None,
            disagreement_tail: None,
            steps: 1,
            members: 1,
            seconds: 1.0,
            settings,
        };
        append_run(&o.runs, &record(reward_lens_engine::hash::Fnv::of(settings(&o).to_string().as_bytes()).hex()))
            .unwrap();
        let other = TableOptions { lambda_div: 0.5, ..o.clone() };
        let e = run_table(&other, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("line 1 was run with other settings") && e.contains("\"lambda_div\":0.5"), "{e}");
        assert!(!other.work.exists(), "nothing was built");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
