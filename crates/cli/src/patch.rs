//! `reward-lens patch` and `reward-lens atp`: per-pair patching effects, one JSON line each.

use anyhow::{bail, Result};
use serde_json::json;

use reward_lens_instruments::patching::{atp, patch, Granularity, PatchMode};

pub use crate::args::PatchArgs;
use crate::output::{self, named};

fn run_kind(a: PatchArgs, attribution_patching: bool) -> Result<()> {
    // Options that do not go together are refused before anything is read or written.
    match (attribution_patching, a.naive, a.verify_top, &a.divergence_reference) {
        (true, true, ..) => bail!("--naive applies to `patch` (a full forward per patch); `atp` runs no patches"),
        (true, _, _, Some(_)) => bail!("--divergence-reference applies to `patch`, not `atp`"),
        (false, _, k, _) if k > 0 => {
            bail!("--verify-top applies to `atp` (its largest estimates patched exactly); `patch` is exact throughout")
        }
        (false, .., Some(_)) if a.granularity != Granularity::Sublayer => {
            bail!("--divergence-reference scores sublayer patches (--granularity sublayer)")
        }
        _ if a.mean_reference.is_some() && a.mode != PatchMode::Mean => {
            bail!("--mean-reference is read by --mode mean only (the mode is {})", a.mode)
        }
        _ => {}
    }
    let pairs = a.input.read()?;
    a.guard(if attribution_patching { "atp" } else { "patch" }, pairs.len())?;
    // One pair per call: a shard's pairs are computed exactly as in one run.
    let pairs = &pairs[crate::args::shard_of(a.shard, pairs.len()).0];
    let model = a.model.load_shared()?;
    let opts = a.options(&model)?;
    let mut names: Vec<String> = Vec::new();
    let (mut fe, mut done) = (0.0, 0usize);
    let what = if attribution_patching { "attribution patching" } else { "patching" };
    let divergence_texts = match &a.divergence_reference {
        Some(f) => Some(crate::args::reference_texts(&model, f)?),
        None => None,
    };
    let mut reference: Option<reward_lens_instruments::divergence::Reference> = None;
    let lines = output::per_pair(&a.out, a.resume, pairs, what, |p| {
        let inp = a.input.encode_one(&model, p)?;
        let one = std::slice::from_ref(&inp);
        let rep = if attribution_patching { atp(&model, one, &opts)? } else { patch(&model, one, &opts)? };
        names = rep.components.iter().map(|c| c.name.clone()).collect();
        fe += rep.forward_equivalents_per_pair;
        done += 1;
        let r = &rep.pairs[0];
        let mut line = json!({
            "original_margin": r.original_margin,
            "effects": named(&rep, &r.effects),
            "normalized": named(&rep, &r.normalized),
            "len_chosen": r.len_chosen,
            "len_rejected": r.len_rejected,
        });
        if !r.exact.is_empty() {
            line["exact"] = json!(r.exact.iter().map(|&k| &names[k]).collect::<Vec<_>>());
        }
        if let Some(texts) = &divergence_texts {
            if reference.is_none() {
                reference = Some(reward_lens_instruments::divergence::Reference::fit(&model, &names, texts)?);
            }
            let div = reward_lens_instruments::divergence::check(
                &model,
                &rep,
                one,
                reference.as_ref().expect("fitted"),
                a.v1_compat,
            )?;
            line["divergence"] = serde_json::to_value(&div.pairs[0])?;
        }
        Ok(line)
    })?;
    if names.is_empty() {
        names = lines
            .first()
            .and_then(|l| l["effects"].as_object())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
    }
    print!("{}", reward_lens_report::text::top_components(&lines, &names, "effects", a.seed));
    if done > 0 {
        println!("compute: {:.1} forward-equivalents per pair (mean over the pairs run now)", fe / done as f64);
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

pub fn run(a: PatchArgs) -> Result<()> {
    run_kind(a, false)
}

pub fn run_atp(a: PatchArgs) -> Result<()> {
    run_kind(a, true)
}
