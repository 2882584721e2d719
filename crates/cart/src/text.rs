//! The human-readable summaries of CART's reports, as `cart discover`, `vulnerability`, `bound`
//! and `train` print them: the same text for the binary and for library (Python) users.

use std::fmt::Write;

use crate::bound::BoundReport;
use crate::discover::{DiscoveryReport, Estimate, Threshold};
use crate::headtail::SplitRule;
use crate::training::TrainOutput;
use crate::vulnerability::VulnerabilityReport;

/// A signed number with `digits` decimals, or `undefined`.
pub fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("undefined".into(), |v| format!("{v:+.digits$}"))
}

/// `mean [low, high]`, the mean alone without an interval, or `undefined`.
pub fn fmt_est(e: &Estimate) -> String {
    match (e.mean, e.ci_low, e.ci_high) {
        (Some(m), Some(a), Some(b)) => format!("{m:+.4} [{a:+.4}, {b:+.4}]"),
        (Some(m), _, _) => format!("{m:+.4}"),
        _ => "undefined".into(),
    }
}

/// What made the tail, in a few words.
pub fn describe_rule(rule: &SplitRule) -> String {
    match rule {
        SplitRule::Field { field, tail_values } => format!("`{field}` ∈ {{{}}}", tail_values.join(", ")),
        SplitRule::ScenarioFrequency { alpha, k, .. } => format!("scenario frequency, α {alpha}, k {k}"),
        SplitRule::TokenRarity { alpha, .. } => format!("token rarity, α {alpha}"),
        SplitRule::Random { n_tail, seed } => format!("random ({n_tail} tail, seed {seed})"),
        SplitRule::Labels { description } => description.clone(),
    }
}

// `writeln!` into a String cannot fail; the results are dropped with `let _`.

impl DiscoveryReport {
    /// The split, τ, clean metrics, one block per circuit and the screening, line by line.
    pub fn summary(&self) -> String {
        let (r, mut o) = (self, String::new());
        let s = &r.specialisation;
        let rule = describe_rule(&r.split.rule);
        let _ = writeln!(o, "{} pairs: N_head {}, N_tail {} (tail: {rule})", r.n_pairs, r.split.n_head, r.split.n_tail);
        let tau = match (&s.threshold, s.tau) {
            (Threshold::MaxT { permutations, family_alpha }, Some(t)) => {
                format!("τ = {t:.3} (maxT over {permutations} permutations, family-wise α {family_alpha})")
            }
            (Threshold::FixedZ { z }, _) => format!("τ = {z} (fixed)"),
            _ => "τ undefined".into(),
        };
        let _ = writeln!(
            o,
            "{} candidate units ({} with undefined z) · {tau} · tail-specialised {} · head-specialised {}",
            r.n_units,
            s.n_undefined,
            s.tail_units.len(),
            s.head_units.len()
        );
        let _ = writeln!(
            o,
            "clean accuracy: head {:.1}%, tail {:.1}%; mean margin head {:+.3}, tail {:+.3}",
            100.0 * r.clean_head.accuracy,
            100.0 * r.clean_tail.accuracy,
            r.clean_head.mean_margin,
            r.clean_tail.mean_margin
        );
        if r.circuits.is_empty() {
            let _ = writeln!(o, "no tail circuit: no unit passed τ");
        }
        for c in &r.circuits {
            let names: Vec<String> = c.units.iter().take(8).map(|u| u.unit.name()).collect();
            let more = if c.units.len() > 8 { format!(" … (+{})", c.units.len() - 8) } else { String::new() };
            let _ = writeln!(
                o,
                "circuit {} ({} unit{}{}): coherence {} (p {}) · {}{more}",
                c.id,
                c.units.len(),
                if c.units.len() == 1 { "" } else { "s" },
                if c.distributed { ", distributed" } else { "" },
                c.coherence.map_or("—".into(), |x| format!("{x:.2}")),
                c.coherence_p.map_or("—".into(), |x| format!("{x:.3}")),
                names.join(", ")
            );
            if let Some(v) = &c.causal {
                let _ = writeln!(
                    o,
                    "  ablation ΔBT loss: tail {}  head {}  tail − head {}",
                    fmt_est(&v.tail.delta_loss),
                    fmt_est(&v.head.delta_loss),
                    fmt_est(&v.tail_minus_head_loss)
                );
                let _ = writeln!(
                    o,
                    "  Δaccuracy tail {} · beats {} of {} random sets · {}",
                    fmt_est(&v.tail.delta_accuracy),
                    v.loss_percentile.map_or("—".into(), |p| format!("{:.0}%", 100.0 * p)),
                    v.random_sets.len(),
                    if v.validated { "VALIDATED" } else { "not validated" }
                );
            }
        }
        if let Some(sc) = &r.screening {
            let _ = writeln!(
                o,
                "screening: {} units by attribution patching; Spearman(AtP, exact) {}",
                sc.screened.len(),
                sc.spearman.map_or("undefined".into(), |x| format!("{x:.2}"))
            );
        }
        o
    }
}

