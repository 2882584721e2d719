//! One forward pass per sequence (batched), reduced to the plain vectors the observational
//! instruments read at the pooled token.

use reward_lens_engine::{batches_by_length, Hooks, PaddingSide, RewardHead, RewardModel, Site, Tensor};

use crate::{InstrumentError, Result};

/// What a sequence's forward pass leaves at its pooled token (f32 vectors of length d).
#[derive(Debug, Clone)]
pub struct Trace {
    pub score: f32,
    pub pooled: usize,
    /// Lens points: the embedding output (block 0's input), then every block's output.
    pub resid: Vec<Vec<f32>>,
    pub attn_out: Vec<Vec<f32>>,
    pub mlp_out: Vec<Vec<f32>>,
    /// Token embedding as it enters the residual stream.
    pub embed_tok: Vec<f32>,
    /// Learned position embedding (GPT-2).
    pub embed_pos: Option<Vec<f32>>,
    /// Per layer, the heads' value mixes `[heads · head_dim]` (when heads were requested).
    pub z: Option<Vec<Vec<f32>>>,
    /// Per layer, the MLP's hidden activation `[d_mlp]` (when neurons were requested).
    pub mlp_post: Option<Vec<Vec<f32>>>,
    /// The final norm's divisor at the pooled token.
    pub final_divisor: f32,
    /// ArmoRM's gating weights for this input.
    pub gating: Option<Vec<f32>>,
}

/// What to capture beyond the residual stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceOptions {
    pub heads: bool,
    pub neurons: bool,
}

/// The engine's "non-finite reward in batch row r" as the sequence it came from.
pub(crate) fn at_sequence(e: reward_lens_engine::EngineError, batch: &[usize]) -> InstrumentError {
    match e {
        reward_lens_engine::EngineError::NonFiniteReward { row, value, dtype, .. } => InstrumentError::NonFinite {
            instrument: "forward pass".into(),
            path: format!("sequences[{}].reward", batch.get(row).copied().unwrap_or(row)),
            value: value as f64,
            pair: None,
            dtype: Some(dtype),
        },
        e => e.into(),
    }
}

/// For instruments that trace each pair as (chosen, rejected): a non-finite value in sequence
/// `i` is pair `i / 2`'s, on the side `i % 2` says.
pub(crate) fn sequences_are_pairs(e: InstrumentError) -> InstrumentError {
    match e {
        InstrumentError::NonFinite { instrument, path, value, pair: None, dtype } if path.starts_with("sequences[") => {
            let i: Option<usize> = path["sequences[".len()..].split(']').next().and_then(|x| x.parse().ok());
            match i {
                Some(i) => {
                    let side = if i % 2 == 0 { "chosen" } else { "rejected" };
                    let rest = path.split_once("].").map_or("", |r| r.1);
                    InstrumentError::NonFinite {
                        instrument,
                        path: format!("pairs[{}].{side}.{rest}", i / 2),
                        value,
                        pair: Some(i / 2),
                        dtype,
                    }
                }
                None => InstrumentError::NonFinite { instrument, path, value, pair: None, dtype },
            }
        }
        e => e,
    }
}

/// The engine's "non-finite reward" on one side of pair `pair`, as that pair's.
pub(crate) fn on_pair(e: InstrumentError, pair: usize, side: &str) -> InstrumentError {
    match e {
        InstrumentError::Engine(reward_lens_engine::EngineError::NonFiniteReward { value, dtype, .. }) => {
            InstrumentError::NonFinite {
                instrument: "forward pass".into(),
                path: format!("pairs[{pair}].{side}.reward"),
                value: value as f64,
                pair: Some(pair),
                dtype: Some(dtype),
            }
        }
        e => e,
    }
}

