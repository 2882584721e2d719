use anyhow::Result;
use clap::Args;

use reward_lens_instruments::attribution::{attribute, summarise, AttributionOptions};

use crate::args::PairInput;
use crate::{output, ModelArgs};

#[derive(Args, Clone, Debug)]
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
    /// reward-lens 1.0 semantics: w_r · raw sub-layer outputs, no final norm, no bias (and no heads,
    /// as the peer had none).
    #[arg(long, conflicts_with_all = ["heads", "neurons"])]
    pub v1_compat: bool,
    /// How many components the summary lists.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
    #[command(flatten)]
    pub shard: crate::args::ShardArg,
}

pub fn run(a: AttributeArgs) -> Result<()> {
    let shard = output::shard_start("attribute", &a.input, a.shard.shard, a.run.out.as_deref())?;
    if shard.is_some() && a.neurons > 0 && !a.v1_compat {
        // The top neurons are means over every pair's MLP activations, which no record keeps.
        anyhow::bail!(
            "--shard with --neurons: the top neurons need every pair's MLP activations at once; run without --shard"
        );
    }
    let model = a.model.load_shared()?;
    let (pairs, ids) = a.input.encode(&model)?;
    let opts = AttributionOptions {
        heads: a.heads,
        neurons: a.neurons,
        v1_compat: a.v1_compat,
        batch_size: a.run.batch_size,
        seed: a.run.seed,
    };
    let Some(shard) = shard else {
        let rep = attribute(&model, &ids, &opts).map_err(|e| output::locate(e, &pairs))?;
        print!("{}", reward_lens_report::text::attribution_table(&rep, a.top_k));
        return output::write(a.run.out.as_deref(), "attribution", &a.model.name(), &pairs, &rep);
    };
    let options = format!(
        "{:?}",
        AttributeArgs {
            run: crate::args::RunArgs { out: None, ..a.run.clone() },
            shard: crate::args::ShardArg { shard: None },
            ..a.clone()
        }
    );
    let (range, window) =
        shard.guard("attribute", &a.model, &a.input, pairs.len(), a.run.batch_size, a.run.seed, options)?;
    let rep = attribute(&model, &ids[window.clone()], &opts).map_err(|e| output::locate(e, &pairs[window.clone()]))?;
    let mine: Vec<_> = rep
        .pairs
        .into_iter()
        .map(|mut p| {
            p.pair += window.start;
            p
        })
        .filter(|p| range.contains(&p.pair))
        .collect();
    let rep = summarise(rep.v1_compat, rep.components, mine, rep.top_neurons, a.run.seed);
    print!("{}", reward_lens_report::text::attribution_table(&rep, a.top_k));
    output::write(a.run.out.as_deref(), "attribution", &a.model.name(), &pairs[range], &rep)
}