impl VulnerabilityReport {
    /// A table: one row per circuit with consistency, sensitivity, coverage, V_C and the flag.
    pub fn summary(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "{} tail pairs, {} perturbed copies · {}", self.n_tail, self.n_perturbed, self.formula);
        let _ = writeln!(
            o,
            "{:>7}  {:>5}  {:>11}  {:>12}  {:>8}  {:>5}  vulnerable",
            "circuit", "units", "consistency", "sensitivity", "coverage", "V_C"
        );
        for c in &self.circuits {
            let _ = writeln!(
                o,
                "{:>7}  {:>5}  {:>11}  {:>12.4}  {:>7.1}%  {:>5.1}  {}",
                c.circuit,
                c.units.len(),
                c.consistency.map_or("—".into(), |x| format!("{x:.3}")),
                c.sensitivity_ablation,
                100.0 * c.coverage,
                c.score,
                if c.vulnerable { "yes" } else { "" }
            );
        }
        o
    }
}

impl BoundReport {
    /// The formula, then |C_tail|, N, the complexity term, Div and the empirical gap.
    pub fn summary(&self) -> String {
        let (b, mut o) = (self, String::new());
        let _ = writeln!(o, "{}", b.formula);
        let _ = writeln!(
            o,
            "|C_tail| {}{} · N_tail {} · N_head {} · δ {}",
            b.c_tail,
            b.c_tail_validated.map_or(String::new(), |v| format!(" ({v} validated)")),
            b.n_tail,
            b.n_head,
            b.delta
        );
        let _ = writeln!(
            o,
            "complexity |C|·ln(1/δ)/√N_tail = {:.4} (√ form {:.4})",
            b.complexity_term, b.complexity_term_sqrt_form
        );
        let d = &b.divergence;
        let _ = writeln!(
            o,
            "Div over {} units: standardised mean distance {}, linear MMD² {}, 1 − CKA {}",
            d.units,
            fmt_opt(d.standardised_mean_distance, 4),
            fmt_opt(d.linear_mmd2, 4),
            fmt_opt(d.one_minus_cka, 4)
        );
        let _ = writeln!(
            o,
            "L_tail {:.4} − L_head {:.4} = {:+.4} (accuracy tail {:.1}%, head {:.1}%)",
            b.l_tail,
            b.l_head,
            b.l_gap,
            100.0 * b.accuracy_tail,
            100.0 * b.accuracy_head
        );
        o
    }
}

impl TrainOutput {
    /// Held-out head and tail accuracy and tail margin; the ensemble's weights and disagreement;
    /// the probes' effect sizes (organisms).
    pub fn summary(&self) -> String {
        let mut o = String::new();
        let h = &self.run.held_out;
        let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{:.1}%", 100.0 * v));
        let _ = writeln!(
            o,
            "{}: head accuracy {} (n {}), tail accuracy {} (n {}), tail margin {}",
            self.source,
            pct(h.head_accuracy),
            h.n_head,
            pct(h.tail_accuracy),
            h.n_tail,
            fmt_opt(h.tail_margin, 3)
        );
        if let Some(e) = &self.run.ensemble {
            let _ = writeln!(
                o,
                "ensemble of {}: weights {:?}; disagreement head {} tail {} (tail higher: {}), AUROC tail vs head {}",
                e.members,
                e.weights.iter().map(|w| (w * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
                fmt_opt(e.disagreement_head, 3),
                fmt_opt(e.disagreement_tail, 3),
                e.tail_higher.map_or("undefined".into(), |b| b.to_string()),
                fmt_opt(e.auroc_tail_vs_head, 3)
            );
        }
        if let Some(p) = &self.probe_effect_sizes {
            let s: Vec<String> = p.iter().map(|(k, d)| format!("{k} {}", fmt_opt(*d, 2))).collect();
            let _ = writeln!(o, "probe effect sizes (Cohen's d): {}", s.join(", "));
        }
        o
    }
}
