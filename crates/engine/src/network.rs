//! The decoder stack shared by every supported architecture. Architecture differences are data
//! in [`ModelConfig`] (norm kind, gated MLP, sandwich norms, q/k norms, soft-cap, windows), so
//! there is one forward pass and one place where every hook fires.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};

use crate::config::{Activation, ModelConfig, NormKind, RopeScaling};
use crate::error::Result;
use crate::hooks::HookState;
use crate::site::Site;

pub(crate) struct Linear {
    /// `[out, in]`, as `nn.Linear` stores it (GPT-2's Conv1D is transposed at load).
    pub w: Tensor,
    pub b: Option<Tensor>,
}

/// `x @ wᵀ` whose backward returns only x's gradient. The weights are frozen; candle's matmul
/// backward would also form every weight's gradient, as much work again as the input's.
struct FrozenLinear;

impl candle_core::CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        lx: &candle_core::Layout,
        w: &candle_core::CpuStorage,
        lw: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = lx.shape().dims2()?;
        let (n, _) = lw.shape().dims2()?;
        let out = x.matmul(w, (1, m, n, k), lx, &lw.transpose(0, 1)?)?;
        Ok((out, (m, n).into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &candle_core::Layout,
        w: &candle_core::CudaStorage,
        lw: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = lx.shape().dims2()?;
        let (n, _) = lw.shape().dims2()?;
        let out = x.matmul(w, (1, m, n, k), lx, &lw.transpose(0, 1)?)?;
        Ok((out, (m, n).into()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = *dims.last().expect("activation has at least one axis");
        let rows = x.elem_count() / d_in;
        let x2 = x.reshape((rows, d_in))?;
        // In a gradient run (the input tracks a graph) skip the weights' gradient unless the
        // weights themselves are being trained (they are variables, so they track).
        let mut y = if x2.track_op() && !self.w.track_op() {
            x2.contiguous()?.apply_op2(&self.w, FrozenLinear)?
        } else {
            crate::kernels::linear(&x2, &self.w)?
        };
        if let Some(b) = &self.b {
            y = y.broadcast_add(b)?;
        }
        let mut out = dims;
        *out.last_mut().expect("non-empty") = self.w.dim(0)?;
        Ok(y.reshape(out)?)
    }
}

pub(crate) struct Norm {
    pub kind: NormKind,
    /// γ as applied (Gemma-2's `1 + w` already folded in).
    pub gamma: Tensor,
    pub beta: Option<Tensor>,
}

impl Norm {
    /// `fused` uses candle's single-kernel norms, which carry no gradient; gradient runs pass
    /// false and get the composed (differentiable) version.
    pub fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        let eps = self.kind.eps() as f32;

        Ok(match (&self.kind, fused) {
            (NormKind::Rms { .. }, true) => candle_nn::ops::rms_norm(&x.contiguous()?, &self.gamma, eps)?,
            (NormKind::Rms { .. }, false) => candle_nn::ops::rms_norm_slow(x, &self.gamma, eps)?,
            (NormKind::Layer { .. }, true) => {
                let beta = self.beta.as_ref().expect("LayerNorm has a bias");
                candle_nn::ops::layer_norm(&x.contiguous()?, &self.gamma, beta, eps)?
            }
            (NormKind::Layer { .. }, false) => {
                let beta = self.beta.as_ref().expect("LayerNorm has a bias");
                candle_nn::ops::layer_norm_slow(x, &self.gamma, beta, eps)?
            }
        })
    }

    /// The norm spelled out in f32, also returning its divisor `√(mean(x²)+ε)` (LayerNorm:
    /// `√(var+ε)`), which the exact decompositions freeze. The divisor passes through `hook`
    /// (the `ln_final.hook_scale` site) before it is used, so interventions on it take effect.
    pub fn forward_with_scale(
        &self,
        x: &Tensor,
        hook: impl FnOnce(Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let x = x.to_dtype(DType::F32)?;
        let eps = self.kind.eps();
        let gamma = self.gamma.to_dtype(DType::F32)?;
        let (centred, divisor) = match self.kind {
            NormKind::Rms { .. } => {
                let div = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
                (x, div)
            }
            NormKind::Layer { .. } => {
                let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
                let div = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
                (xc, div)
            }
        };
        let divisor = hook(divisor)?;
        let mut out = centred.broadcast_div(&divisor)?.broadcast_mul(&gamma)?;
        if let Some(b) = &self.beta {
            out = out.broadcast_add(&b.to_dtype(DType::F32)?)?;
        }
        Ok((out, divisor))
    }
}

pub(crate) struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
}

pub(crate) struct Mlp {
    /// Gate projection (gated MLPs) — its activation is `mlp.hook_pre`.
    pub gate: Option<Linear>,
    /// Up projection (gated) or GPT-2's c_fc.
    pub up: Linear,
    pub down: Linear,
}

pub(crate) struct Block {
    pub ln1: Norm,
    pub attn: Attention,
    /// Gemma-2's post_attention_layernorm (on the attention output).
    pub post_attn_norm: Option<Norm>,
    /// The norm before the MLP (Llama's post_attention_layernorm, Gemma-2's pre_feedforward).
    pub ln2: Norm,
    pub mlp: Mlp,
    pub post_mlp_norm: Option<Norm>,
}

pub(crate) struct Network {
    pub cfg: ModelConfig,
    pub embed: Tensor,
    pub pos_embed: Option<Tensor>,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    /// RoPE inverse frequencies `[head_dim / 2]` in f32, scaling applied.
    pub inv_freq: Option<Tensor>,
    pub rope_position_scale: f64,
    /// Bytes one block of f32 attention scores may take where they are formed whole (see
    /// [`DEFAULT_ATTENTION_BUDGET`]).
    pub attention_budget: usize,
}

/// Where attention forms its `[B, H, T, Tk]` scores as tensors (every run on a GPU; gradient runs
/// on the CPU, whose scoring kernel never forms them), queries run in blocks whose f32 scores
/// take at most this many bytes, unless a hook reads the scores or the pattern whole. A few
/// tensors of that size live at once (scores, mask, softmax),
/// so 256 MiB keeps attention's transient memory near 1 GiB at any length: 16 sequences of 4096
/// tokens with 32 heads would otherwise form 32 GiB of scores per layer. Each row's softmax reads
/// its whole row either way, so results do not depend on the blocks beyond float rounding.
pub const DEFAULT_ATTENTION_BUDGET: usize = 256 << 20;

/// Query positions per block so that `b · heads · rows · tk` f32 scores fit `budget` bytes (at
/// least one row; all `t` when they fit).
pub(crate) fn attention_rows(b: usize, heads: usize, t: usize, tk: usize, budget: usize) -> usize {
    let per_row = (b * heads * tk * 4).max(1);
    (budget / per_row).clamp(1, t.max(1))
}

/// Inverse frequencies as transformers computes them (f32), with Llama-3 / linear scaling.
pub(crate) fn rope_inv_freq(cfg: &ModelConfig, device: &Device) -> Result<(Option<Tensor>, f64)> {
    let Some(rope) = &cfg.rope else { return Ok((None, 1.0)) };
    let dim = cfg.head_dim;
    let mut inv: Vec<f32> =
        (0..dim / 2).map(|i| 1.0f32 / (rope.theta as f32).powf((2 * i) as f32 / dim as f32)).collect();
    let mut pos_scale = 1.0;
    match rope.scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } => pos_scale = 1.0 / factor,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            for f in inv.iter_mut() {
                let freq = *f as f64;
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let scaled = if wavelen < high_wavelen {
                    freq
                } else if wavelen > low_wavelen {
                    freq / factor
                } else {
                    let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * freq / factor + smooth * freq
                };
                *f = scaled as f32;
            }
        }
    }
    let n = inv.len();
    Ok((Some(Tensor::from_vec(inv, n, device)?), pos_scale))
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

