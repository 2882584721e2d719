//! `cart discover`, `cart vulnerability` and `cart bound`: the flags they share, turned into a
//! [`DiscoverSpec`]; the work is [`Analysis`]'s, the summaries the reports' own.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use clap::Args;
use reward_lens_cart::analysis::{Analysis, CandidateKind, DiscoverSpec, SplitKind};
use reward_lens_cart::bound::BoundOptions;
use reward_lens_cart::discover::{Layers, PairReadout};
use reward_lens_cart::oracle::{OracleOptions, OracleReport};
use reward_lens_cart::vulnerability::perturb::PerturbKind;
use reward_lens_cart::vulnerability::VulnerabilityOptions;
use reward_lens_engine::{PairText, Positions};

use super::write_json;
use crate::args::{choice, read_pairs};
use crate::progress::CartBars;
use crate::ModelArgs;

/// What `discover`, `vulnerability` and `bound` share: the model, the pairs, the split and the
/// discovery options.
#[derive(Args, Clone)]
pub struct DiscoverFlags {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Preference pairs, JSONL (prompt, chosen, rejected, subset, …).
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: PathBuf,
    /// How the tail is defined (recorded in every output).
    ///
    /// `field`: pairs whose --field value is one of --tail-subsets; `frequency`: scenario
    /// frequency, k-means on the model's pooled representations, the smallest clusters (≤ 1 − α of
    /// the pairs) are the tail; `rarity`: token rarity, the 1 − α share of pairs with the rarest
    /// tokens (mean log unigram frequency); `random`: a seeded random split with (1 − α)·N tail
    /// pairs, the null, for calibration.
    #[arg(long, value_parser = choice::<SplitKind>(&SplitKind::NAMES), default_value = "field")]
    pub split: SplitKind,
    /// The pair field the `field` split reads.
    #[arg(long, default_value = "subset")]
    pub field: String,
    /// Field values that are the tail (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "tail")]
    pub tail_subsets: Vec<String>,
    /// Head mass α of the frequency, rarity and random splits (the tail is at most 1 − α of the pairs).
    #[arg(long, default_value_t = 0.8)]
    pub alpha: f64,
    /// k-means clusters of the frequency split (fewer than the pairs; clusters all of one size
    /// are refused, as none is rarer than another).
    #[arg(long, default_value_t = 20)]
    pub clusters: usize,
    /// Candidate unit kinds (comma-separated).
    ///
    /// `mlp`: MLP neurons (blocks.{l}.mlp.hook_post) of --mlp-layers; `heads`: attention heads
    /// (‖hook_z‖ per head) of --head-layers; `sae`: the latents of the SAE given with --sae;
    /// `edges`: attention edges (head → key token) of --edge-layers.
    #[arg(long, value_parser = choice::<CandidateKind>(&CandidateKind::NAMES), value_delimiter = ',', default_value = "mlp,heads")]
    pub units: Vec<CandidateKind>,
    /// Layers whose MLP neurons are candidates: `last`, `all` or a list like `0,2`.
    #[arg(long, default_value = "last")]
    pub mlp_layers: String,
    /// Layers whose heads are candidates: `last`, `all` or a list.
    #[arg(long, default_value = "all")]
    pub head_layers: String,
    /// Layers whose attention edges are candidates (with `--units …,edges`): a head's attention from
    /// the read position to the keys holding one token, for tokens in at least 10% of the tail pairs
    /// and at least twice as common there as among head pairs.
    /// Ablating an edge sets that attention to its head-pair mean and renormalises the rest.
    #[arg(long, default_value = "all")]
    pub edge_layers: String,
    /// A SAE directory (cfg.json + weights); its latents become candidate units with `--units …,sae`.
    #[arg(long, value_name = "DIR")]
    pub sae: Option<PathBuf>,
    /// Where units are read: pooled (the token the reward is read at), or the mean over the
    /// response (or all) tokens.
    /// (`--position`, its older spelling, is kept as an alias.)
    #[arg(long = "positions", alias = "position", value_parser = choice::<Positions>(&Positions::NAMES), default_value = "pooled")]
    pub position: Positions,
    /// How a pair's two sequences make one value per unit.
    #[arg(long, value_parser = choice::<PairReadout>(&PairReadout::NAMES), default_value = "mean")]
    pub readout: PairReadout,
    /// Label permutations of the maxT threshold τ (family-wise error --family-alpha over all units).
    #[arg(long, default_value_t = 1000)]
    pub permutations: usize,
    #[arg(long, default_value_t = 0.05)]
    pub family_alpha: f64,
    /// A fixed |z| threshold instead of the permutation null (no multiplicity control).
    #[arg(long)]
    pub fixed_z: Option<f64>,
    /// Co-activation clustering stops below this correlation.
    #[arg(long, default_value_t = 0.3)]
    pub min_correlation: f64,
    /// Random same-size unit sets in the ablation null (0 disables causal validation).
    #[arg(long, default_value_t = 20)]
    pub random_sets: usize,
    /// Bootstrap resamples of the validation CIs.
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
    /// Units screened by attribution patching and confirmed by exact ablation (0 disables).
    #[arg(long, default_value_t = 16)]
    pub screen_top: usize,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 16, value_parser = crate::args::at_least_one)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DiscoverFlags {
    /// The model and pairs loaded, encoded and split as the flags say.
    fn analysis(&self) -> Result<Analysis> {
        let layers = |s: &str, flag: &str| s.parse::<Layers>().map_err(|e| anyhow!("{flag} {e}"));
        let f = self.clone();
        let spec = DiscoverSpec {
            split: f.split,
            field: f.field,
            tail_values: f.tail_subsets,
            alpha: f.alpha,
            clusters: f.clusters,
            units: f.units,
            mlp_layers: layers(&f.mlp_layers, "--mlp-layers")?,
            head_layers: layers(&f.head_layers, "--head-layers")?,
            edge_layers: layers(&f.edge_layers, "--edge-layers")?,
            sae: f.sae,
            position: f.position,
            readout: f.readout,
            permutations: f.permutations,
            family_alpha: f.family_alpha,
            fixed_z: f.fixed_z,
            min_correlation: f.min_correlation,
            random_sets: f.random_sets,
            bootstrap: f.bootstrap,
            screen_top: f.screen_top,
            batch_size: f.batch_size,
            seed: f.seed,
        };
        let model = self.model.load()?;
        let mut analysis = Analysis::new(spec, model, read_pairs(&self.pairs)?, &self.pairs)?;
        analysis.model_fingerprint = Some(self.model.fingerprint()?);
        if let Some(w) = analysis.sae.as_ref().and_then(|s| s.provenance_warning(&self.model.fingerprint().ok()?)) {
            eprintln!("warning: --sae: {w}");
        }
        Ok(analysis)
    }
}

