use anyhow::{anyhow, Result};
use clap::Args;
use serde::Serialize;

use reward_lens_instruments::conflict::{
    analyze_samples, learn_term_samples, objective_terms, term_groups, ungrouped_warning, ConflictReport, Thresholds,
    CONFLICT_PERMUTATIONS,
};
use reward_lens_report::text::conflict_text;

use crate::args::PairInput;
use crate::{output, ModelArgs};

#[derive(Args)]
#[command(
    after_help = "Learns one direction per group of pairs (mean of h(chosen) − h(rejected) at a block's output, \
pooled token), then classifies every two terms by their cosine as reward-lens 1.0 does: > 0.5 aligned, < −0.3 in \
conflict, |cos| < 0.2 orthogonal, the bands between aligned / in conflict. A conflict is tested by permutation: \
`conflict p` is the share of 1,999 random splits of the two terms' pooled pairs (same sizes, seeded by --seed) whose \
directions' cosine is as low. `p` (against two random directions in d_model dimensions) is for reference only: \
activation differences are not isotropic, so unrelated terms often reach tiny values. ArmoRM models add their objectives (after the reward transform \
matrix) as terms.\n\nExample:\n  reward-lens conflict --pairs examples/pairs.jsonl --group-by subset --out conflict.json"
)]
pub struct ConflictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: PairInput,
    /// JSONL field whose values name the terms.
    #[arg(long, default_value = "subset")]
    pub group_by: String,
    /// Block whose output the directions live in (default: the last).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Cosine above which two terms are aligned.
    #[arg(long, default_value_t = 0.5)]
    pub aligned: f64,
    /// |cosine| below which two terms are orthogonal.
    #[arg(long, default_value_t = 0.2)]
    pub orthogonal: f64,
    /// Cosine below which two terms are in conflict.
    #[arg(long, default_value_t = -0.3, allow_hyphen_values = true)]
    pub conflict: f64,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
}

#[derive(Serialize)]
struct Output {
    terms: ConflictReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    objectives: Option<ConflictReport>,
}

pub fn run(a: ConflictArgs) -> Result<()> {
    let t = Thresholds::new(a.aligned, a.orthogonal, a.conflict)?;
    let model = a.model.load()?;
    let (pairs, ids) = a.input.encode(&model)?;
    let groups = term_groups(&model, &pairs, &ids, &a.group_by).map_err(|e| anyhow!("--{e}"))?;
    if let Some(w) = ungrouped_warning(&pairs, &a.group_by) {
        eprintln!("warning: --group-by {w}");
    }
    let samples = learn_term_samples(&model, &groups, a.layer, a.run.batch_size)?;
    let terms = analyze_samples(&samples, &t, CONFLICT_PERMUTATIONS, a.run.seed);
    print!("{}", conflict_text(&terms, &format!("terms grouped by `{}`", a.group_by)));
    let inputs: Vec<Vec<u32>> = ids.iter().map(|p| p.chosen.clone()).collect();
    let objectives = objective_terms(&model, &inputs, a.run.batch_size)?.map(|o| o.analyze(&t));
    if let Some(o) = &objectives {
        print!("{}", conflict_text(o, "ArmoRM objectives"));
    }
    output::write(a.run.out.as_deref(), "conflict", &a.model.name(), &pairs, &Output { terms, objectives })
}