/// RoPE tables for one batch: cos/sin of `position × inv_freq`, `[B, T, head_dim / 2]`.
pub(crate) struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    /// The tables of positions `[start, start + len)`.
    fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            cos: self.cos.narrow(1, start, len)?.contiguous()?,
            sin: self.sin.narrow(1, start, len)?.contiguous()?,
        })
    }

    /// Rotates `x` `[B, T, H, head_dim]` (transformers' rotate-half convention). The fused
    /// kernel has no gradient, so gradient runs take the composed path.
    fn apply(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused {
            return Ok(candle_nn::rotary_emb::rope_thd(&x.contiguous()?, &self.cos, &self.sin)?);
        }
        let full = |t: &Tensor| -> Result<Tensor> { Ok(Tensor::cat(&[t, t], D::Minus1)?.unsqueeze(2)?) };
        let (cos, sin) = (full(&self.cos)?, full(&self.sin)?);
        Ok((x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?)?)
    }
}

fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => x.silu()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::GeluErf => x.gelu_erf()?,
        Activation::Relu => x.relu()?,
    })
}

/// Causal (optionally windowed) attention mask with padded keys removed: 1 = may attend.
/// Shape `[B, 1, T, T]`. A padding query also sees itself, so no row is empty: masked scores
/// can then be −∞ (whose exp is a fast exact 0; a finite stand-in such as `f32::MIN` sends
/// every masked entry through libm's underflow path, ~3 % of a forward pass), and padding rows
/// stay finite. Real tokens never attend to padding, so their values do not change.
fn attention_mask(mask: &[Vec<u8>], window: Option<usize>, device: &Device) -> Result<Tensor> {
    let b = mask.len();
    let t = mask.first().map_or(0, |m| m.len());
    let mut data = vec![0u8; b * t * t];
    for (bi, row) in mask.iter().enumerate() {
        for q in 0..t {
            let lo = window.map_or(0, |w| (q + 1).saturating_sub(w));
            for k in lo..=q {
                data[(bi * t + q) * t + k] = row[k];
            }
            data[(bi * t + q) * t + q] = 1;
        }
    }
    Ok(Tensor::from_vec(data, (b, 1, t, t), device)?)
}

