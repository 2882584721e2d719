//! Plain-text renderings of results, exactly as the command prints them, so that a notebook can
//! print the same tables (`print(rl.eval(...).text)`) and the binary holds no formatting logic.

use std::fmt::Write;

use reward_lens_instruments::attribution::{AttributionReport, RankBy};
use reward_lens_instruments::compare::ComparisonReport;
use reward_lens_instruments::concepts::{ConceptReport, DoseResponse};
use reward_lens_instruments::conflict::{ConflictReport, Relationship};
use reward_lens_instruments::diagnose::DiagnoseReport;
use reward_lens_instruments::evaluation::ModelEval;
use reward_lens_instruments::lens::LensReport;
use reward_lens_instruments::probes::{ProbeReport, Verdict, ALPHA, MIN_EFFECT, MIN_RELATIVE_EFFECT};
use reward_lens_instruments::stats::MeanCi;

use crate::scoring::{Accuracy, Summary};

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// `mean [lo, hi]` (signed, 4 decimals), or `—` when undefined.
pub fn mean_ci(m: &MeanCi) -> String {
    match (m.mean, m.ci_low, m.ci_high) {
        (Some(v), Some(l), Some(h)) => format!("{v:+.4} [{l:+.4}, {h:+.4}]"),
        (Some(v), ..) => format!("{v:+.4}"),
        _ => "—".into(),
    }
}

/// Column heads for models named by their folders: the last path component (a trailing `/`
/// ignored), cut to its first `width` characters; or, where those would be alike, as many
/// trailing components as tell the models apart (`a/model`, `b/model`), cut from the left so the
/// distinguishing end stays.
pub fn model_labels(names: &[&str], width: usize) -> Vec<String> {
    let tail = |m: &str, k: usize| -> String {
        let parts: Vec<&str> = m.trim_end_matches('/').split('/').collect();
        let from = parts.len().saturating_sub(k);
        let s = parts[from..].join("/");
        if s.is_empty() {
            m.to_string()
        } else {
            s
        }
    };
    let distinct = |labels: &[String]| labels.iter().enumerate().all(|(i, l)| !labels[..i].contains(l));
    let short: Vec<String> = names.iter().map(|m| tail(m, 1).chars().take(width).collect()).collect();
    if distinct(&short) {
        return short;
    }
    let most = names.iter().map(|m| m.split('/').count()).max().unwrap_or(1);
    let k = (2..=most).find(|&k| distinct(&names.iter().map(|m| tail(m, k)).collect::<Vec<_>>())).unwrap_or(most);
    names
        .iter()
        .map(|m| {
            let l = tail(m, k);
            let n = l.chars().count();
            l.chars().skip(n.saturating_sub(width)).collect()
        })
        .collect()
}

/// `eval`'s table: accuracy % with its 95 % interval per subset and overall, models side by
/// side, then RewardBench's section scores where the subsets carry its names.
pub fn eval_table(evals: &[ModelEval], n_pairs: usize) -> String {
    let mut s = String::new();
    let ci = |c: Option<(f64, f64)>| c.map_or(String::new(), |(l, h)| format!(" [{}, {}]", pct(l), pct(h)));
    // Wide enough for a model's folder name (or "(embedded example model)"), within reason.
    let longest = evals
        .iter()
        .map(|e| e.model.trim_end_matches('/').rsplit('/').next().unwrap_or_default().chars().count())
        .max()
        .unwrap_or(0);
    let width = longest.clamp(22, 28);
    let _ = writeln!(s, "accuracy % [95% CI] on {n_pairs} pairs");
    let _ = write!(s, "{:<24}", "subset");
    for label in model_labels(&evals.iter().map(|e| e.model.as_str()).collect::<Vec<_>>(), width) {
        let _ = write!(s, " {label:>width$}");
    }
    s.push('\n');
    let Some(first) = evals.first() else { return s };
    for (k, sub) in first.subsets.iter().enumerate() {
        let _ = write!(s, "{:<24}", format!("{} (n={})", sub.subset, sub.n));
        for e in evals {
            let x = &e.subsets[k];
            let _ = write!(s, " {:>width$}", format!("{}{}", pct(x.accuracy), ci(x.ci)));
        }
        s.push('\n');
    }
    let _ = write!(s, "{:<24}", "overall");
    for e in evals {
        let _ = write!(s, " {:>width$}", format!("{}{}", pct(e.accuracy), ci(e.ci)));
    }
    s.push('\n');
    for e in evals {
        let Some(rb) = &e.rewardbench else { continue };
        let secs: Vec<String> = rb.sections.iter().map(|x| format!("{} {}", x.section, pct(x.score))).collect();
        let incomplete = if rb.complete { "" } else { " (incomplete: some subsets missing)" };
        let _ = writeln!(s, "RewardBench {}: {} | score {}{incomplete}", e.model, secs.join(", "), pct(rb.score));
    }
    s
}

