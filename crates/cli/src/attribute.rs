use anyhow::Result;
use clap::Args;

use reward_lens_instruments::attribution::{attribute, AttributionOptions, RankBy};

use crate::args::PairInput;
use crate::{output, ModelArgs};

#[derive(Args)]
#[command(after_help = "Splits each reward exactly over the components that write into the residual stream at the \
pooled token: embed (and pos_embed), attn.{l} (or head.{l}.{h} with --heads, plus attn_bias.{l} when o_proj has a \
bias) and mlp.{l}. The final norm's scale is frozen from the run, so Σ contributions + bias = reward to float \
rounding on every architecture (Gemma-2's output norms, GPT-2's LayerNorm and ArmoRM's gate included).\n\
--v1-compat gives reward-lens 1.0's pre-norm numbers (which do not add up).\n\nExample:\n  \
reward-lens attribute --pairs examples/pairs.jsonl --heads --out attribution.json")]
pub struct AttributeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: PairInput,
    /// Split attention into heads (through o_proj's column blocks).
    #[arg(long)]
    pub heads: bool,
    /// Also list the K MLP neurons per layer with the largest |mean chosen − rejected| (each
    /// neuron's share goes through its down_proj column; they split mlp.{l}).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub neurons: usize,
    /// reward-lens 1.0 semantics: w_r · raw sub-layer outputs, no final norm, no bias.
    #[arg(long)]
    pub v1_compat: bool,
    /// How many components the summary lists.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
}

pub fn run(a: AttributeArgs) -> Result<()> {
    let model = a.model.load()?;
    let (pairs, ids) = a.input.encode(&model)?;
    let opts = AttributionOptions {
        heads: a.heads,
        neurons: a.neurons,
        v1_compat: a.v1_compat,
        batch_size: a.run.batch_size,
        seed: a.run.seed,
    };
    let rep = attribute(&model, &ids, &opts)?;
    let worst =
        rep.pairs.iter().flat_map(|p| [p.chosen.residual, p.rejected.residual]).fold(0.0f64, |m, r| m.max(r.abs()));
    println!(
        "{} pairs, {} components; max |Σ contributions + bias − reward| = {worst:.2e}{}",
        rep.pairs.len(),
        rep.components.len(),
        if a.v1_compat { " (v1-compat: pre-norm, does not add up)" } else { "" }
    );
    println!("top {} components by |mean chosen − rejected| [95% CI]:", a.top_k);
    let top = rep.top_k(if rep.pairs.len() == 1 { Some(0) } else { None }, a.top_k, RankBy::Differential);
    let max = top.iter().map(|t| t.1.abs()).fold(0.0, f64::max);
    for (name, v) in &top {
        let i = rep.components.iter().position(|c| &c.name == name).expect("listed component");
        println!(
            "  {name:<14} {:<36} {}",
            reward_lens_report::text::mean_ci(&rep.mean_differential[i]),
            output::bar(*v, max, 20)
        );
    }
    if !rep.top_neurons.is_empty() {
        println!("top MLP neurons by |mean chosen − rejected|:");
        for n in &rep.top_neurons {
            println!("  {:<18} {:+.4}", n.name, n.mean_differential);
        }
    }
    output::write(a.run.out.as_deref(), "attribution", &a.model.name(), &pairs, &rep)
}
