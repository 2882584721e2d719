use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use reward_lens_instruments::compare::{compare, CompareInput};
use reward_lens_instruments::lens::LensKind;

use crate::args::PairInput;
use crate::{output, DtypeArg, ModelArgs};

#[derive(Args)]
#[command(after_help = "Runs the lens and attribution of every model on the same pairs (each with its own tokenizer) \
and compares them two by two: formation-curve correlation (reward-lens 1.0), margin sign agreement and Spearman, \
Spearman of mean component differentials (same architecture and depth), cosine of w_r (same d_model) and linear CKA \
of the last block's output at the pooled token.\n\nExample:\n  reward-lens compare --model A --model B --pairs examples/pairs.jsonl --out compare.json")]
pub struct CompareArgs {
    /// Two or more model directories.
    #[arg(long = "model", value_name = "DIR", required = true, num_args = 1)]
    pub models: Vec<PathBuf>,
    /// Compute dtype. f32 is exact enough for analysis; bf16/f16 halve memory.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Device: `cpu`, or `cuda` / `cuda:N` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub input: PairInput,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
}

pub fn run(a: CompareArgs) -> Result<()> {
    if a.models.len() < 2 {
        bail!("compare needs at least two --model directories");
    }
    let loaded = a
        .models
        .iter()
        .map(|m| ModelArgs { model: Some(m.clone()), dtype: a.dtype, device: a.device.clone() }.load())
        .collect::<Result<Vec<_>>>()?;
    let mut inputs = Vec::new();
    let mut pairs = Vec::new();
    for (path, model) in a.models.iter().zip(&loaded) {
        let (p, ids) = a.input.encode(model)?;
        pairs = p;
        inputs.push(CompareInput { name: path.display().to_string(), model, pairs: ids });
    }
    let rep =
        compare(&inputs, LensKind::Normed, a.run.batch_size, a.run.seed).map_err(|e| output::locate(e, &pairs))?;
    print!("{}", reward_lens_report::text::compare_table(&rep));
    output::write(
        a.run.out.as_deref(),
        "compare",
        &a.models.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", "),
        &pairs,
        &rep,
    )
}
