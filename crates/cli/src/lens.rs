use anyhow::Result;
use clap::Args;

use reward_lens_instruments::lens::{lens, summarise, LensKind, LensOptions};

use crate::args::PairInput;
use crate::{output, ModelArgs};

#[derive(Args, Clone, Debug)]
#[command(
    after_help = "Reads the reward at every depth of the residual stream (embeddings, then each block's output) at \
the token the reward is pooled from.\n\
  normed  w_r · FinalNorm(h_l) + b: the reward if the model stopped at layer l (default; ends at the reward)\n\
  frozen  the same with the final norm's scale from the real run: steps are exact layer contributions\n\
  raw     w_r · h_l + b with no final norm (reward-lens 1.0's lens; --v1-compat)\n\n\
The crystallization layer is where chosen − rejected first reaches half its final value; its depth fraction is \
(layer + 1) / n_layers.\n\nExample:\n  reward-lens lens --pairs examples/pairs.jsonl --out lens.json"
)]
pub struct LensArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: PairInput,
    #[arg(long, value_parser = crate::args::choice::<LensKind>(&["normed", "frozen", "raw"]), default_value = "normed")]
    pub kind: LensKind,
    /// reward-lens 1.0 semantics: raw projection, v1.0 crystallization rule (so not with --kind).
    #[arg(long, conflicts_with = "kind")]
    pub v1_compat: bool,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
    #[command(flatten)]
    pub shard: crate::args::ShardArg,
}

pub fn run(a: LensArgs) -> Result<()> {
    let shard = output::shard_start("lens", &a.input, a.shard.shard, a.run.out.as_deref())?;
    let model = a.model.load_shared()?;
    let (pairs, ids) = a.input.encode(&model)?;
    let opts = LensOptions { kind: a.kind, v1_compat: a.v1_compat, batch_size: a.run.batch_size, seed: a.run.seed };
    let Some(shard) = shard else {
        let rep = lens(&model, &ids, &opts).map_err(|e| output::locate(e, &pairs))?;
        print!("{}", reward_lens_report::text::lens_table(&rep));
        return output::write(a.run.out.as_deref(), "lens", &a.model.name(), &pairs, &rep);
    };
    let options = format!(
        "{:?}",
        LensArgs {
            run: crate::args::RunArgs { out: None, ..a.run.clone() },
            shard: crate::args::ShardArg { shard: None },
            ..a.clone()
        }
    );
    let (range, window) =
        shard.guard("lens", &a.model, &a.input, pairs.len(), a.run.batch_size, a.run.seed, options)?;
    let rep = lens(&model, &ids[window.clone()], &opts).map_err(|e| output::locate(e, &pairs[window.clone()]))?;
    let mine: Vec<_> = rep
        .pairs
        .into_iter()
        .map(|mut p| {
            p.pair += window.start;
            p
        })
        .filter(|p| range.contains(&p.pair))
        .collect();
    let rep = summarise(rep.kind, rep.v1_compat, model.config.n_layers, mine, a.run.seed);
    print!("{}", reward_lens_report::text::lens_table(&rep));
    output::write(a.run.out.as_deref(), "lens", &a.model.name(), &pairs[range], &rep)
}
