//! `reward-lens cart …`: Circuit-Aware Reward Training. `discover` finds the circuits that rare
//! (tail) inputs run through, `vulnerability` measures how fragile they are, `bound` reports the
//! ingredients of the long-tail generalisation bound, `train` trains a reward model with CART's
//! interventions and `table` compares the interventions on model organisms over seeds. The work
//! is `reward_lens_cart`'s; this is flags, bars and printing.

mod analysis;
mod table;
mod train;

use std::path::Path;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

#[derive(Args)]
#[command(
    long_about = "CART, Circuit-Aware Reward Training (Liu 2025, arXiv:2509.24713): reward models fail on rare \
(long-tail) inputs because the circuits those inputs run through get little training signal.\n\n\
The pipeline, one subcommand per step:\n  \
1. discover       which units (MLP neurons, attention heads, SAE latents) are more active on tail than on head \
pairs (a permutation-thresholded z), grouped into co-activating circuits and validated by ablation;\n  \
2. vulnerability  how fragile each circuit is: consistency under label-preserving perturbations, sensitivity, \
coverage of the training tail;\n  \
3. bound          the terms of L_tail ≤ L_head + C·|C_tail|·log(1/δ)/√N_tail + β·Div: |C_tail|, N_tail, Div, and \
the empirical L_tail − L_head;\n  \
4. train          a reward model trained with the interventions: circuit-guided augmentation, the circuit \
regulariser (Div and stability), a tail curriculum, circuit-diverse ensembles;\n  \
5. table          every intervention against plain Bradley–Terry on model organisms, over seeds.\n\n\
The paper defines only the τ-specialisation statistic and the bound; every other formula here is a documented \
reconstruction (see the JSON outputs, which carry their formulas).",
    after_help = "Examples:\n  \
reward-lens cart discover --model organisms/default --pairs organisms/default/train.jsonl --out circuits.json\n  \
reward-lens cart vulnerability --model organisms/default --pairs organisms/default/train.jsonl --discovery circuits.json\n  \
reward-lens cart train --preset tail --regularise 0.1,0.1 --curriculum natural,0.5 --out cart-tail/\n  \
reward-lens cart table --preset tail,control --seeds 3 --out cart_table.json --markdown cart_table.md"
)]
pub struct CartArgs {
    #[command(subcommand)]
    pub command: CartCommand,
}

#[derive(Subcommand)]
pub enum CartCommand {
    /// Find the circuits tail pairs run through: specialised units, co-activating groups, causal validation.
    Discover(analysis::DiscoverArgs),
    /// Ground truth for discovery: every unit's exact ablation effect, and the smallest set whose ablation takes the tail to chance.
    Oracle(analysis::OracleArgs),
    /// How fragile each circuit is: consistency, sensitivity, coverage and the combined score V_C.
    Vulnerability(analysis::VulnerabilityArgs),
    /// The ingredients of the long-tail bound: |C_tail|, N_tail, Div(C_tail, C_head), L_tail − L_head.
    Bound(analysis::BoundArgs),
    /// Train a reward model with CART's interventions (augmentation, regulariser, curriculum, ensemble).
    Train(train::TrainArgs),
    /// Every intervention against plain BT on model organisms × seeds: mean and 95% CI, and the bound's direction test.
    Table(table::TableArgs),
}

/// Organisms are tiny: their matrix products run fastest on one thread (on this project's busy
/// 2-core machine, a 250-step organism run took 23 s on one thread and 89 s on two). Applies
/// when `RAYON_NUM_THREADS` is unset, before any thread starts.
fn single_threaded_for_tiny_models() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

pub fn run(a: CartArgs) -> Result<()> {
    match &a.command {
        CartCommand::Table(_) | CartCommand::Oracle(_) => single_threaded_for_tiny_models(),
        CartCommand::Train(t) if t.preset.is_some() => single_threaded_for_tiny_models(),
        _ => {}
    }
    match a.command {
        CartCommand::Discover(a) => analysis::run_discover(a),
        CartCommand::Oracle(a) => analysis::run_oracle(a),
        CartCommand::Vulnerability(a) => analysis::run_vulnerability(a),
        CartCommand::Bound(a) => analysis::run_bound(a),
        CartCommand::Train(a) => train::run(a),
        CartCommand::Table(a) => table::run(a),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the directory", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