/// Inputs to one forward pass, already on the device.
pub(crate) struct Inputs<'a> {
    pub ids: &'a Tensor,
    pub positions: &'a [Vec<u32>],
    pub mask: &'a [Vec<u8>],
}

/// Keys and values of positions `[0, start)` from an earlier run, so a block can run on the
/// positions from `start` on only: under causal attention nothing at a later position changes
/// an earlier one. Keys are as attention uses them (after q/k norms and RoPE): `[B, start, KV, hd]`.
pub struct Past {
    pub start: usize,
    pub k: Tensor,
    pub v: Tensor,
}

/// A batch's RoPE tables and masks, built once (see [`Network::prepare`]).
pub(crate) struct Prepared {
    rope: Option<RopeTables>,
    masks: HashMap<Option<usize>, Tensor>,
    pos_ids: Tensor,
    fused: bool,
    /// Where the batch has padding: the flat indices (into `[B·T]`) of its real tokens.
    real_rows: Option<RealRows>,
}

/// The real tokens of a padded batch, for work done position by position: the MLP runs on these
/// rows alone rather than on every padded position.
struct RealRows {
    /// `[N]`: each real token's flat position in `[B·T]`.
    index: Tensor,
    /// `[B·T]`: each position's row among the real tokens, `N` (a zero row) at padding. Results
    /// go back by this gather rather than by `index_add`, whose CUDA kernel loops over the rows
    /// serially in each thread.
    spread: Tensor,
    b: usize,
    t: usize,
}

pub(crate) struct Hidden {
    /// The final norm's output `[B, T, d]` in f32 (what the head reads).
    pub normalized: Tensor,
    /// Its divisor `[B, T, 1]`: infinite where the residual's mean square overflows f32.
    pub divisor: Tensor,
}

impl Network {
    pub fn sites(&self) -> Vec<Site> {
        Site::all(self.cfg.n_layers, self.cfg.rope.is_some(), self.pos_embed.is_some(), self.cfg.gated_mlp)
    }

