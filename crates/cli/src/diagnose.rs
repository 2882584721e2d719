use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use reward_lens_engine::{PaddingSide, Truncation};
use reward_lens_instruments::diagnose::{
    cascade, coverage_disparity, distortion, CascadeReport, CoverageReport, DimensionDistortion,
};

use crate::ModelArgs;
use reward_lens_engine::PairText;

/// The built-in diagnostic set: 10 seed prompts × 12 dimensions, matched (data/diagnostic).
const BUILTIN: &str = include_str!("../../../data/diagnostic/pairs.jsonl");

#[derive(Args)]
#[command(after_help = "Scores a diagnostic pair set (default: the built-in one, 10 seed prompts × 12 dimensions, \
matched: every prompt has a pair in every dimension) and reports per dimension (`subset`):\n  \
distortion D = sensitivity × (1 − coverage), coverage = share ordered correctly, sensitivity = mean |margin| \
relative to all dimensions;\n  coverage disparity (reward-lens 1.0's \"distortion index\");\n  cascade: correlations \
of per-prompt deltas across dimensions over matched prompts (lines sharing `seed`), with bootstrap CIs, clusters and a \
risk score. Fewer than 5 matched prompts is refused.\nThe effective n (prompts per dimension) is printed with every \
figure.\n\nExample:\n  reward-lens diagnose --model DIR --out diagnose.json")]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Your own diagnostic set (JSONL with prompt, chosen, rejected, subset and a `seed` naming the
    /// matched prompt); default: the built-in set.
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: Option<PathBuf>,
    /// Drop prompt tokens from the left when a conversation exceeds the context.
    #[arg(long)]
    pub truncate_prompt: bool,
    /// |r| above which two dimensions are linked (with a CI excluding 0).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
}

#[derive(Serialize)]
struct Output {
    n_pairs: usize,
    distortion: Vec<DimensionDistortion>,
    coverage: CoverageReport,
    cascade: Result<CascadeReport, String>,
}

pub fn run(a: DiagnoseArgs) -> Result<()> {
    let model = a.model.load()?;
    let pairs: Vec<PairText> = match &a.pairs {
        Some(p) => crate::args::read_pairs(p)?,
        None => reward_lens_report::datasets::parse_pairs(BUILTIN, std::path::Path::new("built-in diagnostic set"))?,
    };
    let truncation = if a.truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };
    let scores: Vec<(f32, f32)> =
        crate::output::score_with_bar(&model, &pairs, truncation, a.run.batch_size, PaddingSide::Right)?
            .into_iter()
            .map(|s| (s.chosen, s.rejected))
            .collect();
    let dim = |p: &PairText| p.subset.clone().unwrap_or_else(|| "(none)".into());
    let margins: Vec<(String, f64)> = pairs.iter().zip(&scores).map(|(p, (c, r))| (dim(p), (*c - *r) as f64)).collect();
    let dist = distortion(&margins, a.run.seed);
    let dims: Vec<String> = dist.iter().map(|d| d.dimension.clone()).collect();
    let probes: Vec<(f64, Vec<usize>)> =
        margins.iter().map(|(d, m)| (*m, vec![dims.iter().position(|x| x == d).expect("listed")])).collect();
    let cov = coverage_disparity(&dims, &probes, 0.5);
    let mut by_seed: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (p, (c, r)) in pairs.iter().zip(&scores) {
        if let Some(seed) = p.field("seed") {
            by_seed.entry(seed.to_string()).or_default().insert(dim(p), (*r - *c) as f64);
        }
    }
    let casc = cascade(&dims, &by_seed, a.threshold, a.run.seed).map_err(|e| e.to_string());

    println!("{} pairs in {} dimensions", pairs.len(), dims.len());
    println!(
        "{:<24} {:>3} {:>26} {:>12} {:>11} {:>13}",
        "dimension", "n", "coverage [95% CI]", "sensitivity", "distortion", "v1 disparity"
    );
    for (d, disp) in dist.iter().zip(&cov.coverage_disparity) {
        let ci = d.coverage_ci.map_or(String::new(), |(l, h)| format!(" [{:.2}, {:.2}]", l, h));
        println!(
            "{:<24} {:>3} {:>26} {:>12.3} {:>11.3} {:>13.3}",
            d.dimension,
            d.n,
            format!("{:.2}{ci}", d.coverage),
            d.sensitivity,
            d.distortion,
            disp
        );
    }
    match &casc {
        Ok(c) => {
            println!("cascade over {} matched prompts: risk {:.2}", c.n_prompts, c.risk);
            for e in c.edges.iter().take(5) {
                let ci = e.ci.map_or(String::new(), |(l, h)| format!(" [{l:+.2}, {h:+.2}]"));
                println!("  {} ~ {}: r = {:+.2}{ci}", e.a, e.b, e.r);
            }
            for cl in &c.clusters {
                println!("  cluster: {}", cl.join(", "));
            }
        }
        Err(e) => println!("cascade: not computed — {e}"),
    }
    let out = Output { n_pairs: pairs.len(), distortion: dist, coverage: cov, cascade: casc };
    crate::output::write(a.run.out.as_deref(), "diagnose", &a.model.name(), &pairs, &out)
}