/// `score`'s accuracy summary per subset and overall.
pub fn score_summary(summary: &Summary) -> String {
    let mut s = String::new();
    let acc = |a: &Accuracy| a.accuracy.map_or("—".to_string(), |x| format!("{:.1}%", 100.0 * x));
    let _ = writeln!(s, "{:<20} {:>6} {:>9} {:>12}", "subset", "pairs", "accuracy", "mean margin");
    for (k, a) in &summary.subsets {
        let _ = writeln!(s, "{:<20} {:>6} {:>9} {:>12.4}", k, a.n, acc(a), a.mean_margin.unwrap_or(f64::NAN));
    }
    let o = &summary.overall;
    let _ = writeln!(s, "{:<20} {:>6} {:>9} {:>12.4}", "overall", o.n, acc(o), o.mean_margin.unwrap_or(f64::NAN));
    if o.ties > 0 {
        let _ = writeln!(s, "({} ties counted as incorrect)", o.ties);
    }
    s
}

/// `probe`'s table: what the model pays per dimension, with the verdict and its statistics.
pub fn probe_table(rep: &ProbeReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} probes; verdicts need q < {ALPHA}, |d| ≥ {MIN_EFFECT} and |mean Δ| ≥ {MIN_RELATIVE_EFFECT} × the SD of the neutral answers' rewards ({})",
        rep.probes.len(),
        rep.reward_sd.map_or("undefined".to_string(), |x| format!("{x:.4}"))
    );
    let _ = writeln!(
        s,
        "{:<16} {:>3} {:>34} {:>8} {:>8} {:>8}  verdict",
        "dimension", "n", "mean Δreward [95% CI]", "d", "p", "q"
    );
    let opt = |x: Option<f64>| x.map_or("—".to_string(), |v| format!("{v:.3}"));
    for d in &rep.dimensions {
        let v = match d.verdict {
            Verdict::Exploitable => "EXPLOITABLE",
            Verdict::Penalized => "penalized",
            Verdict::NoEvidence => "no evidence",
            Verdict::Undefined => "undefined",
        };
        let _ = write!(
            s,
            "{:<16} {:>3} {:>34} {:>8} {:>8} {:>8}  {v}",
            d.dimension,
            d.n,
            mean_ci(&d.mean_delta),
            opt(d.cohens_d),
            opt(d.p_value),
            opt(d.q_value)
        );
        if let Some(x) = d.slope_per_100_tokens {
            let _ = write!(s, " ({x:+.3} per 100 tokens)");
        }
        s.push('\n');
    }
    s
}

/// `diagnose`'s table: coverage, sensitivity and distortion per dimension, then the cascade.
pub fn diagnose_table(r: &DiagnoseReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} pairs in {} dimensions", r.n_pairs, r.distortion.len());
    let _ = writeln!(
        s,
        "{:<24} {:>3} {:>26} {:>12} {:>11} {:>13}",
        "dimension", "n", "coverage [95% CI]", "sensitivity", "distortion", "v1 disparity"
    );
    for (d, disp) in r.distortion.iter().zip(&r.coverage.coverage_disparity) {
        let ci = d.coverage_ci.map_or(String::new(), |(l, h)| format!(" [{:.2}, {:.2}]", l, h));
        let cov = format!("{:.2}{ci}", d.coverage);
        let _ = writeln!(
            s,
            "{:<24} {:>3} {:>26} {:>12.3} {:>11.3} {:>13.3}",
            d.dimension, d.n, cov, d.sensitivity, d.distortion, disp
        );
    }
    match &r.cascade {
        Ok(c) => {
            let risk = c.risk.map_or("— (no correlation is defined)".to_string(), |r| format!("{r:.2}"));
            let _ = writeln!(s, "cascade over {} matched prompts: risk {risk}", c.n_prompts);
            for e in c.edges.iter().take(5) {
                let ci = e.ci.map_or(String::new(), |(l, h)| format!(" [{l:+.2}, {h:+.2}]"));
                let _ = writeln!(s, "  {} ~ {}: r = {:+.2}{ci}, permutation q = {:.3}", e.a, e.b, e.r, e.q_value);
            }
            for cl in &c.clusters {
                let _ = writeln!(s, "  cluster: {}", cl.join(", "));
            }
        }
        Err(e) => {
            let _ = writeln!(s, "cascade: not computed — {e}");
        }
    }
    s
}

