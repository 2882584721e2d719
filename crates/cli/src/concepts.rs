use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use reward_lens_engine::Truncation;
use reward_lens_instruments::concepts::{concepts, steer, ConceptOptions, ConceptReport, DoseResponse};

use crate::args::PairInput;
use crate::{output, ModelArgs};

#[derive(Args)]
#[command(
    after_help = "A concept is a JSONL file of {\"prompt\", \"positive\", \"negative\"}; positive SHOWS the behaviour \
the file is named after. Its vector is the normalised mean of h(positive) − h(negative) at a block's output (pooled \
token). Alignment is the cosine with the direction the reward reads the residual stream along (w_r ⊙ γ; --v1-compat: \
w_r). Whether the model pays for the behaviour is tested on the concept's own pairs: the reward shift \
reward(positive) − reward(negative), its size in SDs of the negatives' rewards, and `shift p`, a sign-flip test of \
the per-pair shifts (seeded by --seed beyond 16 pairs). The cosine's `p` against a random direction in d_model \
dimensions is for reference only: activation differences are not isotropic.\n\
Built-in concepts: sycophancy, verbosity, hedging, overconfidence, markdown, refusal, flattery, apology.\n\n\
--steer NAME adds strength × vector at the layer and re-scores (the concept's own negatives, or --pairs' texts), \
giving a dose–response curve and its slope.\n\nExamples:\n  reward-lens concepts --out concepts.json\n  \
reward-lens concepts --steer sycophancy --strengths=-4,-2,0,2,4 --positions all"
)]
pub struct ConceptsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Concept files or directories of them (default: the built-in concepts).
    #[arg(long = "concepts", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Block whose output the vectors live in (default: the last).
    #[arg(long)]
    pub layer: Option<usize>,
    /// reward-lens 1.0's alignment: the cosine with w_r itself rather than the direction the
    /// reward reads the residual stream along (w_r ⊙ γ).
    #[arg(long)]
    pub v1_compat: bool,
    /// Steer along this concept's vector.
    #[arg(long, value_name = "NAME")]
    pub steer: Option<String>,
    /// Steering strengths, comma-separated (write `--strengths=-4,-2,0,2,4`: a leading minus after a space
    /// reads as a flag); each adds strength × the unit vector.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, default_value = "-4,-2,0,2,4", requires = "steer")]
    pub strengths: Vec<f64>,
    /// Where the vector is added: pooled (the token the reward is read at) or all tokens.
    #[arg(long, value_parser = crate::args::choice::<reward_lens_engine::Positions>(&["pooled", "all"]), default_value = "pooled")]
    pub positions: reward_lens_engine::Positions,
    /// Texts to steer (their chosen and rejected responses); default: the concept's negatives.
    #[command(flatten)]
    pub input: PairInput,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
}

#[derive(Serialize)]
struct Output {
    concepts: ConceptReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    steering: Option<DoseResponse>,
}

pub fn run(a: ConceptsArgs) -> Result<()> {
    if a.steer.is_none() && (a.input.pairs.is_some() || a.input.prompt.is_some()) {
        bail!("--pairs and --prompt give the texts --steer steers; without --steer nothing reads them");
    }
    if a.steer.is_some() {
        reward_lens_instruments::concepts::check_strengths(&a.strengths)?;
    }
    let model = a.model.load()?;
    let texts = reward_lens_report::datasets::read_concepts(&a.paths)?;
    let inputs: Vec<_> =
        texts.iter().map(|c| c.encode(&model, Truncation::Error).map_err(Box::new)).collect::<Result<_, _>>()?;
    let rep = concepts(
        &model,
        &inputs,
        &ConceptOptions { layer: a.layer, v1_compat: a.v1_compat, batch_size: a.run.batch_size, seed: a.run.seed },
    )?;
    print!("{}", reward_lens_report::text::concepts_table(&rep));
    let steering = match &a.steer {
        None => None,
        Some(name) => {
            let Some(i) = rep.concepts.iter().position(|c| &c.name == name) else {
                bail!(
                    "--steer {name}: no such concept (have: {})",
                    rep.concepts.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                );
            };
            let seqs: Vec<Vec<u32>> = if a.input.pairs.is_some() || a.input.prompt.is_some() {
                a.input.encode(&model)?.1.into_iter().flat_map(|p| [p.chosen, p.rejected]).collect()
            } else {
                inputs[i].pairs.iter().map(|p| p.1.clone()).collect()
            };
            let v = &rep.concepts[i].vector;
            let dr = steer(&model, &seqs, v, Some(rep.layer), &a.strengths, a.positions, a.run.batch_size)?;
            print!("{}", reward_lens_report::text::steering_text(name, seqs.len(), &dr));
            Some(dr)
        }
    };
    output::write(a.run.out.as_deref(), "concepts", &a.model.name(), &[], &Output { concepts: rep, steering })
}
