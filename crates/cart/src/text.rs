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
                    "  Δaccuracy tail {} · beats {} of {} random sets (permutation p {}) · {}",
                    fmt_est(&v.tail.delta_accuracy),
                    v.loss_percentile.map_or("—".into(), |p| format!("{:.0}%", 100.0 * p)),
                    v.random_sets.len(),
                    v.loss_p_value.map_or("—".into(), |p| format!("{p:.3}")),
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
        if let Some(c) = &r.oracle {
            let f = |x: Option<f64>| x.map_or("undefined".to_string(), |v| format!("{v:.2}"));
            let _ = writeln!(
                o,
                "against the ablation oracle ({}): precision {} recall {} (validated circuits: {} / {}); AtP vs exact over every unit ρ {}",
                if c.oracle_found {
                    format!("{} units", c.oracle_units.len())
                } else {
                    "no sparse circuit found".to_string()
                },
                f(c.precision),
                f(c.recall),
                f(c.validated_precision),
                f(c.validated_recall),
                f(c.atp_spearman_all_units)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bound::Divergence;
    use crate::interventions::{CartRun, HeadTailMetrics};
    use crate::vulnerability::{CircuitVulnerability, VulnerabilityOptions};

    fn field_rule() -> SplitRule {
        SplitRule::Field { field: "subset".into(), tail_values: vec!["safety".into(), "sycophancy".into()] }
    }

    #[test]
    fn discovery_summary() {
        // The golden `cart discover` report of the fixture Llama.
        let json = include_str!("../../../tests/golden/cart-discover-llama.json");
        let r: DiscoveryReport = serde_json::from_str(json).unwrap();
        let s = r.summary();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "20 pairs: N_head 15, N_tail 5 (tail: `subset` ∈ {safety, sycophancy})");
        assert!(lines[1].starts_with("184 candidate units (") && lines[1].contains("τ = 2.484 (maxT over"), "{s}");
        assert!(lines[2].starts_with("clean accuracy: head "), "{s}");
        assert_eq!(s.lines().filter(|l| l.starts_with("circuit ")).count(), r.circuits.len());
        assert!(s.ends_with('\n'));
    }

    #[test]
    fn vulnerability_summary() {
        let row = CircuitVulnerability {
            circuit: 0,
            units: vec!["mlp.2.5".into(), "head.1.0".into()],
            consistency: Some(0.9),
            within_variance: 0.1,
            between_variance: 0.9,
            mean_abs_contribution_change: None,
            activation_cosine: None,
            sensitivity_ablation: 0.25,
            mean_margin_contribution: 0.1,
            sensitivity_gradient: 0.0,
            sensitivity_perturbation: None,
            coverage: 0.4,
            coverage_threshold: 1.0,
            covered: 2,
            n_train_tail: 5,
            score: 3.0,
            vulnerable: true,
        };
        let v = VulnerabilityReport {
            formula: "V_C = …".into(),
            train_rule: field_rule(),
            options: VulnerabilityOptions::default(),
            n_tail: 5,
            n_perturbed: 12,
            circuits: vec![row],
        };
        let s = v.summary();
        assert_eq!(
            s,
            "5 tail pairs, 12 perturbed copies · V_C = …\n\
             circuit  units  consistency   sensitivity  coverage    V_C  vulnerable\n      \
             0      2        0.900        0.2500     40.0%    3.0  yes\n"
        );
    }

    #[test]
    fn bound_summary() {
        let b = BoundReport {
            formula: "L_tail ≤ …".into(),
            train_rule: field_rule(),
            eval_rule: field_rule(),
            c_tail: 2,
            c_tail_validated: Some(1),
            n_tail: 5,
            n_head: 15,
            delta: 0.05,
            complexity_term: 2.6797,
            complexity_term_validated: None,
            complexity_term_sqrt_form: 1.5,
            div_units: vec![],
            divergence: Divergence {
                units: 3,
                n_head: 15,
                n_tail: 5,
                standardised_mean_distance: Some(0.5),
                linear_mmd2: None,
                one_minus_cka: Some(0.25),
            },
            l_tail: 0.7,
            l_head: 0.5,
            l_gap: 0.2,
            accuracy_tail: 0.6,
            accuracy_head: 0.8,
        };
        let s = b.summary();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "L_tail ≤ …");
        assert_eq!(lines[1], "|C_tail| 2 (1 validated) · N_tail 5 · N_head 15 · δ 0.05");
        assert_eq!(lines[2], "complexity |C|·ln(1/δ)/√N_tail = 2.6797 (√ form 1.5000)");
        assert_eq!(
            lines[3],
            "Div over 3 units: standardised mean distance +0.5000, linear MMD² undefined, 1 − CKA +0.2500"
        );
        assert_eq!(lines[4], "L_tail 0.7000 − L_head 0.5000 = +0.2000 (accuracy tail 60.0%, head 80.0%)");
    }

    #[test]
    fn train_summary() {
        let held_out = HeadTailMetrics::of(&[1.0, -1.0, 2.0, 0.5], &[false, false, true, true]);
        let run = CartRun {
            options: Default::default(),
            n_train: 4,
            n_train_tail: 2,
            n_held_out: 4,
            steps: 1,
            targets: None,
            augmentation: None,
            members: vec![],
            ensemble: None,
            held_out,
        };
        let probes = [("caution".to_string(), Some(1.234)), ("length".to_string(), None)].into_iter().collect();
        let out = TrainOutput {
            source: "organism tail".into(),
            head_accuracy: None,
            tail_accuracy: None,
            tail_margin: None,
            head_margin: None,
            probe_effect_sizes: Some(probes),
            models: vec![],
            run,
        };
        let s = out.summary();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2, "{s}");
        assert!(lines[0].starts_with("organism tail: head accuracy 50.0% (n 2), tail accuracy 100.0% (n 2)"), "{s}");
        assert_eq!(lines[1], "probe effect sizes (Cohen's d): caution +1.23, length undefined");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_opt(None, 3), "undefined");
        assert_eq!(fmt_opt(Some(0.5), 2), "+0.50");
        let e = Estimate { mean: Some(0.1), ci_low: Some(-0.2), ci_high: Some(0.3) };
        assert_eq!(fmt_est(&e), "+0.1000 [-0.2000, +0.3000]");
        assert_eq!(describe_rule(&SplitRule::Random { n_tail: 4, seed: 7 }), "random (4 tail, seed 7)");
    }
}
