//! `cart train`: flags → [`TrainRequest`] → [`reward_lens_cart::training::train`], drawn with
//! bars, and the summary printed.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use reward_lens_cart::trainer::Trainable;
use reward_lens_cart::training::{parse_curriculum, parse_regularise, read_targets, train, TrainData, TrainRequest};

use crate::args::read_pairs;
use crate::progress::CartBars;

#[derive(Args)]
#[command(after_help = "Two sources of data:\n  \
--preset PRESET   a model organism (tail, default, control, …) generated with --seed and trained from scratch; \
the output directory is a complete organism (model, tokenizer, pairs, answer key, probes);\n  \
--model DIR --pairs FILE.jsonl   fine-tune a HuggingFace reward model on text pairs (--tail-subsets names the tail).\n\n\
Interventions (any combination; none = plain Bradley–Terry):\n  \
--augment              m new tail pairs per tail pair (organisms: fresh draws of the rare scenario; text: \
label-preserving perturbations), the candidates that drive the vulnerable circuits most kept;\n  \
--regularise λd,λs     L = L_BT + λd·Div(tail vs head circuit activations) + λs·Stab(activation change under a \
perturbed copy), on a separate head/tail batch each step;\n  \
--curriculum a,b       the tail share of each batch rises linearly from a to b (`natural` = the data's share);\n  \
--ensemble M           M members (different seeds), each regularised on a different tail circuit; weights from \
tail validation accuracy; disagreement reported as an uncertainty flag.\n\n\
Circuits come from --discovery FILE.json, or from a light discovery (maxT τ, no ablation) on a reference model: \
--model itself, or for organisms the same organism trained without interventions (saved in OUT/reference).\n\
Every arm takes the same number of optimizer steps per member.\n\n\
Output: the model (OUT, or OUT/member-K for ensembles) and OUT/cart_report.json: head and tail accuracy, tail \
margin, probe effect sizes (organisms), and the full run report.\n\n\
Examples:\n  reward-lens cart train --preset tail --augment --regularise 0.1,0.1 --out cart-tail/\n  \
reward-lens cart train --preset tail --ensemble 3 --out cart-ens/\n  \
reward-lens cart train --model M --pairs train.jsonl --held-out test.jsonl --tail-subsets xstest --curriculum natural,0.5 --out M-cart/")]
pub struct TrainArgs {
    /// A model organism preset to generate and train from scratch.
    #[arg(long, alias = "organism", conflicts_with = "model", required_unless_present = "model")]
    pub preset: Option<String>,
    /// A HuggingFace reward model to fine-tune (with --pairs).
    #[arg(long, value_name = "DIR", requires = "pairs")]
    pub model: Option<PathBuf>,
    /// Training pairs for --model, JSONL.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with = "preset")]
    pub pairs: Option<PathBuf>,
    /// Held-out pairs for --model (default: none; the report then covers the training pairs).
    #[arg(long, value_name = "FILE.jsonl", conflicts_with = "preset")]
    pub held_out: Option<PathBuf>,
    /// Subsets that are the tail.
    #[arg(long, value_delimiter = ',', default_value = "tail")]
    pub tail_subsets: Vec<String>,
    /// Circuit-guided augmentation.
    #[arg(long)]
    pub augment: bool,
    /// New tail pairs per tail training pair.
    #[arg(long, default_value_t = 4, value_parser = crate::args::at_least_one, requires = "augment")]
    pub augment_per_pair: usize,
    /// The circuit regulariser: λ_div,λ_stab.
    #[arg(long, value_name = "LAMBDA_DIV,LAMBDA_STAB")]
    pub regularise: Option<String>,
    /// Tail and head pairs (each) in the regulariser's batch.
    #[arg(long, default_value_t = 8, value_parser = crate::args::at_least_one, requires = "regularise")]
    pub reg_pairs: usize,
    /// Tail curriculum: start,end tail shares (`natural` = the data's own share).
    #[arg(long, value_name = "START,END")]
    pub curriculum: Option<String>,
    /// Circuit-diverse ensemble of M members.
    #[arg(long, alias = "members", value_name = "M")]
    pub ensemble: Option<usize>,
    /// Ensemble weight temperature: π_m ∝ exp(κ · tail validation accuracy).
    #[arg(long, default_value_t = 10.0, requires = "ensemble")]
    pub kappa: f64,
    /// Circuits to target (a `cart discover` report on the reference model and these pairs).
    #[arg(long, value_name = "FILE.json")]
    pub discovery: Option<PathBuf>,
    /// Organisms: a reference model (the organism trained without interventions) to reuse.
    #[arg(long, value_name = "DIR", conflicts_with = "model")]
    pub reference: Option<PathBuf>,
    /// Which weights move with --model: all, head, last:K.
    #[arg(long, default_value = "all", conflicts_with = "preset")]
    pub trainable: Trainable,
    /// Epochs (organisms: 3; --model: 3). Every arm takes ⌈N_train / batch⌉ · epochs steps per member.
    #[arg(long, value_parser = crate::args::at_least_one)]
    pub epochs: Option<usize>,
    /// Peak learning rate (organisms: 3e-3; --model: 1e-4).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Pairs per step (organisms: 16; --model: 16).
    #[arg(long, value_parser = crate::args::at_least_one)]
    pub batch_size: Option<usize>,
    /// Seed of data (organisms), initialisation, batches and every draw.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Organism training pairs (default 4000).
    #[arg(long, conflicts_with = "model")]
    pub n_train: Option<usize>,
    /// Organism test pairs (default 500).
    #[arg(long, conflicts_with = "model")]
    pub n_test: Option<usize>,
    /// Permutations of the light discovery's τ.
    #[arg(long, default_value_t = 1000)]
    pub permutations: usize,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let intervenes = a.augment || a.regularise.is_some() || a.ensemble.is_some();
    let fingerprint = match &a.model {
        Some(d) => Some(reward_lens_report::fingerprint::model(Some(d))?),
        None => None,
    };
    let targets = a.discovery.as_deref().map(|f| read_targets(f, intervenes, fingerprint.as_deref())).transpose()?;
    let data = match (a.preset, a.model, &a.pairs) {
        (Some(preset), _, _) => {
            TrainData::Organism { preset, n_train: a.n_train, n_test: a.n_test, reference: a.reference }
        }
        (None, Some(dir), Some(pairs)) => TrainData::Model {
            dir,
            train: read_pairs(pairs)?,
            held_out: a.held_out.as_deref().map(read_pairs).transpose()?.unwrap_or_default(),
            name: pairs.display().to_string(),
            trainable: a.trainable,
        },
        _ => unreachable!("clap requires --preset or --model with --pairs"),
    };
    let request = TrainRequest {
        data,
        tail_subsets: a.tail_subsets,
        augment_per_pair: a.augment.then_some(a.augment_per_pair),
        regularise: a.regularise.as_deref().map(parse_regularise).transpose()?,
        reg_pairs: a.reg_pairs,
        curriculum: a.curriculum.as_deref().map(parse_curriculum).transpose().map_err(anyhow::Error::msg)?,
        ensemble: a.ensemble,
        kappa: a.kappa,
        targets,
        epochs: a.epochs,
        lr: a.lr,
        batch_size: a.batch_size,
        seed: a.seed,
        permutations: a.permutations,
        out: a.out.clone(),
    };
    let mut bars = CartBars::default();
    let report =
        train(&request, &mut |e| bars.update(e)).with_context(|| format!("cart train → {}", a.out.display()))?;
    print!("{}", report.summary());
    Ok(())
}
