//! Divergence-aware patching: is the activation a patch puts in something the component ever
//! sees? Each component's distribution at the pooled token is fitted on reference texts, and the
//! patched-in activation gets a Mahalanobis distance from it.
//!
//! The covariance is the **Ledoit–Wolf** shrinkage of the sample covariance towards a scaled
//! identity, `Σ* = δ·m·I + (1 − δ)·S`. With fewer reference texts than dimensions (n < d, the usual
//! case) the sample covariance is singular; reward-lens 1.0 adds 1e-4·I and takes a pseudo-inverse,
//! so every off-span direction gets a distance of about ‖r‖/0.01 and all components look alike.
//! Shrinkage keeps distances finite and informative. Everything is computed from the n × n Gram
//! matrix (Woodbury identity), so d × d matrices are never formed.
//!
//! Classes (reward-lens 1.0's rule): not divergent → `in_distribution`; divergent and
//! |effect| > 0.1·|Δ| → `pernicious`; divergent otherwise → `harmless`. Divergent means the distance
//! exceeds the threshold: by default the 95th percentile of the reference texts' leave-one-out distances
//! (v1-compat: 2.0, which in d dimensions almost everything exceeds). Reliability =
//! 1 − pernicious / components.

use candle_core::DType;
use serde::Serialize;

use reward_lens_engine::{EncodedPair, Hooks, PaddingSide, RewardModel};

use crate::patching::{PatchMode, PatchingReport};
use crate::{InstrumentError, Result};