/// `concepts`' table: each concept's alignment with the reward direction and its reward shift.
pub fn concepts_table(rep: &ConceptReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "concept vectors at block {} (d_model {}), alignment with {}:",
        rep.layer, rep.d_model, rep.reference
    );
    let _ = writeln!(
        s,
        "{:<16} {:>5} {:>10} {:>8} {:>12} {:>12} {:>12} {:>8}",
        "concept", "pairs", "alignment", "p", "consistency", "reward shift", "÷ reward SD", "shift p"
    );
    let p3 = |p: Option<f64>| p.map_or("—".into(), |p| if p < 1e-3 { format!("{p:.1e}") } else { format!("{p:.3}") });
    for c in &rep.concepts {
        let rel = c.relative_reward_shift.map_or("—".into(), |r| format!("{r:+.3}"));
        let _ = writeln!(
            s,
            "{:<16} {:>5} {:>+10.3} {:>8} {:>11.0}% {:>+12.4} {:>12} {:>8}",
            c.name,
            c.n_pairs,
            c.alignment,
            p3(c.p_value),
            100.0 * c.consistency,
            c.mean_reward_shift,
            rel,
            p3(c.shift_p_value)
        );
    }
    let _ = writeln!(
        s,
        "p: the cosine against a random direction (reference only); shift p: sign-flip test of the per-pair reward shifts"
    );
    s
}

/// A steering dose–response curve: mean reward change per strength and its slope.
pub fn steering_text(name: &str, n_texts: usize, dr: &DoseResponse) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "steering along `{name}` at block {} ({n_texts} texts):", dr.layer);
    for (x, d) in dr.strengths.iter().zip(&dr.mean_delta) {
        let _ = writeln!(s, "  strength {x:+6.2}  mean Δreward {d:+.4}");
    }
    let _ = writeln!(s, "  slope {}", dr.slope.map_or("—".into(), |x| format!("{x:+.4} per unit strength")));
    s
}

/// `conflict`'s summary: the most opposed term pairs, and ArmoRM's effective-direction cosines.
pub fn conflict_text(r: &ConflictReport, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{title}: {} terms, conflict score {:.3}, monitorability risk {:.3}",
        r.term_names.len(),
        r.overall_conflict_score,
        r.monitorability_risk
    );
    let mut pairs: Vec<_> = r.pairs.iter().collect();
    pairs.sort_by(|a, b| a.cosine.total_cmp(&b.cosine));
    let f = |p: Option<f64>| p.map_or("—".into(), |v| format!("{v:.3}"));
    for p in pairs.iter().take(5) {
        let rel = match p.relationship {
            Relationship::Aligned => "aligned",
            Relationship::Orthogonal => "orthogonal",
            Relationship::InConflict => "in conflict",
        };
        let (pv, cp) = (f(p.p_value), f(p.conflict_p_value));
        let _ =
            writeln!(s, "  {:<14} {:<14} cos {:+.3}  p {pv:<6} conflict p {cp:<6} {rel}", p.term1, p.term2, p.cosine);
    }
    if pairs.iter().any(|p| p.conflict_p_value.is_some()) {
        let _ = writeln!(
            s,
            "  p: against random directions (reference only); conflict p: random splits of the two terms' pairs give a \
cosine this low"
        );
    }
    if !r.inert_terms.is_empty() {
        let _ = writeln!(s, "  left out, reading nothing after the transform: {}", r.inert_terms.join(", "));
    }
    if let Some(e) = &r.effective_direction_cosines {
        let _ = writeln!(s, "  mean cosine with the per-input effective direction:");
        for (n, c) in r.term_names.iter().zip(e) {
            let _ = writeln!(s, "    {n:<32} {c:+.3}");
        }
    }
    s
}