fn row_at(t: &Tensor, b: usize, p: usize) -> Result<Vec<f32>> {
    Ok(t.get(b)?.get(p)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
}

/// Runs `seqs` in batches of `batch_size`, batched by length ([`batches_by_length`]), and extracts
/// each sequence's trace, in input order.
pub fn trace(model: &RewardModel, seqs: &[Vec<u32>], batch_size: usize, opts: TraceOptions) -> Result<Vec<Trace>> {
    trace_with_progress(model, seqs, batch_size, opts, &mut |_| {})
}

/// [`trace`], telling `progress` how many sequences are done after each batch.
pub fn trace_with_progress(
    model: &RewardModel,
    seqs: &[Vec<u32>],
    batch_size: usize,
    opts: TraceOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Trace>> {
    let n_layers = model.config.n_layers;
    let has_pos = model.sites().contains(&Site::PosEmbed);
    let mut names: Vec<String> = vec![
        "hook_embed".into(),
        "blocks.0.hook_resid_pre".into(),
        "blocks.*.hook_resid_post".into(),
        "blocks.*.hook_attn_out".into(),
        "blocks.*.hook_mlp_out".into(),
        "ln_final.hook_scale".into(),
    ];
    if has_pos {
        names.push("hook_pos_embed".into());
    }
    if opts.heads {
        names.push("blocks.*.attn.hook_z".into());
    }
    if opts.neurons {
        names.push("blocks.*.mlp.hook_post".into());
    }
    // Batched by length (little padding); traces land back in input order.
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let mut out: Vec<Option<Trace>> = (0..seqs.len()).map(|_| None).collect();
    let mut done = 0;
    for group in batches_by_length(&lengths, batch_size) {
        let chunk: Vec<Vec<u32>> = group.iter().map(|&i| seqs[i].clone()).collect();
        let batch = model.batch(&chunk, PaddingSide::Right)?;
        let fwd = model.forward(&batch, &Hooks::cache(&names)).map_err(|e| at_sequence(e, &group))?;
        let c = &fwd.cache;
        for (b, &i) in group.iter().enumerate() {
            let p = fwd.output.pooled_index[b];
            let per_layer = |site: fn(usize) -> Site| -> Result<Vec<Vec<f32>>> {
                (0..n_layers).map(|l| row_at(c.site(site(l)).expect("cached"), b, p)).collect()
            };
            let mut resid = vec![row_at(c.site(Site::ResidPre(0)).expect("cached"), b, p)?];
            resid.extend(per_layer(Site::ResidPost)?);
            let gating = match (&model.head, &fwd.output.objectives) {
                (RewardHead::Gated(_), Some(o)) => Some(o.gating[b].clone()),
                _ => None,
            };
            out[i] = Some(Trace {
                score: fwd.output.scores[b],
                pooled: p,
                resid,
                attn_out: per_layer(Site::AttnOut)?,
                mlp_out: per_layer(Site::MlpOut)?,
                embed_tok: row_at(c.site(Site::Embed).expect("cached"), b, p)?,
                embed_pos: if has_pos { Some(row_at(c.site(Site::PosEmbed).expect("cached"), b, p)?) } else { None },
                z: if opts.heads { Some(per_layer(Site::Z)?) } else { None },
                mlp_post: if opts.neurons { Some(per_layer(Site::MlpPost)?) } else { None },
                final_divisor: row_at(c.site(Site::FinalScale).expect("cached"), b, p)?[0],
                gating,
            });
        }
        done += group.len();
        progress(done);
    }
    Ok(out.into_iter().map(|t| t.expect("every sequence is in one batch")).collect())
}

#[cfg(test)]
mod advice_tests {
    use super::*;
    use reward_lens_engine::EngineError;

    fn message(dtype: candle_core::DType) -> String {
        let e = EngineError::NonFiniteReward { row: 1, seq_len: 9, value: f32::INFINITY, dtype };
        sequences_are_pairs(at_sequence(e, &[4, 5])).to_string()
    }

    #[test]
    fn a_non_finite_reward_keeps_the_engines_dtype_aware_advice() {
        // Batch row 1 is sequence 5: pair 2's rejected side.
        let bf16 = message(candle_core::DType::BF16);
        assert!(bf16.starts_with("forward pass: pairs[2].rejected.reward is inf (pair 3 of the input)"), "{bf16}");
        assert!(bf16.contains("overflow bf16 (compute in f32"), "{bf16}");
        let f32 = message(candle_core::DType::F32);
        assert!(f32.contains("overflowed f32 itself (a wider compute dtype is no remedy)"), "{f32}");
        assert!(!f32.contains("compute in f32"), "{f32}");
        // A NaN found in a report has no dtype to speak of: the general advice.
        #[derive(serde::Serialize)]
        struct R {
            x: Vec<f64>,
        }
        let e = crate::finite::ensure_finite("lens", &R { x: vec![1.0, f64::NAN] }).unwrap_err().to_string();
        assert!(e.starts_with("lens: x[1] is NaN") && e.contains("check config.json's epsilons"), "{e}");
    }
}