/// One component's fitted distribution (all f64).
#[derive(Debug, Clone)]
pub struct Fitted {
    pub mean: Vec<f64>,
    /// Centred reference activations, n × d.
    centred: Vec<Vec<f64>>,
    /// Shrinkage intensity δ ∈ [0, 1] and target scale m.
    pub shrinkage: f64,
    pub scale: f64,
    /// Cholesky factor of (c·I + G), for the Woodbury solve.
    chol: Vec<Vec<f64>>,
    c: f64,
    /// The reference texts' own distances, sorted.
    pub reference_distances: Vec<f64>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn cholesky(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let v = a[i][i] - s;
                if v <= 0.0 {
                    return None;
                }
                l[i][j] = v.sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    Some(l)
}

fn chol_solve(l: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = l.len();
    let mut y = vec![0.0; n];
    for i in 0..n {
        y[i] = (b[i] - (0..i).map(|k| l[i][k] * y[k]).sum::<f64>()) / l[i][i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (y[i] - (i + 1..n).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    x
}

impl Fitted {
    /// Fits mean and Ledoit–Wolf-shrunk covariance to `xs` (n ≥ 2 rows of length d). The
    /// reference distances are leave-one-out (each text scored by a fit without it), so they are
    /// not biased low the way in-sample distances are; with two texts, in-sample.
    pub fn fit(xs: &[Vec<f64>]) -> Result<Self> {
        let mut f = Self::fit_core(xs)?;
        let mut own: Vec<f64> = if xs.len() >= 3 {
            (0..xs.len())
                .map(|i| {
                    let rest: Vec<Vec<f64>> =
                        xs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, x)| x.clone()).collect();
                    Ok(Self::fit_core(&rest)?.distance(&xs[i]))
                })
                .collect::<Result<_>>()?
        } else {
            xs.iter().map(|x| f.distance(x)).collect()
        };
        own.sort_by(|a, b| a.total_cmp(b));
        f.reference_distances = own;
        Ok(f)
    }

    fn fit_core(xs: &[Vec<f64>]) -> Result<Self> {
        let n = xs.len();
        if n < 2 {
            return Err(InstrumentError::Invalid("divergence reference needs at least two texts".into()));
        }
        let d = xs[0].len();
        let mean: Vec<f64> = (0..d).map(|j| xs.iter().map(|x| x[j]).sum::<f64>() / n as f64).collect();
        let centred: Vec<Vec<f64>> = xs.iter().map(|x| x.iter().zip(&mean).map(|(a, m)| a - m).collect()).collect();
        // Gram matrix G = X Xᵀ; S = XᵀX / n shares its non-zero spectrum with G / n.
        let g: Vec<Vec<f64>> = centred.iter().map(|a| centred.iter().map(|b| dot(a, b)).collect()).collect();
        let nf = n as f64;
        let m = (0..n).map(|k| g[k][k]).sum::<f64>() / nf / d as f64; // tr(S)/d
        let s_fro2 = g.iter().flatten().map(|v| v * v).sum::<f64>() / (nf * nf); // ‖S‖²_F
        let d2 = (s_fro2 - 2.0 * m * m * d as f64 + m * m * d as f64) / d as f64; // ‖S − mI‖²/d
        let b_bar2 = (0..n)
            .map(|k| {
                // ‖x xᵀ − S‖²_F = ‖x‖⁴ − 2 xᵀSx + ‖S‖²_F, with xᵀSx = Σ_j G_jk² / n.
                let xsx = (0..n).map(|j| g[j][k] * g[j][k]).sum::<f64>() / nf;
                g[k][k] * g[k][k] - 2.0 * xsx + s_fro2
            })
            .sum::<f64>()
            / (nf * nf)
            / d as f64;
        let shrinkage = if d2 <= 0.0 { 1.0 } else { (b_bar2.min(d2) / d2).clamp(0.0, 1.0) };
        let a = (shrinkage * m).max(1e-12);
        // Σ* = a·I + ((1 − δ)/n)·XᵀX ⇒ Σ*⁻¹ = (1/a)(I − Xᵀ (c·I + G)⁻¹ X), c = a·n/(1 − δ).
        let c = if shrinkage >= 1.0 { f64::INFINITY } else { a * nf / (1.0 - shrinkage) };
        let chol = if c.is_finite() {
            let mut cg = g.clone();
            for (k, row) in cg.iter_mut().enumerate() {
                row[k] += c;
            }
            cholesky(&cg)
                .ok_or_else(|| InstrumentError::Invalid("divergence: covariance not positive definite".into()))?
        } else {
            Vec::new()
        };
        Ok(Self { mean, centred, shrinkage, scale: m, chol, c, reference_distances: Vec::new() })
    }

    /// Mahalanobis distance of `x` under the shrunk covariance.
    pub fn distance(&self, x: &[f64]) -> f64 {
        let r: Vec<f64> = x.iter().zip(&self.mean).map(|(a, m)| a - m).collect();
        let a = (self.shrinkage * self.scale).max(1e-12);
        let mut q = dot(&r, &r);
        if self.c.is_finite() {
            let xr: Vec<f64> = self.centred.iter().map(|row| dot(row, &r)).collect();
            let sol = chol_solve(&self.chol, &xr);
            q -= dot(&xr, &sol);
        }
        (q / a).max(0.0).sqrt()
    }

    /// The distance below which a `q` share of the reference texts fall.
    pub fn quantile(&self, q: f64) -> f64 {
        let v = &self.reference_distances;
        v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceClass {
    InDistribution,
    Harmless,
    Pernicious,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentDivergence {
    pub name: String,
    pub distance: f64,
    pub threshold: f64,
    /// Share of reference texts at or below this distance.
    pub reference_percentile: f64,
    pub class: DivergenceClass,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairDivergence {
    pub pair: usize,
    pub components: Vec<ComponentDivergence>,
    pub reliability: f64,
    pub pernicious: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DivergenceReport {
    pub n_reference: usize,
    /// Ledoit–Wolf shrinkage per component.
    pub shrinkage: Vec<f64>,
    pub pairs: Vec<PairDivergence>,
}

/// A fitted reference for every patched component (sublayer outputs at the pooled token).
pub struct Reference {
    pub names: Vec<String>,
    pub fitted: Vec<Fitted>,
}

fn pooled_rows(model: &RewardModel, ids: &[u32], sites: &[String]) -> Result<Vec<Vec<f64>>> {
    let batch = model.batch(&[ids.to_vec()], PaddingSide::Right)?;
    let fwd = model.forward(&batch, &Hooks::cache(sites))?;
    let p = fwd.output.pooled_index[0];
    sites
        .iter()
        .map(|s| Ok(fwd.cache.require(s)?.get(0)?.get(p)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?))
        .collect()
}

fn site_name(name: &str) -> Option<String> {
    let (kind, l) = name.rsplit_once('.').or_else(|| name.split_once("_L"))?;
    let l: usize = l.parse().ok()?;
    Some(match kind {
        "attn" => format!("blocks.{l}.hook_attn_out"),
        "mlp" => format!("blocks.{l}.hook_mlp_out"),
        _ => return None,
    })
}

impl Reference {
    /// Fits every sublayer component of `report` on the reference texts.
    pub fn fit(model: &RewardModel, names: &[String], texts: &[Vec<u32>]) -> Result<Self> {
        let sites: Vec<String> = names
            .iter()
            .map(|n| {
                site_name(n)
                    .ok_or_else(|| InstrumentError::Invalid(format!("divergence: `{n}` is not a sublayer component")))
            })
            .collect::<Result<_>>()?;
        let rows = texts.iter().map(|t| pooled_rows(model, t, &sites)).collect::<Result<Vec<_>>>()?;
        let fitted = (0..sites.len())
            .map(|c| Fitted::fit(&rows.iter().map(|r| r[c].clone()).collect::<Vec<_>>()))
            .collect::<Result<_>>()?;
        Ok(Self { names: names.to_vec(), fitted })
    }
}

/// Scores what each patch of `report` put in against the reference. `inputs` are the pairs'
/// (chosen, rejected) ids in report order.
pub fn check(
    model: &RewardModel,
    report: &PatchingReport,
    inputs: &[EncodedPair],
    reference: &Reference,
    v1_compat: bool,
) -> Result<DivergenceReport> {
    let report = check_unchecked(model, report, inputs, reference, v1_compat)?;
    crate::finite::ensure_finite("divergence", &report)?;
    Ok(report)
}

fn check_unchecked(
    model: &RewardModel,
    report: &PatchingReport,
    inputs: &[EncodedPair],
    reference: &Reference,
    v1_compat: bool,
) -> Result<DivergenceReport> {
    let names: Vec<String> = report.components.iter().map(|c| c.name.clone()).collect();
    let sites: Vec<String> = names.iter().map(|n| site_name(n).expect("fitted names are sublayers")).collect();
    let mut pairs = Vec::with_capacity(report.pairs.len());
    for (p, EncodedPair { chosen: c, rejected: r, .. }) in report.pairs.iter().zip(inputs) {
        // The patched-in activation at the pooled token: the source run's (v1: chosen for zero).
        let from = match (report.mode, v1_compat) {
            (PatchMode::Noising, _) => r,
            _ => c,
        };
        let acts = pooled_rows(model, from, &sites)?;
        let comps: Vec<ComponentDivergence> = (0..names.len())
            .map(|k| {
                let f = &reference.fitted[k];
                let x: Vec<f64> = match (report.mode, v1_compat) {
                    (PatchMode::Zero, false) => vec![0.0; acts[k].len()],
                    _ => acts[k].clone(),
                };
                let dist = f.distance(&x);
                let threshold = if v1_compat { 2.0 } else { f.quantile(0.95) };
                let divergent = dist > threshold;
                let class = if !divergent {
                    DivergenceClass::InDistribution
                } else if p.effects[k].abs() > 0.1 * p.original_margin.abs() {
                    DivergenceClass::Pernicious
                } else {
                    DivergenceClass::Harmless
                };
                let below = f.reference_distances.iter().filter(|&&v| v <= dist).count();
                ComponentDivergence {
                    name: names[k].clone(),
                    distance: dist,
                    threshold,
                    reference_percentile: below as f64 / f.reference_distances.len() as f64,
                    class,
                }
            })
            .collect();
        let pernicious: Vec<String> =
            comps.iter().filter(|c| c.class == DivergenceClass::Pernicious).map(|c| c.name.clone()).collect();
        pairs.push(PairDivergence {
            pair: p.pair,
            reliability: 1.0 - pernicious.len() as f64 / comps.len().max(1) as f64,
            pernicious,
            components: comps,
        });
    }
    Ok(DivergenceReport {
        n_reference: reference.fitted.first().map_or(0, |f| f.reference_distances.len()),
        shrinkage: reference.fitted.iter().map(|f| f.shrinkage).collect(),
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reward_lens_engine::synth::Rng;

    /// Plain Gaussian elimination for a small dense check.
    fn inverse(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let n = a.len();
        let mut m: Vec<Vec<f64>> = a
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                r.extend((0..n).map(|j| f64::from(u8::from(i == j))));
                r
            })
            .collect();
        for i in 0..n {
            let p = (i..n).max_by(|&x, &y| m[x][i].abs().total_cmp(&m[y][i].abs())).unwrap();
            m.swap(i, p);
            let piv = m[i][i];
            m[i].iter_mut().for_each(|v| *v /= piv);
            for k in 0..n {
                if k != i {
                    let f = m[k][i];
                    let row = m[i].clone();
                    m[k].iter_mut().zip(&row).for_each(|(v, r)| *v -= f * r);
                }
            }
        }
        m.into_iter().map(|r| r[n..].to_vec()).collect()
    }

    #[test]
    fn woodbury_distance_equals_the_dense_formula() {
        let mut rng = Rng::new(3);
        let (n, d) = (6, 10);
        let xs: Vec<Vec<f64>> =
            (0..n).map(|_| (0..d).map(|j| rng.normal() * (1.0 + j as f64 * 0.3)).collect()).collect();
        let f = Fitted::fit(&xs).unwrap();
        assert!(f.shrinkage > 0.0 && f.shrinkage <= 1.0);
        // Dense Σ* = δ m I + (1 − δ) S.
        let mean = &f.mean;
        let mut s = vec![vec![0.0; d]; d];
        for x in &xs {
            for i in 0..d {
                for j in 0..d {
                    s[i][j] += (x[i] - mean[i]) * (x[j] - mean[j]) / n as f64;
                }
            }
        }
        let sigma: Vec<Vec<f64>> = (0..d)
            .map(|i| {
                (0..d)
                    .map(|j| (1.0 - f.shrinkage) * s[i][j] + if i == j { f.shrinkage * f.scale } else { 0.0 })
                    .collect()
            })
            .collect();
        let inv = inverse(&sigma);
        let y: Vec<f64> = (0..d).map(|_| rng.normal() * 2.0).collect();
        let r: Vec<f64> = y.iter().zip(mean).map(|(a, b)| a - b).collect();
        let dense = (0..d).map(|i| (0..d).map(|j| r[i] * inv[i][j] * r[j]).sum::<f64>()).sum::<f64>().sqrt();
        assert!((f.distance(&y) - dense).abs() < 1e-8 * dense.max(1.0), "{} vs {dense}", f.distance(&y));
    }

    #[test]
    fn shrinkage_keeps_distances_informative_when_n_is_below_d() {
        let mut rng = Rng::new(9);
        let d = 64;
        let xs: Vec<Vec<f64>> = (0..10).map(|_| (0..d).map(|_| rng.normal()).collect()).collect();
        let f = Fitted::fit(&xs).unwrap();
        let near: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        let far: Vec<f64> = near.iter().map(|x| x * 5.0).collect();
        assert!(f.distance(&far) > 4.0 * f.distance(&near));
        assert!(f.distance(&f.mean) < 1e-9);
        assert!(f.reference_distances.iter().all(|x| x.is_finite()));
    }
}