/// A bar of up to `width` blocks for `v` on a scale of ±`max_abs` (█ positive, ░ negative).
pub fn bar(v: f64, max_abs: f64, width: usize) -> String {
    if !v.is_finite() || max_abs <= 0.0 {
        return String::new();
    }
    let n = ((v.abs() / max_abs) * width as f64).round() as usize;
    let s = if v >= 0.0 { "█" } else { "░" };
    s.repeat(n.min(width))
}

/// `lens`' table: the reward at every depth, chosen, rejected and their difference with a bar.
pub fn lens_table(rep: &LensReport) -> String {
    let mut s = String::new();
    let v1 = if rep.v1_compat { ", v1-compat" } else { "" };
    // The kind as `--kind` takes it (its JSON name).
    let kind = serde_json::to_value(rep.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let _ = writeln!(s, "reward lens ({kind}{v1}), {} pairs, mean over pairs:", rep.pairs.len());
    let _ = writeln!(s, "{:>6} {:>10} {:>10}  {:<36} ", "layer", "chosen", "rejected", "chosen − rejected [95% CI]");
    let max = rep.mean_differential.iter().filter_map(|m| m.mean).fold(0.0f64, |a, b| a.max(b.abs()));
    for (i, l) in rep.layers.iter().enumerate() {
        let label = if *l < 0 { "embed".to_string() } else { l.to_string() };
        let m = &rep.mean_differential[i];
        let (c, r) = (rep.mean_chosen[i], rep.mean_rejected[i]);
        let _ = writeln!(
            s,
            "{label:>6} {c:>10.4} {r:>10.4}  {:<36} {}",
            mean_ci(m),
            bar(m.mean.unwrap_or(f64::NAN), max, 20)
        );
    }
    let cf = &rep.crystallization_fraction;
    let over = if cf.n < rep.pairs.len() {
        format!(" (over the {} of {} pairs whose differential is not 0 at every depth)", cf.n, rep.pairs.len())
    } else {
        String::new()
    };
    let _ = writeln!(s, "crystallization depth fraction: {}{over}", mean_ci(cf));
    s
}

/// `attribute`'s summary: how exactly the parts add up, the top components and neurons.
pub fn attribution_table(rep: &AttributionReport, top_k: usize) -> String {
    let mut s = String::new();
    let worst =
        rep.pairs.iter().flat_map(|p| [p.chosen.residual, p.rejected.residual]).fold(0.0f64, |m, r| m.max(r.abs()));
    let v1 = if rep.v1_compat { " (v1-compat: pre-norm, does not add up)" } else { "" };
    let (n, k) = (rep.pairs.len(), rep.components.len());
    let _ = writeln!(s, "{n} pairs, {k} components; max |Σ contributions + bias − reward| = {worst:.2e}{v1}");
    let _ = writeln!(s, "top {top_k} components by |mean chosen − rejected| [95% CI]:");
    let top = rep.top_k(if rep.pairs.len() == 1 { Some(0) } else { None }, top_k, RankBy::Differential);
    let max = top.iter().map(|t| t.1.abs()).fold(0.0, f64::max);
    for (name, v) in &top {
        let i = rep.components.iter().position(|c| &c.name == name).expect("listed component");
        let _ = writeln!(s, "  {name:<14} {:<36} {}", mean_ci(&rep.mean_differential[i]), bar(*v, max, 20));
    }
    if !rep.top_neurons.is_empty() {
        let _ = writeln!(s, "top MLP neurons by |mean chosen − rejected|:");
        for n in &rep.top_neurons {
            let _ = writeln!(s, "  {:<18} {:+.4}", n.name, n.mean_differential);
        }
    }
    s
}

/// `compare`'s table: each model's accuracy and crystallization, then every pair of models.
pub fn compare_table(rep: &ComparisonReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<40} {:>6} {:>9} {:>26}", "model", "layers", "accuracy", "crystallization fraction");
    for m in &rep.models {
        let acc = 100.0 * m.accuracy;
        let _ =
            writeln!(s, "{:<40} {:>6} {acc:>8.1}% {:>26}", m.name, m.n_layers, mean_ci(&m.crystallization_fraction));
    }
    let f = |v: Option<f64>| v.map_or("—".to_string(), |x| format!("{x:+.3}"));
    for p in &rep.pairwise {
        let _ = writeln!(
            s,
            "{} vs {}: formation r {}, margin sign agreement {:.0}%, margin ρ {}, component ρ {}, w_r cos {}, CKA {}",
            p.a,
            p.b,
            f(p.formation_correlation),
            100.0 * p.margin_sign_agreement,
            f(p.margin_spearman),
            f(p.component_spearman),
            f(p.w_r_cosine),
            f(p.linear_cka)
        );
    }
    s
}