/// Another pairs file (training or held-out), read, with its path.
fn other_pairs(path: Option<&Path>) -> Result<Option<(Vec<PairText>, &Path)>> {
    path.map(|p| Ok((read_pairs(p)?, p))).transpose()
}

// ---------------------------------------------------------------------------------------------
// discover

#[derive(Args)]
#[command(after_help = "Stage 1, activation pattern analysis: for every candidate unit, s_u = mean_tail |a_u| − \
mean_head |a_u| and z_u = s_u / pooled SD. The threshold τ on |z| comes from a Westfall–Young maxT null: P seeded \
permutations of the head/tail labels, family-wise error --family-alpha over all units. z > τ: tail-specialised.\n\
Stage 2, coherence: tail units are clustered by their co-activation (Pearson correlation over tail pairs, average \
linkage, cut at --min-correlation); each circuit's coherence is compared with random same-size unit groups.\n\
Stage 3, causal validation: each circuit is mean-ablated (to its head-set mean) and the change in accuracy, margin \
and BT loss is measured on head and on tail pairs with bootstrap CIs; validated when tail ΔBT − head ΔBT has a CI \
above 0 and the circuit beats 95% of --random-sets random same-size sets.\n\n\
Output: the full DiscoveryReport as JSON (--out) and a summary here.\n\n\
Examples:\n  reward-lens cart discover --model organisms/default --pairs organisms/default/train.jsonl --out circuits.json\n  \
reward-lens cart discover --model M --pairs rewardbench.jsonl --tail-subsets xstest-should-refuse,donotanswer \
--units mlp,heads --mlp-layers all\n  \
reward-lens cart discover --model M --pairs pairs.jsonl --split rarity --alpha 0.8")]
pub struct DiscoverArgs {
    #[command(flatten)]
    pub flags: DiscoverFlags,
    /// An oracle report (`cart oracle --out`) made on the same pairs: the circuits' precision and
    /// recall against its unit set go into the report.
    #[arg(long, value_name = "FILE.json")]
    pub oracle: Option<PathBuf>,
    /// Write the discovery report here.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
}