    /// Everything a batch needs before any block runs: RoPE tables and one attention mask per
    /// distinct window. Built once and reused however the stack is then run.
    pub fn prepare(&self, inp: &Inputs, fused: bool) -> Result<Prepared> {
        let device = self.embed.device();
        let (b, t) = inp.ids.dims2()?;
        let pos_flat: Vec<u32> = inp.positions.iter().flatten().copied().collect();
        let pos_ids = Tensor::from_vec(pos_flat.clone(), (b, t), device)?;
        // RoPE tables for these positions (angles in f32, as transformers computes them).
        let rope = match &self.inv_freq {
            Some(inv) => {
                let pos: Vec<f32> = pos_flat.iter().map(|&p| (p as f64 * self.rope_position_scale) as f32).collect();
                let pos = Tensor::from_vec(pos, (b, t, 1), device)?;
                let freqs = pos.broadcast_mul(&inv.reshape((1, 1, inv.dim(0)?))?)?;
                let dt = self.embed.dtype();
                Some(RopeTables { cos: freqs.cos()?.to_dtype(dt)?, sin: freqs.sin()?.to_dtype(dt)? })
            }
            None => None,
        };
        let mut masks: HashMap<Option<usize>, Tensor> = HashMap::new();
        for &window in &self.cfg.sliding_window {
            if let std::collections::hash_map::Entry::Vacant(e) = masks.entry(window) {
                e.insert(attention_mask(inp.mask, window, device)?);
            }
        }
        // candle's fused kernels exist for f32/bf16/f16 only.
        let fused = fused && self.embed.dtype() != DType::F64;
        // Only unhooked no-gradient runs pack the MLP's rows (`mlp_half`).
        let real: Vec<u32> = if fused {
            inp.mask
                .iter()
                .enumerate()
                .flat_map(|(i, row)| {
                    row.iter().enumerate().filter(|(_, &m)| m == 1).map(move |(p, _)| (i * t + p) as u32)
                })
                .collect()
        } else {
            Vec::new()
        };
        let n = real.len();
        let real_rows = if n > 0 && n < b * t {
            let mut spread = vec![n as u32; b * t];
            for (j, &i) in real.iter().enumerate() {
                spread[i as usize] = j as u32;
            }
            Some(RealRows {
                index: Tensor::from_vec(real, n, device)?,
                spread: Tensor::from_vec(spread, b * t, device)?,
                b,
                t,
            })
        } else {
            None
        };
        Ok(Prepared { rope, masks, pos_ids, fused, real_rows })
    }