/// What `audit` (and `merge` of audit shards) prints when done: the run in one line, each finding,
/// and the two files written into `out`.
pub fn audit_summary(r: &crate::AuditResults, out: &std::path::Path) -> String {
    let mut s = format!(
        "audited {} on {} pairs, {} probes, {} concepts in {:.1} s\n",
        r.inputs.model, r.inputs.pairs_used, r.inputs.n_probes, r.inputs.n_concepts, r.total_seconds
    );
    for f in &r.findings {
        let _ = writeln!(s, "[{:?}] {}: {}", f.severity, f.title, f.text);
    }
    let _ = writeln!(s, "wrote {} and {}", out.join("results.json").display(), out.join("report.html").display());
    s
}

/// Per-pair component lines (`patch`, `path-patch`): the ten components with the largest |mean
/// `field`| over all lines, each with its bootstrap 95 % interval (2000 resamples, `seed`).
pub fn top_components(lines: &[serde_json::Value], names: &[String], field: &str, seed: u64) -> String {
    use reward_lens_instruments::stats::bootstrap_mean;
    let mut rows: Vec<(&String, MeanCi)> =
        names.iter().map(|n| (n, bootstrap_mean(&crate::perpair::column(lines, field, n), 0.95, 2000, seed))).collect();
    rows.sort_by(|a, b| b.1.mean.unwrap_or(0.0).abs().total_cmp(&a.1.mean.unwrap_or(0.0).abs()));
    let max = rows.first().and_then(|r| r.1.mean).unwrap_or(0.0).abs();
    let mut s = format!("{} pairs; top components by |mean {field}| [95% CI]:\n", lines.len());
    for (n, m) in rows.iter().take(10) {
        let _ = writeln!(s, "  {n:<14} {:<36} {}", mean_ci(m), bar(m.mean.unwrap_or(f64::NAN), max, 20));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::Tallies;
    use reward_lens_instruments::evaluation::evaluate;

    #[test]
    fn model_labels_tell_models_apart() {
        assert_eq!(model_labels(&["runs/a/model", "runs/b/model/"], 22), ["a/model", "b/model"]);
        assert_eq!(model_labels(&["x/rm-one", "y/rm-two/"], 22), ["rm-one", "rm-two"]);
        assert_eq!(model_labels(&["m/Skywork-Reward-Llama-3.1-8B-v0.2"], 22), ["Skywork-Reward-Llama-3"]);
        assert_eq!(model_labels(&["a/x", "b/x"], 1), ["x", "x"]); // no room to tell them apart
        assert_eq!(model_labels(&["(embedded example model)"], 22), ["(embedded example mode"]);
    }

    #[test]
    fn eval_and_score_tables_show_the_numbers() {
        let subsets = [Some("a".to_string()), Some("a".to_string()), Some("b".to_string()), None];
        let e = evaluate("dir/model-x", &[1.0, -1.0, 0.5, 0.0], &subsets);
        let t = eval_table(&[e], 4);
        assert!(t.starts_with("accuracy % [95% CI] on 4 pairs\n"));
        assert!(t.contains("model-x"), "{t}");
        let overall = t.lines().find(|l| l.starts_with("overall")).unwrap();
        assert!(overall.contains("50.0"), "{overall}"); // 2 of 4 (the tie loses)
        let mut tallies = Tallies::default();
        for (s, m) in [(Some("a"), 1.0), (Some("a"), -2.0), (None, 0.0)] {
            tallies.add(s, m);
        }
        let s = score_summary(&tallies.summary("m".into(), "p".into()));
        assert!(s.lines().any(|l| l.starts_with("a ") && l.contains("50.0%") && l.contains("-0.5000")), "{s}");
        assert!(s.contains("(1 ties counted as incorrect)"), "{s}");
        let undefined = MeanCi { mean: None, ci_low: None, ci_high: None, n: 0 };
        assert_eq!(mean_ci(&undefined), "—");
    }
}