pub(super) fn run_discover(a: DiscoverArgs) -> Result<()> {
    let mut bars = CartBars::default();
    let oracle = a.oracle.as_deref().map(OracleReport::read).transpose()?;
    let mut report = a.flags.analysis()?.discovery(None, &mut |e| bars.update(e))?;
    if let (Some(o), Some(path)) = (&oracle, &a.oracle) {
        report.compare_with(o).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    print!("{}", report.summary());
    a.out.map_or(Ok(()), |out| write_json(&out, &report))
}

// ---------------------------------------------------------------------------------------------
// oracle

#[derive(Args)]
#[command(after_help = "Ground truth for circuit discovery that does not come from discovery. Every unit (each MLP \
neuron of every layer, each attention head) is mean-ablated alone, at every token, to its mean over the head pairs, \
and its exact effect on the tail and head margins is measured. A greedy search then grows the smallest set whose \
joint ablation takes tail accuracy to chance (0.5 + z·0.5/√N_tail) while head accuracy drops by at most \
--max-head-drop, prunes units it can do without, and confirms the set on every head pair.\n\n\
The scan and search use a seeded sample of --head-sample head pairs; the cost is reported in sequences run.\n\n\
Examples:\n  reward-lens organism --preset tail --out organisms/tail\n  \
reward-lens cart oracle --model organisms/tail --pairs organisms/tail/test.jsonl --out oracle.json\n  \
reward-lens cart discover --model organisms/tail --pairs organisms/tail/test.jsonl --oracle oracle.json")]
pub struct OracleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Preference pairs, JSONL, with the field that marks the tail.
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: PathBuf,
    /// The pair field that marks the tail.
    #[arg(long, default_value = "subset")]
    pub field: String,
    /// Field values that are the tail (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "tail")]
    pub tail_subsets: Vec<String>,
    /// Head pairs the scan and the search use (a seeded sample; 0: all).
    #[arg(long, default_value_t = 400)]
    pub head_sample: usize,
    /// The most head accuracy (a fraction) the circuit's ablation may cost.
    #[arg(long, default_value_t = 0.02)]
    pub max_head_drop: f64,
    /// Units (largest single-unit tail effect first) the search may add.
    #[arg(long, default_value_t = 32)]
    pub candidates: usize,
    /// The search gives up beyond this many units.
    #[arg(long, default_value_t = 24)]
    pub max_size: usize,
    /// Also ablate attention edges (head → key token) of these layers: `none`, `last`, `all` or a list.
    #[arg(long, default_value = "none")]
    pub edges: String,
    /// The goal: tail accuracy at most clean × (1 − FRACTION) instead of the chance ceiling
    /// (for a model whose tail keeps preferences it shares with the head).
    #[arg(long, value_name = "FRACTION")]
    pub tail_drop: Option<f64>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 64, value_parser = crate::args::at_least_one)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the oracle report here.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
}

pub(super) fn run_oracle(a: OracleArgs) -> Result<()> {
    let spec = DiscoverSpec {
        field: a.field.clone(),
        tail_values: a.tail_subsets.clone(),
        batch_size: a.batch_size,
        seed: a.seed,
        ..Default::default()
    };
    let l = Analysis::new(spec, a.model.load()?, read_pairs(&a.pairs)?, &a.pairs)?;
    let opts = OracleOptions {
        head_sample: a.head_sample,
        max_head_drop: a.max_head_drop,
        candidates: a.candidates,
        max_size: a.max_size,
        edges: a.edges.parse::<Layers>().map_err(|e| anyhow!("--edges {e}"))?,
        tail_drop: a.tail_drop,
        batch_size: a.batch_size,
        seed: a.seed,
        ..Default::default()
    };
    let mut bars = CartBars::default();
    let start = std::time::Instant::now();
    let report = l.oracle(&opts, &mut |e| bars.update(e))?;
    print!("{}", report.summary());
    println!("took {:.1} s", start.elapsed().as_secs_f64());
    a.out.map_or(Ok(()), |out| write_json(&out, &report))
}

// ---------------------------------------------------------------------------------------------
// vulnerability

