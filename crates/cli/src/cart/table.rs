//! `cart table`: flags → [`TableOptions`] → [`run_table`], drawn with bars.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use reward_lens_cart::organism_runs::Scale;
use reward_lens_cart::table::{markdown, run_table, Arm, TableOptions};
use reward_lens_cart::training::parse_regularise;

use crate::progress::CartBars;

#[derive(Args)]
#[command(after_help = "For each organism × seed × arm: generate the organism with that seed, train it from scratch \
(the organism's default shape and optimizer; every arm the same number of steps per member), and evaluate on its \
held-out pairs. The plain arm is trained first; its tail circuits (light discovery: maxT τ, no ablation) ordered by \
vulnerability are the targets of the other arms (same seed, so the same initial network).\n\n\
Each finished run is appended to the runs JSONL at once; --resume skips runs already there. The aggregate gives, \
per organism × arm, the mean over seeds and a 95% Student-t interval (n − 1 degrees of freedom; with 3 seeds a \
bootstrap interval would be degenerate) of head accuracy, tail accuracy, tail margin and the probes' Cohen's d.\n\n\
The bound's direction test: over all runs, Spearman ρ of the held-out gap L_tail − L_head against \
|C_tail|/√N_tail and against Div (each run's own circuits; ensembles: the members' mean), with a permutation \
p-value. The bound predicts both ρ > 0.\n\n\
Organisms are tiny, so matrix products run on one thread unless RAYON_NUM_THREADS is set.\n\n\
Example (the README table, reduced settings; about 40 minutes on 2 cores):\n  reward-lens cart table --preset \
default,control --seeds 3 --epochs 2 --n-train 2000 --n-test 1000 --out cart_table.json --markdown cart_table.md")]
pub struct TableArgs {
    /// Organism presets (comma-separated).
    #[arg(long, alias = "organisms", value_delimiter = ',', default_value = "tail,control")]
    pub preset: Vec<String>,
    /// Seeds per organism (seed k uses data and initialisation seed 2024 + k).
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Arms (comma-separated): plain, augment, regularise, curriculum, ensemble, all; and the guidance
    /// controls augment-unguided (as many extra tail pairs, none chosen by a circuit), augment-random and
    /// regularise-random (random units of the same kinds and sites in place of the circuits).
    #[arg(long, value_delimiter = ',', default_value = "plain,augment,regularise,curriculum,ensemble,all")]
    pub arms: Vec<Arm>,
    /// The aggregate, as JSON.
    #[arg(long, value_name = "FILE.json", default_value = "cart_table.json")]
    pub out: PathBuf,
    /// The aggregate as a Markdown table.
    #[arg(long, value_name = "FILE.md")]
    pub markdown: Option<PathBuf>,
    /// One JSON line per finished run (default: beside --out, `.runs.jsonl`).
    #[arg(long, value_name = "FILE.jsonl")]
    pub runs: Option<PathBuf>,
    /// Organism files, reference models and circuit targets (default: beside --out, `.work/`).
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Skip runs already in the runs file.
    #[arg(long)]
    pub resume: bool,
    /// The regulariser arm's λ_div,λ_stab: the shares of the circuit units' variance the head/tail
    /// label explains (Div) and a label-preserving perturbation causes (Stab).
    #[arg(long, value_name = "LAMBDA_DIV,LAMBDA_STAB", default_value = "0.1,0.1")]
    pub regularise: String,
    #[arg(long, hide = true)]
    pub lambda_div: Option<f64>,
    #[arg(long, hide = true)]
    pub lambda_stab: Option<f64>,
    /// Tail share of the last curriculum batch (the first has the data's natural share).
    #[arg(long, default_value_t = 0.5)]
    pub curriculum_end: f64,
    /// Ensemble members.
    #[arg(long, alias = "members", value_name = "M", default_value_t = 3)]
    pub ensemble: usize,
    /// Augmentation: new tail pairs per tail training pair.
    #[arg(long, default_value_t = 4)]
    pub augment_per_pair: usize,
    /// Permutations of the light discoveries' τ.
    #[arg(long, default_value_t = 1000)]
    pub permutations: usize,
    /// Training epochs per run (default: the organism's own).
    #[arg(long, value_parser = crate::args::at_least_one)]
    pub epochs: Option<usize>,
    /// Training pairs per organism (default: the organism's own).
    #[arg(long)]
    pub n_train: Option<usize>,
    /// Held-out test pairs per organism (default: the organism's own).
    #[arg(long)]
    pub n_test: Option<usize>,
}

pub fn run(a: TableArgs) -> Result<()> {
    let (d, s) = parse_regularise(&a.regularise)?;
    let mut o = TableOptions::beside(&a.out);
    o.presets = a.preset;
    o.seeds = a.seeds;
    o.arms = a.arms;
    o.runs = a.runs.unwrap_or(o.runs);
    o.work = a.work.unwrap_or(o.work);
    o.resume = a.resume;
    // The organisms are built from the options and seeds: those are the whole fingerprint.
    let options = format!(
        "{:?}",
        reward_lens_cart::table::TableOptions {
            resume: false,
            runs: Default::default(),
            work: Default::default(),
            ..o.clone()
        }
    );
    crate::args::guard_out("cart table", &o.runs, a.resume, None, &[], options)?;
    o.lambda_div = a.lambda_div.unwrap_or(d);
    o.lambda_stab = a.lambda_stab.unwrap_or(s);
    o.curriculum_end = a.curriculum_end;
    o.members = a.ensemble;
    o.augment_per_pair = a.augment_per_pair;
    o.permutations = a.permutations;
    o.scale = Scale { epochs: a.epochs, n_train: a.n_train, n_test: a.n_test };
    let mut bars = CartBars::default();
    let report = run_table(&o, &mut |e| bars.update(e))?;
    super::write_json(&a.out, &report)?;
    let md = markdown(&report);
    println!("\n{md}");
    if let Some(p) = &a.markdown {
        std::fs::write(p, &md).with_context(|| format!("{}: cannot write", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