    /// Token (and position) embeddings: the input of block 0.
    pub fn embed(&self, ids: &Tensor, prep: &Prepared, hs: &mut HookState) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t) = ids.dims2()?;
        let d = cfg.d_model;
        let mut tok = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, d))?;
        if let Some(s) = cfg.embed_scale {
            // transformers casts √d to the compute dtype before multiplying.
            let s = Tensor::new(s as f32, self.embed.device())?.to_dtype(tok.dtype())?;
            tok = tok.broadcast_mul(&s)?;
        }
        let tok = hs.fire(Site::Embed, tok)?;
        Ok(match &self.pos_embed {
            Some(wpe) => {
                let pe = wpe.index_select(&prep.pos_ids.flatten_all()?, 0)?.reshape((b, t, d))?;
                let pe = hs.fire(Site::PosEmbed, pe)?;
                (tok + pe)?
            }
            None => tok,
        })
    }

    /// Block `l` on its input `x` (the residual stream entering it): every position, or with
    /// `past` only the positions from `past.start` on (`x` is then `[B, T − start, d]`).
    pub fn block(
        &self,
        l: usize,
        x: Tensor,
        prep: &Prepared,
        hs: &mut HookState,
        past: Option<&Past>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let fused = prep.fused;
        let block = &self.blocks[l];
        let full_mask = &prep.masks[&cfg.sliding_window[l]];
        let narrowed;
        let (mask, rope) = match past {
            None => (full_mask.clone(), prep.rope.as_ref()),
            Some(p) => {
                let s = x.dim(1)?;
                narrowed = prep.rope.as_ref().map(|r| r.narrow(p.start, s)).transpose()?;
                // Queries [start, start + s); keys [0, start + s) (past ones plus these).
                (full_mask.narrow(2, p.start, s)?.narrow(3, 0, p.start + s)?, narrowed.as_ref())
            }
        };
        let x = hs.fire(Site::ResidPre(l), x)?;
        let attn_out = self.attention(l, block, &x, rope, &mask, hs, fused, past)?;
        let attn_out = match &block.post_attn_norm {
            Some(n) => n.forward(&attn_out, fused)?,
            None => attn_out,
        };
        let attn_out = hs.fire(Site::AttnOut(l), attn_out)?;
        self.mlp_half(l, (x + attn_out)?, prep, hs)
    }

    /// The second half of block `l` from its `resid_mid` (fired here): the MLP and its residual
    /// addition. Every position on its own, so it runs on any subset of positions.
    pub fn mlp_half(&self, l: usize, x: Tensor, prep: &Prepared, hs: &mut HookState) -> Result<Tensor> {
        let x = hs.fire(Site::ResidMid(l), x)?;
        // Scoring with no hooks: the MLP (most of a block's work) runs on the real tokens only
        // and its output is gathered back to their positions; padding keeps resid_mid, which no
        // real position reads (padded keys are masked). Each real row's arithmetic is the same.
        if let Some(r) = prep.real_rows.as_ref().filter(|_| prep.fused && !hs.is_active()) {
            let d = self.cfg.d_model;
            if x.dims3()? == (r.b, r.t, d) {
                let flat = x.reshape((r.b * r.t, d))?;
                let packed = flat.index_select(&r.index, 0)?.unsqueeze(0)?;
                let out = self.mlp_out(l, &packed, prep.fused, hs)?.squeeze(0)?;
                let out = Tensor::cat(&[&out, &Tensor::zeros((1, d), out.dtype(), out.device())?], 0)?;
                let mlp_out = out.index_select(&r.spread, 0)?.reshape((r.b, r.t, d))?;
                return hs.fire(Site::ResidPost(l), (x + mlp_out)?);
            }
        }
        let mlp_out = self.mlp_out(l, &x, prep.fused, hs)?;
        hs.fire(Site::ResidPost(l), (x + mlp_out)?)
    }

    /// Block `l`'s MLP output (after Gemma-2's post-MLP norm) for its `resid_mid` `x`.
    fn mlp_out(&self, l: usize, x: &Tensor, fused: bool, hs: &mut HookState) -> Result<Tensor> {
        let cfg = &self.cfg;
        let block = &self.blocks[l];
        let h = block.ln2.forward(x, fused)?;
        let post = match &block.mlp.gate {
            Some(gate) => {
                let pre = hs.fire(Site::MlpPre(l), gate.forward(&h)?)?;
                let lin = hs.fire(Site::MlpPreLinear(l), block.mlp.up.forward(&h)?)?;
                match cfg.activation {
                    Activation::Silu if fused => crate::kernels::silu_mul(&pre, &lin)?,
                    act => (activate(act, &pre)? * lin)?,
                }
            }
            None => {
                let pre = hs.fire(Site::MlpPre(l), block.mlp.up.forward(&h)?)?;
                activate(cfg.activation, &pre)?
            }
        };
        let post = hs.fire(Site::MlpPost(l), post)?;
        let mlp_out = block.mlp.down.forward(&post)?;
        let mlp_out = match &block.post_mlp_norm {
            Some(n) => n.forward(&mlp_out, fused)?,
            None => mlp_out,
        };
        hs.fire(Site::MlpOut(l), mlp_out)
    }

    /// The final norm on the last block's output.
    pub fn finish(&self, x: &Tensor, hs: &mut HookState) -> Result<Hidden> {
        let (normalized, divisor) = self.final_norm.forward_with_scale(x, |d| hs.fire(Site::FinalScale, d))?;
        let normalized = hs.fire(Site::FinalNormalized, normalized)?;
        Ok(Hidden { normalized, divisor })
    }

    /// Keys (after Qwen3's k_norm, before RoPE) and values of the normed input `h`.
    fn project_kv(&self, block: &Block, h: &Tensor, fused: bool) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = h.dims3()?;
        let (nkv, hd) = (self.cfg.n_kv_heads, self.cfg.head_dim);
        let a = &block.attn;
        let mut k = a.k.forward(h)?.reshape((b, t, nkv, hd))?;
        let v = a.v.forward(h)?.reshape((b, t, nkv, hd))?;
        if let Some(n) = &a.k_norm {
            k = n.forward(&k, fused)?;
        }
        Ok((k, v))
    }

    /// Keys and values layer `l`'s attention would use for residual `x` at positions
    /// `[start, start + T)` (keys after RoPE), without running the rest of the block.
    pub fn keys_values(&self, l: usize, x: &Tensor, prep: &Prepared, start: usize) -> Result<(Tensor, Tensor)> {
        let block = &self.blocks[l];
        let h = block.ln1.forward(x, prep.fused)?;
        let (k, v) = self.project_kv(block, &h, prep.fused)?;
        let k = match &prep.rope {
            Some(r) => r.narrow(start, x.dim(1)?)?.apply(&k, prep.fused)?,
            None => k,
        };
        Ok((k, v))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        l: usize,
        block: &Block,
        x: &Tensor,
        rope: Option<&RopeTables>,
        mask: &Tensor,
        hs: &mut HookState,
        fused: bool,
        past: Option<&Past>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        // t: the query positions computed here; tk: all key positions.
        let (b, t, _) = x.dims3()?;
        let tk = t + past.map_or(0, |p| p.start);
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let rep = nh / nkv;
        let a = &block.attn;
        let h = block.ln1.forward(x, fused)?;

        let mut q = a.q.forward(&h)?.reshape((b, t, nh, hd))?;
        if let Some(n) = &a.q_norm {
            q = n.forward(&q, fused)?;
        }
        let (k, v) = self.project_kv(block, &h, fused)?;
        let mut q = hs.fire(Site::Q(l), q)?;
        let mut k = hs.fire(Site::K(l), k)?;
        let v = hs.fire(Site::V(l), v)?;
        if let Some(rope) = rope {
            q = hs.fire(Site::RotQ(l), rope.apply(&q, fused)?)?;
            k = hs.fire(Site::RotK(l), rope.apply(&k, fused)?)?;
        }

        // Grouped-query attention without copying keys: the `rep` query heads that share a kv
        // head are stacked along the query axis, [B, KV, rep·T, hd] @ [B, KV, hd, T].
        let (k, v) = match past {
            Some(p) => (Tensor::cat(&[&p.k, &k], 1)?, Tensor::cat(&[&p.v, &v], 1)?),
            None => (k, v),
        };
        let q = q.transpose(1, 2)?.contiguous()?.reshape((b, nkv, rep * t, hd))?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let mut scale = cfg.attn_scale;
        if cfg.attn_scale_by_layer {
            scale /= (l + 1) as f64;
        }
        // Scaling, masking and softmax in one pass where nothing reads the scores between them,
        // and with the values too where nothing reads the pattern.
        let one_pass = fused && cfg.attn_softcap.is_none() && !hs.touches(Site::AttnScores(l));
        if one_pass && !hs.touches(Site::Pattern(l)) {
            if let Some(z) = crate::kernels::causal_attention(&q, &k, &v, mask, t, scale)? {
                let z = z.reshape((b, nh, t, hd))?.transpose(1, 2)?.contiguous()?;
                let z = hs.fire(Site::Z(l), z)?;
                return a.o.forward(&z.reshape((b, t, nh * hd))?);
            }
        }
        // Hooks on the scores or the pattern see them whole; otherwise queries run in blocks
        // whose scores fit the budget.
        let whole = hs.touches(Site::AttnScores(l)) || hs.touches(Site::Pattern(l));
        let rows = if whole { t } else { attention_rows(b, nh, t, tk, self.attention_budget) };
        let z = if rows >= t {
            self.attend(l, &q, &k, &v, mask, t, scale, (one_pass, fused), hs)?
        } else {
            let q = q.reshape((b, nkv, rep, t, hd))?;
            let mut parts = Vec::with_capacity(t.div_ceil(rows));
            for start in (0..t).step_by(rows) {
                let n = rows.min(t - start);
                let qn = q.narrow(3, start, n)?.contiguous()?.reshape((b, nkv, rep * n, hd))?;
                let mask = mask.narrow(2, start, n)?;
                parts.push(self.attend(l, &qn, &k, &v, &mask, n, scale, (one_pass, fused), hs)?);
            }
            Tensor::cat(&parts, 2)?
        };
        let z = z.transpose(1, 2)?.contiguous()?;
        let z = hs.fire(Site::Z(l), z)?;
        a.o.forward(&z.reshape((b, t, nh * hd))?)
    }

    /// `softmax(where(mask, q·kᵀ · scale, −∞)) · v` as tensors, for `t` query positions of
    /// grouped queries `[B, KV, rep·t, hd]` against keys and values `[B, KV, Tk, hd]` and a mask
    /// `[B, 1, t, Tk]`: `z` as `[B, H, t, hd]`. Fires the score and pattern hooks.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        l: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        t: usize,
        scale: f64,
        (one_pass, fused): (bool, bool),
        hs: &mut HookState,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, nkv, _, hd) = q.dims4()?;
        let (nh, tk) = (cfg.n_heads, k.dim(2)?);
        let raw = crate::kernels::matmul_t(q, k)?.reshape((b, nh, t, tk))?;
        let pattern = match one_pass.then(|| crate::kernels::masked_softmax(&raw, mask, scale)).transpose()?.flatten() {
            Some(p) => p,
            None => {
                let mut scores = (raw * scale)?.to_dtype(DType::F32)?;
                if let Some(c) = cfg.attn_softcap {
                    scores = ((scores / c)?.tanh()? * c)?;
                }
                let scores = hs.fire(Site::AttnScores(l), scores)?;
                let shape = scores.shape().clone();
                let neg = Tensor::new(f32::NEG_INFINITY, scores.device())?.broadcast_as(&shape)?;
                let masked = mask.broadcast_as(&shape)?.where_cond(&scores, &neg)?;
                // Gradient runs (`fused` false) need the composed softmax: the fused one has no
                // backward.
                if fused {
                    candle_nn::ops::softmax_last_dim(&masked)?
                } else {
                    candle_nn::ops::softmax(&masked, D::Minus1)?
                }
            }
        };
        let pattern = hs.fire(Site::Pattern(l), pattern.to_dtype(v.dtype())?)?;
        Ok(crate::kernels::matmul(&pattern.reshape((b, nkv, q.dim(2)?, tk))?, v)?.reshape((b, nh, t, hd))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use serde_json::json;

    /// Llama-3.1 frequency scaling, against transformers' formula evaluated in f64: high
    /// frequencies kept, low ones divided by the factor, the band between interpolated.
    #[test]
    fn llama3_rope_scaling_matches_transformers() {
        let v = json!({"architectures": ["LlamaForSequenceClassification"], "hidden_size": 4096,
            "num_hidden_layers": 1, "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
            "max_position_embeddings": 131072, "vocab_size": 128256,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        let cfg = ModelConfig::from_value(&v, std::path::Path::new("config.json")).unwrap();
        let (inv, scale) = rope_inv_freq(&cfg, &Device::Cpu).unwrap();
        assert_eq!(scale, 1.0);
        let inv: Vec<f32> = inv.unwrap().to_vec1().unwrap();
        assert_eq!(inv.len(), 64);
        let want = [
            (0, 1.0),
            (20, 0.016560440080994446),
            (28, 0.0032114459947525913), // wavelength < 2048: unchanged
            (29, 0.002166570763503359),  // in the band: interpolated
            (31, 0.0008567514129196321),
            (34, 0.00017850781276799638),
            (35, 9.556212353964683e-05), // wavelength > 8192: divided by 8
            (63, 3.068925988914511e-07),
        ];
        for (i, w) in want {
            let rel = ((inv[i] as f64 - w) / w).abs();
            assert!(rel < 1e-5, "inv_freq[{i}] = {} vs {w}", inv[i]);
        }
    }

    #[test]
    fn sliding_window_mask_sees_w_keys() {
        let m = attention_mask(&[vec![1, 1, 1, 1, 1], vec![0, 0, 1, 1, 1]], Some(2), &Device::Cpu).unwrap();
        let m: Vec<Vec<Vec<u8>>> = m.squeeze(1).unwrap().to_vec3().unwrap();
        // Row 0, query 3 sees keys 2 and 3 only (q − W < k ≤ q).
        assert_eq!(m[0][3], vec![0, 0, 1, 1, 0]);
        // Row 1 is left-padded: query 2 (its first real token) sees only itself.
        assert_eq!(m[1][2], vec![0, 0, 1, 0, 0]);
        assert_eq!(m[1][4], vec![0, 0, 0, 1, 1]);
    }
}
