use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use reward_lens_instruments::faithfulness::{check_granularity, faithfulness};
use reward_lens_instruments::stats::bootstrap_mean;

use crate::args::PatchArgs;
use crate::output;
use crate::output::named;

#[derive(Args)]
#[command(after_help = "For every pair: exact direct attribution (DLA), attribution patching (AtP) and activation \
patching of the same components, and Spearman ρ of DLA vs patching and AtP vs patching (signed and on |values|). \
The summary gives the mean ρ with a 95% bootstrap interval, overall and per subset: reward-lens 1.0's validation \
experiment (mean ρ −0.256 on Skywork-Reward-Llama-3.1-8B) as one command.\n\nExample:\n  \
reward-lens faithfulness --model DIR --pairs pairs.jsonl --out faithfulness.jsonl")]
pub struct FaithfulnessArgs {
    #[command(flatten)]
    pub patch: PatchArgs,
}

pub fn run(a: FaithfulnessArgs) -> Result<()> {
    let a = a.patch;
    if a.divergence_reference.is_some() {
        anyhow::bail!("--divergence-reference applies to `patch`; faithfulness compares rankings and never reads it");
    }
    if a.verify_top > 0 {
        // Refused here, not per pair: it is the option that is wrong, not a line of the file.
        anyhow::bail!(
            "--verify-top applies to `atp`: faithfulness measures attribution patching's estimates, and verifying would \
             replace the largest by exact patches"
        );
    }
    check_granularity(a.granularity).map_err(|e| anyhow::anyhow!("--granularity: {e}"))?;
    let pairs = a.input.read()?;
    a.guard("faithfulness", pairs.len())?;
    let pairs = &pairs[crate::args::shard_of(a.shard, pairs.len()).0];
    let model = a.model.load_shared()?;
    let opts = a.options(&model)?;
    let lines = output::per_pair(&a.out, a.resume, pairs, "faithfulness", |p| {
        let inp = a.input.encode_one(&model, p)?;
        let rep = faithfulness(&model, &[inp], std::slice::from_ref(&p.subset), &opts)?;
        let r = &rep.pairs[0];
        Ok(json!({
            "dla_vs_patch": r.dla_vs_patch,
            "dla_vs_patch_abs": r.dla_vs_patch_abs,
            "atp_vs_patch": r.atp_vs_patch,
            "atp_vs_patch_abs": r.atp_vs_patch_abs,
            "original_margin": rep.patching.pairs[0].original_margin,
            "dla": named(&rep.patching, &rep.dla[0]),
            "patch": named(&rep.patching, &rep.patching.pairs[0].effects),
            "atp": named(&rep.attribution_patching, &rep.attribution_patching.pairs[0].effects),
        }))
    })?;
    let keys = ["dla_vs_patch", "dla_vs_patch_abs", "atp_vs_patch", "atp_vs_patch_abs"];
    let show = |title: &str, ls: &[&Value]| {
        let cells: Vec<String> = keys
            .iter()
            .map(|k| {
                let xs: Vec<f64> = ls.iter().filter_map(|l| l[*k].as_f64()).collect();
                let cell = reward_lens_report::text::mean_ci(&bootstrap_mean(&xs, 0.95, 2000, a.seed));
                // ρ is undefined on a pair whose ranking is constant: say over how many the mean is.
                if xs.len() < ls.len() {
                    format!("{cell} (n={})", xs.len())
                } else {
                    cell
                }
            })
            .collect();
        println!("{title:<14} {:>4}  {}", ls.len(), cells.join("  "));
    };
    println!("mean Spearman ρ [95% CI]: {}", keys.join(", "));
    let all: Vec<&Value> = lines.iter().collect();
    show("overall", &all);
    let mut subsets: Vec<String> = lines.iter().filter_map(|l| l["subset"].as_str().map(str::to_string)).collect();
    subsets.sort();
    subsets.dedup();
    for s in subsets {
        let ls: Vec<&Value> = lines.iter().filter(|l| l["subset"].as_str() == Some(s.as_str())).collect();
        show(&s, &ls);
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
