//! The ingredients of CART's long-tail generalisation bound (reference §2, [REVIEW]):
//!
//! ```text
//! L_tail(θ) ≤ L_head(θ) + C_p · |C_tail| · log(1/δ) / √N_tail + β · Div(C_tail, C_head)
//! ```
//!
//! `C_p` and `β` are not given by any source, so nothing is fitted: the report holds `|C_tail|`,
//! `N_tail`, `N_head`, the empirical `L_tail − L_head`, the complexity term
//! `|C_tail| · ln(1/δ) / √N_tail` exactly as quoted (and, beside it, the usual uniform-convergence
//! form `√(|C_tail| · ln(1/δ) / N_tail)`, since the reference flags the quoted form as unverified),
//! and `Div` in three forms.
//!
//! **Div(A_tail, A_head)** is computed on the read-outs `v_u` (see [`crate::discover`]) of the
//! circuit units — the union of the tail circuits' units and the head-specialised units
//! (reference §5.2) — over the head and the tail pairs:
//! * `standardised_mean_distance`: mean over units of `((μ_tail − μ_head) / sd_pooled)²`
//!   (units with zero pooled SD are left out);
//! * `linear_mmd2`: the unbiased linear-kernel MMD², `mean_{i≠j} t_i·t_j + mean_{i≠j} h_i·h_j −
//!   2 mean t_i·h_j` on the raw read-outs (it can be slightly negative when the two agree);
//! * `one_minus_cka` (three units or more): `1 − linear CKA` between the two sets' unit-by-input
//!   matrices, rows being the units (each centred over its set's inputs): CKA compares the units'
//!   Gram matrices, i.e. whether the circuit units co-vary the same way on tail and on head
//!   inputs. Units are the shared rows, so head and tail need not have equal sizes or any pairing
//!   of inputs. (With two units the centred rows are each other's negatives and CKA is always 1.)
//!
//! `L_tail` and `L_head` are the Bradley–Terry losses from [`reward_lens_train::evaluate`] on the
//! evaluation pairs of each side.

use reward_lens_engine::EncodedPair;
use reward_lens_engine::RewardModel;
use reward_lens_instruments::compare::linear_cka;
use reward_lens_instruments::sae::Sae;
use serde::{Deserialize, Serialize};

use crate::discover::{extract, AnalysisError, DiscoveryReport, Result, Unit};
use crate::headtail::{HeadTailSplit, SplitRule};
use reward_lens_train::{evaluate, TokenizedPair};

fn invalid(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::Invalid(msg.into())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundOptions {
    /// Confidence parameter δ of the bound.
    pub delta: f64,
    pub batch_size: usize,
}

impl Default for BoundOptions {
    fn default() -> Self {
        Self { delta: 0.05, batch_size: 16 }
    }
}

/// `Div(A_tail, A_head)` in three forms (None where undefined).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    pub units: usize,
    pub n_head: usize,
    pub n_tail: usize,
    pub standardised_mean_distance: Option<f64>,
    pub linear_mmd2: Option<f64>,
    pub one_minus_cka: Option<f64>,
}

