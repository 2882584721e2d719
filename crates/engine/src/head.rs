//! Reward heads. A linear head is `r = w_r · n + b` on the final-norm output `n` at the pooled
//! token; ArmoRM's head mixes per-objective rewards with a gate read at the prompt/response
//! boundary. Both are computed in f32 whatever the compute dtype.

use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::network::Linear;

pub struct LinearHead {
    /// `[num_labels, d]`; row 0 is the reward direction `w_r`.
    pub weight: Tensor,
    /// `[num_labels]`, absent for transformers' sequence-classification heads.
    pub bias: Option<Tensor>,
}

/// ArmoRM's `LlamaForRewardModelWithGating` head.
pub struct GatedHead {
    /// `regression_layer.weight`, `[K, d]`: one reward row per objective.
    pub regression: Tensor,
    /// `reward_transform_matrix`, `[K, K]`: `score = Σ g ⊙ (rewards @ T)`.
    pub transform: Tensor,
    pub(crate) gating: Vec<Linear>,
    pub logit_scale: f32,
    pub temperature: f64,
    /// Token ids whose last occurrence is the gating position.
    pub token_pattern: Vec<u32>,
    pub objective_names: Vec<String>,
}

pub enum RewardHead {
    Linear(LinearHead),
    Gated(GatedHead),
}

/// Per-objective outputs of a gated head, one row per batch entry.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectiveOutput {
    pub rewards: Vec<Vec<f32>>,
    pub gating: Vec<Vec<f32>>,
    pub gating_index: Vec<usize>,
}

pub(crate) struct HeadOutput {
    pub logits: Tensor,
    pub objectives: Option<ObjectiveOutput>,
}

impl RewardHead {
    pub fn kind(&self) -> &'static str {
        match self {
            RewardHead::Linear(_) => "linear",
            RewardHead::Gated(_) => "armorm-gated",
        }
    }

    /// `(w_r, b)` for a linear head: the reward direction and bias in f32.
    pub fn linear_direction(&self) -> Result<Option<(Tensor, f32)>> {
        match self {
            RewardHead::Linear(h) => {
                let w = h.weight.get(0)?.to_dtype(DType::F32)?;
                let b = match &h.bias {
                    Some(b) => b.to_dtype(DType::F32)?.get(0)?.to_scalar::<f32>()?,
                    None => 0.0,
                };
                Ok(Some((w, b)))
            }
            RewardHead::Gated(_) => Ok(None),
        }
    }

    /// Scores from the final-norm output at the pooled rows `pooled` `[B, d]` (f32); `gate_in`
    /// gives the gated head its boundary rows.
    pub(crate) fn forward(&self, pooled: &Tensor, gate_in: Option<(&Tensor, Vec<usize>)>) -> Result<HeadOutput> {
        match self {
            RewardHead::Linear(h) => {
                let w = h.weight.to_dtype(DType::F32)?;
                let mut logits = pooled.matmul(&w.t()?)?;
                if let Some(b) = &h.bias {
                    logits = logits.broadcast_add(&b.to_dtype(DType::F32)?)?;
                }
                Ok(HeadOutput { logits, objectives: None })
            }
            RewardHead::Gated(g) => {
                let (boundary, gating_index) =
                    gate_in.ok_or_else(|| EngineError::Invalid("gated head needs the gating rows".into()))?;
                let rewards = pooled.matmul(&g.regression.to_dtype(DType::F32)?.t()?)?;
                let gating = g.gate(boundary)?;
                let adjusted = rewards.matmul(&g.transform.to_dtype(DType::F32)?)?;
                let logits = (&gating * adjusted)?.sum_keepdim(D::Minus1)?;
                let objectives =
                    ObjectiveOutput { rewards: rewards.to_vec2()?, gating: gating.detach().to_vec2()?, gating_index };
                Ok(HeadOutput { logits, objectives: Some(objectives) })
            }
        }
    }
}

impl GatedHead {
    /// `softmax(MLP(h_g) / temperature) · logit_scale`, `[B, K]`.
    pub fn gate(&self, boundary: &Tensor) -> Result<Tensor> {
        let last = self.gating.len() - 1;
        let mut x = boundary.clone();
        for (i, layer) in self.gating.iter().enumerate() {
            x = layer.forward(&x)?;
            if i < last {
                x = x.relu()?;
            }
        }
        let w = candle_nn::ops::softmax(&(x / self.temperature)?, D::Minus1)?;
        Ok((w * self.logit_scale as f64)?)
    }

    /// The direction the final-norm output is read along for a given gate:
    /// `w_eff = Rᵀ (T g)`, so that `score = n · w_eff`.
    pub fn effective_direction(&self, gating: &[f32]) -> Result<Tensor> {
        let g = Tensor::from_slice(gating, (gating.len(), 1), self.regression.device())?;
        let tg = self.transform.to_dtype(DType::F32)?.matmul(&g)?;
        Ok(self.regression.to_dtype(DType::F32)?.t()?.matmul(&tg)?.squeeze(1)?)
    }

    /// Start of the last occurrence of the gating pattern in `ids`.
    pub fn gating_position(&self, ids: &[u32]) -> Option<usize> {
        let n = self.token_pattern.len();
        if n == 0 || ids.len() < n {
            return None;
        }
        (0..=ids.len() - n).rev().find(|&s| ids[s..s + n] == self.token_pattern[..])
    }
}