#[derive(Args)]
#[command(after_help = "Per circuit (reconstructed definitions, see the JSON's `formula`):\n  \
consistency  B / (B + W) of the circuit's margin contribution c_C = r − r_ablated over groups of a tail pair and \
its label-preserving perturbations (whitespace, casing, markdown, list order, synonyms): 1 = perturbations never \
move it;\n  \
sensitivity  mean |c_C| on tail sequences (also a gradient and a per-edit form);\n  \
coverage     share of training tail pairs whose circuit activation exceeds the head pairs' 95th percentile;\n  \
V_C          rank(sensitivity) + rank(1 − consistency) + rank(1 − coverage); the top 20% are flagged vulnerable.\n\n\
Circuits come from --discovery FILE.json (made on the same --pairs), or discovery runs again with the same flags.\n\n\
Example:\n  reward-lens cart vulnerability --model M --pairs train.jsonl --discovery circuits.json --out vuln.json")]
pub struct VulnerabilityArgs {
    #[command(flatten)]
    pub flags: DiscoverFlags,
    /// A discovery report made on the same --pairs (else discovery runs now).
    #[arg(long, value_name = "FILE.json")]
    pub discovery: Option<PathBuf>,
    /// Training pairs for coverage (same split flags); default: --pairs.
    #[arg(long, value_name = "FILE.jsonl")]
    pub train_pairs: Option<PathBuf>,
    /// Perturbation kinds (comma-separated): whitespace, casing, markdown, list-order, synonym.
    #[arg(long, value_delimiter = ',', default_value = "whitespace,casing,markdown,list-order,synonym")]
    pub kinds: Vec<String>,
    #[arg(long, default_value_t = 0.95)]
    pub coverage_quantile: f64,
    #[arg(long, default_value_t = 0.2)]
    pub vulnerable_share: f64,
    /// Write the vulnerability report here.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
}

pub(super) fn run_vulnerability(a: VulnerabilityArgs) -> Result<()> {
    let kinds: Vec<PerturbKind> =
        a.kinds.iter().map(|k| k.parse()).collect::<Result<_, _>>().map_err(|e| anyhow!("--kinds {e}"))?;
    let l = a.flags.analysis()?;
    let mut bars = CartBars::default();
    let report = l.discovery(a.discovery.as_deref(), &mut |e| bars.update(e))?;
    let train = other_pairs(a.train_pairs.as_deref())?;
    let opts = VulnerabilityOptions {
        coverage_quantile: a.coverage_quantile,
        vulnerable_share: a.vulnerable_share,
        batch_size: a.flags.batch_size,
    };
    let v = l.vulnerability(&report, &kinds, train, &opts, &mut |e| bars.update(e))?;
    print!("{}", v.summary());
    a.out.map_or(Ok(()), |out| write_json(&out, &v))
}

// ---------------------------------------------------------------------------------------------
// bound

#[derive(Args)]
#[command(after_help = "L_tail(θ) ≤ L_head(θ) + C_p·|C_tail|·log(1/δ)/√N_tail + β·Div(C_tail, C_head)  (CART §2; C_p \
and β are not given, so nothing is fitted).\n\
Reported: |C_tail| (and how many were validated), N_tail and N_head of the training pairs, the complexity term as \
quoted and in the usual √ form, Div between the tail and head read-outs of the circuit units (standardised mean \
distance, linear MMD², 1 − CKA) and the empirical L_tail − L_head (BT losses) on --held-out.\n\n\
Example:\n  reward-lens cart bound --model M --pairs train.jsonl --held-out test.jsonl --discovery circuits.json")]
pub struct BoundArgs {
    #[command(flatten)]
    pub flags: DiscoverFlags,
    /// A discovery report made on the same --pairs (else discovery runs now).
    #[arg(long, value_name = "FILE.json")]
    pub discovery: Option<PathBuf>,
    /// Held-out pairs for L_tail and L_head (split with the same flags); default: --pairs.
    #[arg(long, alias = "eval-pairs", value_name = "FILE.jsonl")]
    pub held_out: Option<PathBuf>,
    /// Confidence parameter δ.
    #[arg(long, default_value_t = 0.05)]
    pub delta: f64,
    /// Write the bound report here.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
}

pub(super) fn run_bound(a: BoundArgs) -> Result<()> {
    let l = a.flags.analysis()?;
    let mut bars = CartBars::default();
    let report = l.discovery(a.discovery.as_deref(), &mut |e| bars.update(e))?;
    let held_out = other_pairs(a.held_out.as_deref())?;
    let opts = BoundOptions { delta: a.delta, batch_size: a.flags.batch_size };
    let b = l.bound(&report, held_out, &opts)?;
    print!("{}", b.summary());
    a.out.map_or(Ok(()), |out| write_json(&out, &b))
}
