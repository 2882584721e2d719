//! How one run's reward reads the residual stream at its pooled token.
//!
//! The head computes `r = w · FinalNorm(h_L) + b_head`. Freezing the final norm's divisor `σ` at
//! its value in the run makes the reward linear in `h_L`:
//!
//! * RMSNorm: `r = (w ⊙ γ) · h_L / σ + b_head`
//! * Gemma-2: the same with `γ = 1 + w_norm`
//! * LayerNorm (GPT-2): `r = (w ⊙ γ) · (h_L − mean(h_L)) / σ + w · β + b_head`; centring is linear,
//!   so it moves onto the direction: `(u − mean(u)) · h_L / σ` with `u = w ⊙ γ`
//! * ArmoRM: `w` is the effective direction `Rᵀ(T g)` for the run's gating weights `g`
//!
//! Since `h_L` is the sum of the embedding and every sub-layer's output, each component `x`
//! contributes `direction · x`, and the contributions plus `bias` add up to the reward exactly.

use reward_lens_engine::{RewardHead, RewardModel};
use serde::Serialize;

use crate::trace::Trace;
use crate::Result;

#[derive(Debug, Clone, Serialize)]
pub struct ReadOut {
    /// The head's direction `w_r` (ArmoRM: `w_eff` for this run's gate).
    pub w: Vec<f64>,
    /// What a residual-stream vector is dotted with: `(w ⊙ γ)/σ`, centred for LayerNorm.
    pub direction: Vec<f64>,
    /// The constant term: head bias, plus `w · β` for LayerNorm.
    pub bias: f64,
    pub head_bias: f64,
    /// The frozen final-norm scale `1/σ`.
    pub scale: f64,
    #[serde(skip)]
    gamma: Vec<f64>,
    #[serde(skip)]
    beta: Option<Vec<f64>>,
    #[serde(skip)]
    eps: f64,
    #[serde(skip)]
    centred: bool,
}

fn vec64(t: &candle_core::Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1()?)
}

pub fn dot(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * *y as f64).sum()
}

impl ReadOut {
    pub fn new(model: &RewardModel, trace: &Trace) -> Result<Self> {
        let (w, head_bias) = match &model.head {
            RewardHead::Linear(_) => {
                let (w, b) = model.head.linear_direction()?.expect("linear head");
                (vec64(&w)?, b as f64)
            }
            RewardHead::Gated(g) => {
                let gating = trace.gating.as_ref().expect("gated head traces carry their gate");
                (vec64(&g.effective_direction(gating)?)?, 0.0)
            }
        };
        let norm = model.final_norm()?;
        let gamma = vec64(&norm.gamma)?;
        let beta = norm.beta.as_ref().map(vec64).transpose()?;
        let scale = 1.0 / trace.final_divisor as f64;
        let mut u: Vec<f64> = w.iter().zip(&gamma).map(|(a, g)| a * g).collect();
        if norm.centred {
            let m = u.iter().sum::<f64>() / u.len() as f64;
            u.iter_mut().for_each(|x| *x -= m);
        }
        let direction = u.iter().map(|x| x * scale).collect();
        let bias = head_bias + beta.as_ref().map_or(0.0, |b| w.iter().zip(b).map(|(a, c)| a * c).sum());
        Ok(Self { w, direction, bias, head_bias, scale, gamma, beta, eps: norm.eps, centred: norm.centred })
    }

    /// A component's exact contribution to the reward.
    pub fn contribution(&self, x: &[f32]) -> f64 {
        dot(&self.direction, x)
    }

    /// The reward read from `h` with the final-norm scale frozen (additive across layers).
    pub fn frozen(&self, h: &[f32]) -> f64 {
        self.contribution(h) + self.bias
    }

    /// The reward if the model stopped at `h`: the final norm recomputed on `h`, then the head.
    pub fn normed(&self, h: &[f32]) -> f64 {
        let d = h.len() as f64;
        let mean = if self.centred { h.iter().map(|&x| x as f64).sum::<f64>() / d } else { 0.0 };
        let var = h.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / d;
        let inv = 1.0 / (var + self.eps).sqrt();
        let mut r = self.head_bias;
        for i in 0..h.len() {
            let mut n = (h[i] as f64 - mean) * inv * self.gamma[i];
            if let Some(b) = &self.beta {
                n += b[i];
            }
            r += self.w[i] * n;
        }
        r
    }

    /// The peer's v1 projection `w · h + b`, no final norm.
    pub fn raw(&self, h: &[f32]) -> f64 {
        dot(&self.w, h) + self.head_bias
    }
}