/// The three divergences of `values` (`[item][unit]`) between the `tail` and `head` items.
pub fn divergence(values: &[Vec<f64>], head: &[usize], tail: &[usize]) -> Result<Divergence> {
    let n = values.len();
    if let Some(&i) = head.iter().chain(tail).find(|&&i| i >= n) {
        return Err(invalid(format!("divergence: item {i} is out of range ({n} items)")));
    }
    let u = values.first().map_or(0, Vec::len);
    let mut d = Divergence {
        units: u,
        n_head: head.len(),
        n_tail: tail.len(),
        standardised_mean_distance: None,
        linear_mmd2: None,
        one_minus_cka: None,
    };
    if u == 0 || head.len() < 2 || tail.len() < 2 {
        return Ok(d);
    }
    let col = |rows: &[usize], k: usize| -> Vec<f64> { rows.iter().map(|&i| values[i][k]).collect() };
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let ss = |xs: &[f64]| {
        let m = mean(xs);
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>()
    };
    let mut smd = Vec::new();
    for k in 0..u {
        let (t, h) = (col(tail, k), col(head, k));
        let sd = ((ss(&t) + ss(&h)) / (t.len() + h.len() - 2) as f64).sqrt();
        let scale = t.iter().chain(&h).fold(0.0f64, |a, x| a.max(x.abs()));
        if sd > 1e-9 * scale.max(f64::MIN_POSITIVE) {
            smd.push(((mean(&t) - mean(&h)) / sd).powi(2));
        }
    }
    d.standardised_mean_distance = (!smd.is_empty()).then(|| mean(&smd));
    // Unbiased linear MMD² from sums: Σ_{i≠j} x_i·x_j = ‖Σx‖² − Σ‖x_i‖².
    let sums = |rows: &[usize]| -> (Vec<f64>, f64) {
        let mut s = vec![0.0; u];
        let mut sq = 0.0;
        for &i in rows {
            for (a, v) in s.iter_mut().zip(&values[i]) {
                *a += v;
                sq += v * v;
            }
        }
        (s, sq)
    };
    let ((st, qt), (sh, qh)) = (sums(tail), sums(head));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (nt, nh) = (tail.len() as f64, head.len() as f64);
    d.linear_mmd2 = Some(
        (dot(&st, &st) - qt) / (nt * (nt - 1.0)) + (dot(&sh, &sh) - qh) / (nh * (nh - 1.0))
            - 2.0 * dot(&st, &sh) / (nt * nh),
    );
    // Two units' centred rows are each other's negatives: any two sets would give CKA 1.
    if u >= 3 {
        let matrix = |rows: &[usize]| -> Vec<Vec<f32>> {
            (0..u)
                .map(|k| {
                    let c = col(rows, k);
                    let m = mean(&c);
                    c.iter().map(|x| (x - m) as f32).collect()
                })
                .collect()
        };
        d.one_minus_cka = linear_cka(&matrix(tail), &matrix(head))?.map(|c| 1.0 - c);
    }
    Ok(d)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundReport {
    pub formula: String,
    pub train_rule: SplitRule,
    pub eval_rule: SplitRule,
    /// Tail circuits found (`|C_tail|`).
    pub c_tail: usize,
    /// Of them, validated by causal ablation (None when validation did not run).
    pub c_tail_validated: Option<usize>,
    pub n_tail: usize,
    pub n_head: usize,
    pub delta: f64,
    /// `|C_tail| · ln(1/δ) / √N_tail`, as the reference quotes it.
    pub complexity_term: f64,
    /// The same with the validated count.
    pub complexity_term_validated: Option<f64>,
    /// `√(|C_tail| · ln(1/δ) / N_tail)`, the standard uniform-convergence form.
    pub complexity_term_sqrt_form: f64,
    /// Units entering `Div` (tail circuits ∪ head-specialised units).
    pub div_units: Vec<String>,
    pub divergence: Divergence,
    pub l_tail: f64,
    pub l_head: f64,
    /// `L_tail − L_head`.
    pub l_gap: f64,
    pub accuracy_tail: f64,
    pub accuracy_head: f64,
}

/// The bound's ingredients for `model` and its discovered circuits. `train` (with its split)
/// gives `N_tail`, `N_head` and the activations for `Div`; `eval` (with its split) gives the
/// empirical losses — pass the training pairs again when there is no held-out set.
#[allow(clippy::too_many_arguments)]
pub fn bound_report(
    model: &RewardModel,
    report: &DiscoveryReport,
    train: &[EncodedPair],
    train_split: &HeadTailSplit,
    eval: &[EncodedPair],
    eval_split: &HeadTailSplit,
    opts: &BoundOptions,
    sae: Option<&Sae>,
) -> Result<BoundReport> {
    train_split.validate(train.len())?;
    eval_split.validate(eval.len())?;
    if !(opts.delta > 0.0 && opts.delta < 1.0) {
        return Err(invalid(format!("δ must lie in (0, 1), got {}", opts.delta)));
    }
    let c_tail = report.circuits.len();
    let c_tail_validated = report
        .circuits
        .iter()
        .all(|c| c.causal.is_some())
        .then(|| report.circuits.iter().filter(|c| c.causal.as_ref().is_some_and(|v| v.validated)).count());
    let log = (1.0 / opts.delta).ln();
    let n_tail = train_split.n_tail;
    let complexity = |c: usize| c as f64 * log / (n_tail as f64).sqrt();

    let mut units: Vec<Unit> = report
        .circuits
        .iter()
        .flat_map(|c| c.units.iter().map(|u| u.unit.clone()))
        .chain(report.head_units.iter().map(|u| u.unit.clone()))
        .collect();
    units.sort();
    units.dedup();
    let divergence = if units.is_empty() {
        Divergence {
            units: 0,
            n_head: train_split.n_head,
            n_tail,
            standardised_mean_distance: None,
            linear_mmd2: None,
            one_minus_cka: None,
        }
    } else {
        let acts = extract(model, train, &units, report.options.units.position, sae, opts.batch_size)?;
        divergence(&acts.values(report.options.units.readout), &train_split.head, &train_split.tail)?
    };

    let tokenized = |idx: &[usize], name: &str| -> Vec<TokenizedPair> {
        idx.iter()
            .map(|&i| TokenizedPair {
                chosen: eval[i].chosen.clone(),
                rejected: eval[i].rejected.clone(),
                subset: name.into(),
            })
            .collect()
    };
    let bs = opts.batch_size.max(1);
    let tail_stats = evaluate(model, &tokenized(&eval_split.tail, "tail"), bs)?;
    let head_stats = evaluate(model, &tokenized(&eval_split.head, "head"), bs)?;
    Ok(BoundReport {
        formula: "L_tail ≤ L_head + C_p·|C_tail|·log(1/δ)/√N_tail + β·Div(C_tail, C_head)  (C_p, β not given)".into(),
        train_rule: train_split.rule.clone(),
        eval_rule: eval_split.rule.clone(),
        c_tail,
        c_tail_validated,
        n_tail,
        n_head: train_split.n_head,
        delta: opts.delta,
        complexity_term: complexity(c_tail),
        complexity_term_validated: c_tail_validated.map(complexity),
        complexity_term_sqrt_form: (c_tail as f64 * log / n_tail as f64).sqrt(),
        div_units: units.iter().map(Unit::name).collect(),
        divergence,
        l_tail: tail_stats.mean_loss,
        l_head: head_stats.mean_loss,
        l_gap: tail_stats.mean_loss - head_stats.mean_loss,
        accuracy_tail: tail_stats.accuracy,
        accuracy_head: head_stats.accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergences_on_known_data() {
        // Unit 0 shifts by 2 between head and tail (sd 1 within), units 1 and 2 do not move.
        let row = |i: usize, shift: f64| {
            vec![shift + [-1.0, 1.0][i % 2], [0.0, 1.0, 2.0][i % 3], [0.0, 3.0][i % 2] + [0.0, 1.0, 2.0][i % 3]]
        };
        let head: Vec<Vec<f64>> = (0..6).map(|i| row(i, 0.0)).collect();
        let tail: Vec<Vec<f64>> = (0..6).map(|i| row(i, 2.0)).collect();
        let values: Vec<Vec<f64>> = head.iter().chain(&tail).cloned().collect();
        let (h, t): (Vec<usize>, Vec<usize>) = ((0..6).collect(), (6..12).collect());
        let d = divergence(&values, &h, &t).unwrap();
        // Pooled sd of unit 0: within-group variance 1.2 (n − 1 = 5 each) → d = 2/√1.2; units 1, 2: 0.
        let want = (4.0 / 1.2) / 3.0;
        assert!((d.standardised_mean_distance.unwrap() - want).abs() < 1e-12, "{d:?}");
        // Unbiased MMD² ≈ ‖Δμ‖² = 4, minus the within-set bias correction (units 0 and 1).
        let two: Vec<Vec<f64>> = values.iter().map(|v| v[..2].to_vec()).collect();
        let mmd = divergence(&two, &h, &t).unwrap().linear_mmd2.unwrap();
        assert!(mmd > 3.0 && mmd < 5.0, "{mmd}");
        // Same covariance structure on both sides → CKA 1.
        assert!(d.one_minus_cka.unwrap().abs() < 1e-9, "{d:?}");
        // No difference at all → everything ~0.
        let same = divergence(&values, &h, &h.clone()).unwrap();
        assert!(same.standardised_mean_distance.unwrap() < 1e-12);
        assert!(divergence(&values, &h, &[99]).is_err());
        // Two units: no CKA (it would be 1 whatever the sets).
        assert_eq!(divergence(&two, &h, &t).unwrap().one_minus_cka, None);
    }
}
