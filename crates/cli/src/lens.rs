use anyhow::Result;
use clap::{Args, ValueEnum};

use reward_lens_instruments::lens::{lens, LensKind, LensOptions};

use crate::args::PairInput;
use crate::{output, ModelArgs};

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Normed,
    Frozen,
    Raw,
}

#[derive(Args)]
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
    #[arg(long, value_enum, default_value = "normed")]
    pub kind: KindArg,
    /// reward-lens 1.0 semantics: raw projection, v1.0 crystallization rule.
    #[arg(long)]
    pub v1_compat: bool,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
}

pub fn run(a: LensArgs) -> Result<()> {
    let model = a.model.load()?;
    let (pairs, ids) = a.input.encode(&model)?;
    let kind = match a.kind {
        KindArg::Normed => LensKind::Normed,
        KindArg::Frozen => LensKind::Frozen,
        KindArg::Raw => LensKind::Raw,
    };
    let opts = LensOptions { kind, v1_compat: a.v1_compat, batch_size: a.run.batch_size, seed: a.run.seed };
    let rep = lens(&model, &ids, &opts)?;
    println!(
        "reward lens ({:?}{}), {} pairs, mean over pairs:",
        rep.kind,
        if rep.v1_compat { ", v1-compat" } else { "" },
        rep.pairs.len()
    );
    println!("{:>6} {:>10} {:>10}  {:<36} ", "layer", "chosen", "rejected", "chosen − rejected [95% CI]");
    let max = rep.mean_differential.iter().filter_map(|m| m.mean).fold(0.0f64, |a, b| a.max(b.abs()));
    for (i, l) in rep.layers.iter().enumerate() {
        let label = if *l < 0 { "embed".to_string() } else { l.to_string() };
        let m = &rep.mean_differential[i];
        println!(
            "{label:>6} {:>10.4} {:>10.4}  {:<36} {}",
            rep.mean_chosen[i],
            rep.mean_rejected[i],
            reward_lens_report::text::mean_ci(m),
            output::bar(m.mean.unwrap_or(f64::NAN), max, 20)
        );
    }
    println!("crystallization depth fraction: {}", reward_lens_report::text::mean_ci(&rep.crystallization_fraction));
    output::write(a.run.out.as_deref(), "lens", &a.model.name(), &pairs, &rep)
}
