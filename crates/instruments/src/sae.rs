//! Sparse autoencoders on reward-model activations, in the SAELens folder format
//! (`cfg.json` + `sae_weights.safetensors` with `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`,
//! `b_enc [d_sae]`, `b_dec [d_in]`). The architecture is read from `cfg.json` and trusted:
//! `topk` (keep the k largest pre-activations, then ReLU), `standard` (ReLU) and `jumprelu`
//! (a per-latent `threshold`).
//!
//! Encoding: `pre = (x − b_dec) W_enc + b_enc`, then the architecture's activation;
//! decoding: `x̂ = f W_dec + b_dec`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde_json::{json, Value};

use crate::{InstrumentError, Result};

#[derive(Debug, Clone)]
pub enum Architecture {
    TopK { k: usize },
    Relu,
    JumpRelu { threshold: Tensor },
}

pub struct Sae {
    pub w_enc: Tensor,
    pub w_dec: Tensor,
    pub b_enc: Tensor,
    pub b_dec: Tensor,
    pub architecture: Architecture,
    /// The activation site it reads (TransformerLens name), e.g. `blocks.2.hook_resid_post`.
    pub hook_name: String,
    pub d_in: usize,
    pub d_sae: usize,
    /// The fingerprint of the model whose activations it was trained on (`model_fingerprint` in
    /// `cfg.json`), when known: [`Sae::provenance_warning`] compares it with the model in use.
    pub model: Option<String>,
    /// SAELens's `apply_b_dec_to_input`: the encoder reads `x − b_dec` (true; the SAEs trained
    /// here) or `x` itself (Gemma Scope's JumpReLU SAEs, for one).
    pub apply_b_dec_to_input: bool,
}

fn err(msg: impl Into<String>) -> InstrumentError {
    InstrumentError::Invalid(msg.into())
}

impl Sae {
    /// Pre-activations `[N, d_sae]` of inputs `[N, d_in]`.
    pub fn pre_activations(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.apply_b_dec_to_input { x.broadcast_sub(&self.b_dec)? } else { x.clone() };
        Ok(x.matmul(&self.w_enc)?.broadcast_add(&self.b_enc)?)
    }

    /// Latent activations `[N, d_sae]`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let pre = self.pre_activations(x)?;
        Ok(match &self.architecture {
            Architecture::Relu => pre.relu()?,
            Architecture::JumpRelu { threshold } => {
                let keep = pre.broadcast_gt(threshold)?.to_dtype(pre.dtype())?;
                (pre * keep)?
            }
            Architecture::TopK { k } => topk_relu(&pre, *k)?,
        })
    }

    pub fn decode(&self, f: &Tensor) -> Result<Tensor> {
        Ok(f.matmul(&self.w_dec)?.broadcast_add(&self.b_dec)?)
    }

    /// Writes the SAELens folder format.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        let mut t: HashMap<String, Tensor> = HashMap::new();
        t.insert("W_enc".into(), self.w_enc.contiguous()?);
        t.insert("W_dec".into(), self.w_dec.contiguous()?);
        t.insert("b_enc".into(), self.b_enc.contiguous()?);
        t.insert("b_dec".into(), self.b_dec.contiguous()?);
        let (arch, extra) = match &self.architecture {
            Architecture::TopK { k } => ("topk", json!({"k": k})),
            Architecture::Relu => ("standard", json!({})),
            Architecture::JumpRelu { threshold } => {
                t.insert("threshold".into(), threshold.contiguous()?);
                ("jumprelu", json!({}))
            }
        };
        let weights = dir.join("sae_weights.safetensors");
        candle_core::safetensors::save(&t, &weights)
            .map_err(|e| err(format!("{}: cannot write: {e}", weights.display())))?;
        let mut cfg = json!({
            "architecture": arch,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "hook_name": self.hook_name,
            "dtype": "float32",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
        });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
            if let Some(m) = &self.model {
                c.insert("model_fingerprint".into(), json!(m));
            }
        }
        std::fs::write(dir.join("cfg.json"), serde_json::to_string_pretty(&cfg).expect("json"))
            .map_err(|e| err(format!("{}: {e}", dir.join("cfg.json").display())))?;
        Ok(())
    }

    /// Reads a SAELens folder; the architecture comes from `cfg.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("cfg.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| err(format!("{}: {e}", cfg_path.display())))?;
        let cfg: Value =
            serde_json::from_str(&text).map_err(|e| err(format!("{}: not valid JSON: {e}", cfg_path.display())))?;
        let field = |k: &str| cfg.get(k).ok_or_else(|| err(format!("{}: missing `{k}`", cfg_path.display())));
        let d_in =
            field("d_in")?.as_u64().ok_or_else(|| err(format!("{}: `d_in` must be an integer", cfg_path.display())))?
                as usize;
        let d_sae = field("d_sae")?
            .as_u64()
            .ok_or_else(|| err(format!("{}: `d_sae` must be an integer", cfg_path.display())))?
            as usize;
        let hook_name = match cfg.get("hook_name").and_then(|h| h.as_str()) {
            Some(h) if reward_lens_engine::Site::parse(h).is_some() => h.to_string(),
            Some(h) => {
                return Err(err(format!(
                    "{}: `hook_name` `{h}` is not a site name (e.g. blocks.2.hook_resid_post)",
                    cfg_path.display()
                )))
            }
            None => return Err(err(format!("{}: missing `hook_name` (the site the SAE reads)", cfg_path.display()))),
        };
        let apply_b_dec_to_input = match cfg.get("apply_b_dec_to_input") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(err(format!(
                    "{}: `apply_b_dec_to_input` must be true or false, found {v}",
                    cfg_path.display()
                )))
            }
        };
        // An input normalisation needs a scale this folder does not carry: the latents would be
        // computed on inputs of another size than the SAE was trained on.
        match cfg.get("normalize_activations") {
            None | Some(Value::Null) => {}
            Some(Value::String(n)) if n == "none" => {}
            Some(v) => {
                return Err(err(format!(
                    "{}: `normalize_activations` {v} is not supported (only \"none\"): fold the normalisation into \
                     the weights first (SAELens: fold_activation_norm_scaling_factor)",
                    cfg_path.display()
                )))
            }
        }
        let model = cfg.get("model_fingerprint").and_then(|m| m.as_str()).map(str::to_string);
        let wpath = dir.join("sae_weights.safetensors");
        let t = candle_core::safetensors::load(&wpath, &Device::Cpu)
            .map_err(|e| err(format!("{}: {e}", wpath.display())))?;
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let x = t.get(name).ok_or_else(|| err(format!("{}: missing tensor `{name}`", wpath.display())))?;
            if x.dims() != shape {
                return Err(err(format!(
                    "{}: tensor `{name}` has shape {:?}, expected {shape:?}",
                    wpath.display(),
                    x.dims()
                )));
            }
            let x = x.to_dtype(DType::F32)?;
            if x.flatten_all()?.to_vec1::<f32>()?.iter().any(|v| !v.is_finite()) {
                return Err(err(format!(
                    "{}: tensor `{name}` contains non-finite values (NaN or infinity)",
                    wpath.display()
                )));
            }
            Ok(x)
        };
        let architecture = match cfg.get("architecture").and_then(|a| a.as_str()).unwrap_or("standard") {
            "topk" => {
                let k = cfg
                    .get("k")
                    .or_else(|| cfg.get("activation_fn_kwargs").and_then(|a| a.get("k")))
                    .and_then(|k| k.as_u64())
                    .filter(|&k| k >= 1 && k as usize <= d_sae)
                    .ok_or_else(|| {
                        err(format!(
                            "{}: a topk SAE needs `k`, a whole number from 1 to d_sae ({d_sae})",
                            cfg_path.display()
                        ))
                    })?;
                Architecture::TopK { k: k as usize }
            }
            "standard" | "relu" => Architecture::Relu,
            "jumprelu" => Architecture::JumpRelu { threshold: get("threshold", &[d_sae])? },
            other => {
                return Err(err(format!(
                    "{}: unsupported architecture `{other}` (topk, standard, jumprelu)",
                    cfg_path.display()
                )))
            }
        };
        Ok(Self {
            w_enc: get("W_enc", &[d_in, d_sae])?,
            w_dec: get("W_dec", &[d_sae, d_in])?,
            b_enc: get("b_enc", &[d_sae])?,
            b_dec: get("b_dec", &[d_in])?,
            architecture,
            hook_name,
            d_in,
            d_sae,
            model,
            apply_b_dec_to_input,
        })
    }

    /// A warning when the SAE was trained on another model's activations than `model` (a
    /// fingerprint as recorded at collection): its decomposition still adds up, but its latents
    /// were learnt elsewhere and may not mean the same here. None when they match or when the
    /// SAE does not say (SAEs from SAELens or older collections).
    pub fn provenance_warning(&self, model: &str) -> Option<String> {
        let trained = self.model.as_deref().filter(|m| !m.is_empty())?;
        (trained != model).then(|| {
            format!(
                "this SAE was trained on activations of another model (fingerprint {trained}, this model {model}): \
                 its decomposition still adds up, but its latents may not mean the same here"
            )
        })
    }
}

/// Keeps each row's k largest values (ties broken by index), ReLU'd; the rest zero. Built from
/// differentiable ops (a 0/1 mask times the input), so gradients reach the selected latents.
pub fn topk_relu(pre: &Tensor, k: usize) -> Result<Tensor> {
    let d = pre.dim(D::Minus1)?;
    if k >= d {
        return Ok(pre.relu()?);
    }
    let idx = pre.arg_sort_last_dim(false)?.narrow(D::Minus1, 0, k)?.contiguous()?;
    let ones = Tensor::ones(idx.shape(), pre.dtype(), pre.device())?;
    let mask = pre.zeros_like()?.scatter_add(&idx, &ones, D::Minus1)?;
    Ok((pre * mask)?.relu()?)
}

/// One input's reward split through the SAE (all terms along the frozen read-out direction d):
/// `reward = Σ latent contributions + decoder bias + reconstruction error + rest of the model + bias`,
/// where "rest" is `d · (h_L − x)`: everything the layers after the SAE's site add.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SaeDecomposition {
    pub reward: f64,
    /// (latent, activation, contribution = activation × W_dec[i]·d), largest |contribution| first.
    pub latents: Vec<(usize, f64, f64)>,
    pub latent_sum: f64,
    pub decoder_bias: f64,
    pub reconstruction_error: f64,
    pub rest: f64,
    pub bias: f64,
    /// Sum of all terms minus the reward (float rounding).
    pub residual: f64,
}

impl SaeDecomposition {
    /// One line: the reward and each term of its split, then the rounding residual.
    pub fn summary(&self) -> String {
        format!(
            "reward {:+.4} = latents {:+.4} + decoder bias {:+.4} + error {:+.4} + rest {:+.4} + bias {:+.4} (residual {:.1e})",
            self.reward, self.latent_sum, self.decoder_bias, self.reconstruction_error, self.rest, self.bias, self.residual
        )
    }
}

/// [`decompose`] of every pair's chosen, then rejected side.
pub fn decompose_pairs(
    model: &reward_lens_engine::RewardModel,
    sae: &Sae,
    pairs: &[reward_lens_engine::EncodedPair],
    top: usize,
) -> Result<Vec<SaeDecomposition>> {
    let seqs: Vec<Vec<u32>> = pairs.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
    decompose(model, sae, &seqs, top)
}

/// Each latent's reward alignment `W_dec[i] · w` for a residual-space direction `w`.
pub fn alignment(sae: &Sae, w: &[f64]) -> Result<Vec<f64>> {
    let wt = Tensor::from_vec(w.iter().map(|&x| x as f32).collect::<Vec<_>>(), (w.len(), 1), &Device::Cpu)?;
    Ok(sae.w_dec.matmul(&wt)?.squeeze(1)?.to_dtype(DType::F64)?.to_vec1()?)
}

/// Exact decomposition of each sequence's reward through an SAE reading a residual-width site
/// (`hook_name`) at the pooled token.
pub fn decompose(
    model: &reward_lens_engine::RewardModel,
    sae: &Sae,
    seqs: &[Vec<u32>],
    top: usize,
) -> Result<Vec<SaeDecomposition>> {
    use reward_lens_engine::{Hooks, PaddingSide, Site};
    let site =
        Site::parse(&sae.hook_name).ok_or_else(|| err(format!("SAE hook `{}` is not a site name", sae.hook_name)))?;
    if sae.d_in != model.config.d_model {
        return Err(err(format!("SAE d_in {} ≠ the model's d_model {}", sae.d_in, model.config.d_model)));
    }
    let traces = crate::trace::trace(model, seqs, 16, crate::trace::TraceOptions::default())?;
    let mut out = Vec::with_capacity(seqs.len());
    for (ids, t) in seqs.iter().zip(&traces) {
        let ro = crate::readout::ReadOut::new(model, t)?;
        let batch = model.batch(std::slice::from_ref(ids), PaddingSide::Right)?;
        let fwd = model.forward(&batch, &Hooks::cache(&[site.name()]))?;
        let x = fwd
            .cache
            .site(site)
            .ok_or_else(|| err(format!("`{}` was not produced by the forward pass", sae.hook_name)))?;
        if x.dim(2).ok() != Some(sae.d_in) {
            return Err(err(format!("`{}` is not a residual-width site (d_in {})", sae.hook_name, sae.d_in)));
        }
        let x = x.get(0)?.get(t.pooled)?.to_dtype(DType::F32)?.unsqueeze(0)?;
        let f = sae.encode(&x)?;
        let x_hat = sae.decode(&f)?;
        let xv: Vec<f32> = x.squeeze(0)?.to_vec1()?;
        let fv: Vec<f32> = f.squeeze(0)?.to_vec1()?;
        let err_v: Vec<f32> = (x.clone() - x_hat)?.squeeze(0)?.to_vec1()?;
        let align = alignment(sae, &ro.direction)?;
        let mut latents: Vec<(usize, f64, f64)> = fv
            .iter()
            .enumerate()
            .filter(|(_, a)| **a != 0.0)
            .map(|(i, a)| (i, *a as f64, *a as f64 * align[i]))
            .collect();
        let latent_sum: f64 = latents.iter().map(|l| l.2).sum();
        latents.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
        latents.truncate(top);
        let bdec: Vec<f32> = sae.b_dec.to_vec1()?;
        let decoder_bias = ro.contribution(&bdec);
        let reconstruction_error = ro.contribution(&err_v);
        let h_l = t.resid.last().expect("lens points");
        let rest_v: Vec<f32> = h_l.iter().zip(&xv).map(|(a, b)| a - b).collect();
        let rest = ro.contribution(&rest_v);
        let reward = t.score as f64;
        let total = latent_sum + decoder_bias + reconstruction_error + rest + ro.bias;
        out.push(SaeDecomposition {
            reward,
            latents,
            latent_sum,
            decoder_bias,
            reconstruction_error,
            rest,
            bias: ro.bias,
            residual: total - reward,
        });
    }
    Ok(out)
}

/// One latent in a features report: its reward alignment and, if asked for, its top examples.
/// (Fields in alphabetical order: the JSON the CLI has always written.)
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatentEntry {
    pub alignment: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub examples: Option<Vec<String>>,
    pub latent: usize,
}

/// Every latent's reward alignment `W_dec[i]·w` (w the scale-free read-out direction), and the
/// `top` most aligned and most anti-aligned latents.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeatureReport {
    pub alignment: Vec<f64>,
    /// Most anti-aligned first.
    pub top_negative: Vec<LatentEntry>,
    /// Most aligned first.
    pub top_positive: Vec<LatentEntry>,
}

impl FeatureReport {
    /// Two lines: the most reward-aligned and the most anti-aligned latents, `latent(±alignment)`.
    pub fn summary(&self) -> String {
        let list = |v: &[LatentEntry]| {
            v.iter().map(|e| format!("{}({:+.3})", e.latent, e.alignment)).collect::<Vec<_>>().join(" ")
        };
        format!(
            "most reward-aligned latents: {}\nmost anti-aligned latents:   {}",
            list(&self.top_positive),
            list(&self.top_negative)
        )
    }
}

/// The model's read-out direction (w_r ⊙ γ, centred for LayerNorm), divided by its scale so it
/// does not depend on the input it was read from.
pub fn reward_direction(model: &reward_lens_engine::RewardModel) -> Result<Vec<f64>> {
    let enc = model.encode("Hello.", "Hi.", reward_lens_engine::Truncation::Error)?;
    let t = crate::trace::trace(model, &[enc.ids], 1, Default::default())?;
    let ro = crate::readout::ReadOut::new(model, &t[0])?;
    Ok(ro.direction.iter().map(|x| x / ro.scale).collect())
}

/// Where top examples come from: a `sae collect` directory and the pairs it was collected from
/// (re-encoded in collection order: chosen, then rejected, per pair, the prompt cut from the
/// left if too long).
pub struct ExampleSource<'a> {
    pub acts: &'a Path,
    pub pairs: &'a [reward_lens_engine::PairText],
}

/// [`FeatureReport`] of `sae` on `model`, with each top latent's three largest activations in
/// `examples` if given.
pub fn features(
    model: &reward_lens_engine::RewardModel,
    sae: &Sae,
    top: usize,
    examples: Option<ExampleSource<'_>>,
) -> Result<FeatureReport> {
    if sae.d_in != model.config.d_model {
        return Err(err(format!("SAE d_in {} ≠ the model's d_model {}", sae.d_in, model.config.d_model)));
    }
    let al = alignment(sae, &reward_direction(model)?)?;
    let Some(src) = examples else {
        return Ok(rank_latents(al, top, |_| None));
    };
    let (manifest, data) = crate::collect::load_all(src.acts)?;
    // Examples are the SAE's latents on these activations: they must be what the SAE reads.
    let acts_at = src.acts.display();
    if manifest.site != sae.hook_name {
        return Err(err(format!(
            "{acts_at}: collected at {}, but the SAE reads {}; collect its examples at the SAE's site",
            manifest.site, sae.hook_name
        )));
    }
    if manifest.d != sae.d_in {
        return Err(err(format!("{acts_at}: activations of width {}, but the SAE's d_in is {}", manifest.d, sae.d_in)));
    }
    if sae.model.as_ref().is_some_and(|m| *m != manifest.model) {
        return Err(err(format!(
            "{acts_at}: collected from another model than the SAE was trained on (model fingerprints {} and {})",
            manifest.model,
            sae.model.as_deref().unwrap_or_default()
        )));
    }
    let mut texts = Vec::new();
    for p in src.pairs {
        for r in [&p.chosen, &p.rejected] {
            texts.push(model.encode(&p.prompt, r, reward_lens_engine::Truncation::DropPromptLeft)?.ids);
        }
    }
    // The shards index texts by number: other pairs would show other texts' tokens.
    if texts.len() < manifest.sequences_done || !crate::collect::same_input(&manifest, texts.iter().map(Vec::as_slice))
    {
        return Err(err(format!(
            "{}: the pairs given are not the texts this collection was made from ({} texts collected, {} given); \
             pass the pairs file given to `sae collect`",
            src.acts.display(),
            manifest.sequences_done,
            texts.len()
        )));
    }
    let index = crate::collect::load_index(src.acts)?;
    let acts: Vec<Vec<f32>> = sae.encode(&data)?.to_vec2()?;
    let tok = &model.tokenizer()?.tokenizer;
    let decode = |ids: &[u32]| tok.decode(ids, false).unwrap_or_default();
    Ok(rank_latents(al, top, |i| Some(latent_examples(&acts, &index, &texts, i, decode))))
}

/// [`FeatureReport`] from each latent's alignment: the `top` largest and smallest, each with
/// `examples(latent)`.
pub fn rank_latents(al: Vec<f64>, top: usize, examples: impl Fn(usize) -> Option<Vec<String>>) -> FeatureReport {
    let mut idx: Vec<usize> = (0..al.len()).collect();
    idx.sort_by(|&x, &y| al[y].total_cmp(&al[x]));
    let entry = |i: usize| LatentEntry { alignment: al[i], examples: examples(i), latent: i };
    // With `top` past half the latents the two lists would meet: a latent is listed once.
    let n_pos = top.min(idx.len());
    let top_positive = idx[..n_pos].iter().map(|&i| entry(i)).collect();
    let top_negative = idx[n_pos..].iter().rev().take(top).map(|&i| entry(i)).collect();
    FeatureReport { alignment: al, top_positive, top_negative }
}

/// A latent's three largest activations (`acts[row][latent]`, rows located by `index` as
/// (text, position)) shown as the text around the token — six tokens before, `⟦token⟧`, three
/// after — decoded by `decode`.
pub fn latent_examples(
    acts: &[Vec<f32>],
    index: &[(u32, u32)],
    texts: &[Vec<u32>],
    latent: usize,
    decode: impl Fn(&[u32]) -> String,
) -> Vec<String> {
    let i = latent;
    let mut rows: Vec<usize> = (0..acts.len()).filter(|&r| acts[r][i] > 0.0).collect();
    rows.sort_by(|&x, &y| acts[y][i].total_cmp(&acts[x][i]));
    rows.iter()
        .take(3)
        .filter_map(|&r| {
            let (s, p) = *index.get(r)?;
            let ids = texts.get(s as usize)?;
            let p = p as usize;
            let dec = |a: usize, b: usize| decode(&ids[a.min(ids.len())..b.min(ids.len())]);
            Some(format!(
                "{:.2}: …{}⟦{}⟧{}…",
                acts[r][i],
                dec(p.saturating_sub(6), p),
                dec(p, p + 1),
                dec(p + 1, p + 4)
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use reward_lens_engine::synth::Rng;

    fn randn(rng: &mut Rng, shape: (usize, usize)) -> Tensor {
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn sae(rng: &mut Rng, d_in: usize, d_sae: usize, architecture: Architecture) -> Sae {
        Sae {
            w_enc: randn(rng, (d_in, d_sae)),
            w_dec: randn(rng, (d_sae, d_in)),
            b_enc: randn(rng, (1, d_sae)).squeeze(0).unwrap(),
            b_dec: randn(rng, (1, d_in)).squeeze(0).unwrap(),
            architecture,
            hook_name: "blocks.1.hook_resid_post".into(),
            model: None,
            apply_b_dec_to_input: true,
            d_in,
            d_sae,
        }
    }

    #[test]
    fn decomposition_summary_names_every_term() {
        let d = SaeDecomposition {
            reward: 1.5,
            latents: vec![],
            latent_sum: 1.0,
            decoder_bias: 0.25,
            reconstruction_error: -0.125,
            rest: 0.5,
            bias: -0.125,
            residual: 1e-7,
        };
        assert_eq!(
            d.summary(),
            "reward +1.5000 = latents +1.0000 + decoder bias +0.2500 + error -0.1250 + rest +0.5000 + bias -0.1250 (residual 1.0e-7)"
        );
    }

    #[test]
    fn latent_examples_are_the_three_largest_in_context() {
        let acts = vec![vec![0.5, 0.0], vec![2.0, 1.0], vec![0.0, 0.0], vec![1.0, 0.0], vec![3.0, 0.0]];
        let index = vec![(0, 7), (0, 2), (1, 0), (1, 1), (5, 0)];
        let texts = vec![(0..10).collect::<Vec<u32>>(), vec![20, 21, 22]];
        let dec = |ids: &[u32]| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        // Row 4 (3.0) names a text that is not there: it takes one of the three places and is
        // dropped, as it always was (so 0.5 stays out).
        let ex = latent_examples(&acts, &index, &texts, 0, dec);
        assert_eq!(ex, vec!["2.00: …0,1⟦2⟧3,4,5…", "1.00: …20⟦21⟧22…"]);
        assert_eq!(latent_examples(&acts, &index, &texts, 1, dec), vec!["1.00: …0,1⟦2⟧3,4,5…"]);
    }

    #[test]
    fn latents_rank_by_alignment_and_serialise_as_before() {
        let r = rank_latents(vec![0.1, -0.5, 0.7, 0.0], 2, |i| (i == 2).then(|| vec!["ex".to_string()]));
        let ids = |v: &[LatentEntry]| v.iter().map(|e| e.latent).collect::<Vec<_>>();
        assert_eq!((ids(&r.top_positive), ids(&r.top_negative)), (vec![2, 0], vec![1, 3]));
        assert_eq!(
            r.summary(),
            "most reward-aligned latents: 2(+0.700) 0(+0.100)\nmost anti-aligned latents:   1(-0.500) 3(+0.000)"
        );
        let j = serde_json::to_string(&r).unwrap();
        assert!(
            j.starts_with(r#"{"alignment":[0.1,-0.5,0.7,0.0],"top_negative":[{"alignment":-0.5,"latent":1}"#),
            "{j}"
        );
        assert!(j.contains(r#"{"alignment":0.7,"examples":["ex"],"latent":2}"#), "{j}");
        // A `top` past half the latents lists each once.
        let r = rank_latents(vec![0.1, -0.5, 0.7, 0.0], 3, |_| None);
        assert_eq!((ids(&r.top_positive), ids(&r.top_negative)), (vec![2, 0, 3], vec![1]));
        let r = rank_latents(vec![0.1, -0.5, 0.7, 0.0], 100, |_| None);
        assert_eq!((ids(&r.top_positive).len(), ids(&r.top_negative).len()), (4, 0));
    }

    #[test]
    fn topk_keeps_exactly_k_and_passes_gradients() {
        let x = Tensor::new(&[[3.0f32, -1.0, 2.0, 0.5, 4.0], [-1.0, -2.0, 0.3, -0.5, -4.0]], &Device::Cpu).unwrap();
        let f = topk_relu(&x, 2).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(f[0], vec![3.0, 0.0, 0.0, 0.0, 4.0]);
        // Only one positive value among the top 2: fewer than k survive the ReLU.
        assert_eq!(f[1], vec![0.0, 0.0, 0.3, 0.0, 0.0]);
        let v = Var::from_tensor(&x).unwrap();
        let loss = topk_relu(v.as_tensor(), 2).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let grad = g.get(v.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(grad[0], vec![1.0, 0.0, 0.0, 0.0, 1.0], "gradient reaches exactly the selected latents");
        assert_eq!(grad[1], vec![0.0, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn save_load_round_trip_and_encode_decode_shapes() {
        let mut rng = Rng::new(4);
        let s = sae(&mut rng, 8, 32, Architecture::TopK { k: 4 });
        let x = randn(&mut rng, (5, 8));
        let f = s.encode(&x).unwrap();
        assert_eq!(f.dims(), &[5, 32]);
        for row in f.to_vec2::<f32>().unwrap() {
            assert!(row.iter().filter(|v| **v != 0.0).count() <= 4);
        }
        assert_eq!(s.decode(&f).unwrap().dims(), &[5, 8]);
        let dir = std::env::temp_dir().join(format!("rl-sae-{}", std::process::id()));
        s.save(&dir).unwrap();
        let back = Sae::load(&dir).unwrap();
        assert!(matches!(back.architecture, Architecture::TopK { k: 4 }));
        assert_eq!(back.hook_name, "blocks.1.hook_resid_post");
        assert_eq!(back.encode(&x).unwrap().to_vec2::<f32>().unwrap(), f.to_vec2::<f32>().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn loads_a_hand_written_saelens_jumprelu_folder() {
        let dir = std::env::temp_dir().join(format!("rl-sae-hand-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cfg.json"), r#"{"architecture": "jumprelu", "d_in": 2, "d_sae": 3, "hook_name": "blocks.0.hook_resid_pre", "dtype": "float32"}"#).unwrap();
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        // Latent i reads input i (and the sum for latent 2); thresholds 0.5, 0.5, 10.
        t.insert("W_enc".to_string(), Tensor::new(&[[1.0f32, 0.0, 1.0], [0.0, 1.0, 1.0]], &dev).unwrap());
        t.insert("W_dec".to_string(), Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0], [0.5, 0.5]], &dev).unwrap());
        t.insert("b_enc".to_string(), Tensor::zeros(3, DType::F32, &dev).unwrap());
        t.insert("b_dec".to_string(), Tensor::zeros(2, DType::F32, &dev).unwrap());
        t.insert("threshold".to_string(), Tensor::new(&[0.5f32, 0.5, 10.0], &dev).unwrap());
        candle_core::safetensors::save(&t, dir.join("sae_weights.safetensors")).unwrap();
        let s = Sae::load(&dir).unwrap();
        assert!(matches!(s.architecture, Architecture::JumpRelu { .. }));
        let f = s.encode(&Tensor::new(&[[2.0f32, 0.3]], &dev).unwrap()).unwrap().to_vec2::<f32>().unwrap();
        // Latent 0: 2.0 > 0.5 kept; latent 1: 0.3 < 0.5 dropped; latent 2: 2.3 < 10 dropped.
        assert_eq!(f[0], vec![2.0, 0.0, 0.0]);
        // Wrong shape is a named error.
        let cfg = |extra: &str, d_in: usize| {
            let text = format!(
                r#"{{"architecture": "jumprelu", "d_in": {d_in}, "d_sae": 3, "hook_name": "blocks.0.hook_resid_pre"{extra}}}"#
            );
            std::fs::write(dir.join("cfg.json"), text).unwrap();
        };
        // Gemma Scope's SAEs read x itself, not x − b_dec.
        t.insert("b_dec".to_string(), Tensor::new(&[1.0f32, 0.0], &dev).unwrap());
        candle_core::safetensors::save(&t, dir.join("sae_weights.safetensors")).unwrap();
        cfg("", 2);
        let x = Tensor::new(&[[2.0f32, 0.3]], &dev).unwrap();
        assert_eq!(Sae::load(&dir).unwrap().encode(&x).unwrap().to_vec2::<f32>().unwrap()[0], vec![1.0, 0.0, 0.0]);
        cfg(r#", "apply_b_dec_to_input": false"#, 2);
        let s = Sae::load(&dir).unwrap();
        assert_eq!(s.encode(&x).unwrap().to_vec2::<f32>().unwrap()[0], vec![2.0, 0.0, 0.0]);
        s.save(&dir).unwrap();
        assert!(!Sae::load(&dir).unwrap().apply_b_dec_to_input, "saved as read");
        // What this SAE cannot honour, and a cfg that does not say what it reads, are refused.
        for (extra, want) in [
            (r#", "normalize_activations": "expected_average_only_in""#, "`normalize_activations`"),
            (r#", "apply_b_dec_to_input": "yes""#, "must be true or false"),
        ] {
            cfg(extra, 2);
            let e = Sae::load(&dir).err().unwrap().to_string();
            assert!(e.contains(want) && e.contains("cfg.json"), "{e}");
        }
        std::fs::write(dir.join("cfg.json"), r#"{"architecture": "jumprelu", "d_in": 2, "d_sae": 3}"#).unwrap();
        let e = Sae::load(&dir).err().unwrap().to_string();
        assert!(e.contains("missing `hook_name`"), "{e}");
        std::fs::write(
            dir.join("cfg.json"),
            r#"{"architecture": "topk", "k": 0, "d_in": 2, "d_sae": 3, "hook_name": "blocks.0.hook_resid_pre"}"#,
        )
        .unwrap();
        let e = Sae::load(&dir).err().unwrap().to_string();
        assert!(e.contains("a whole number from 1 to d_sae (3)"), "{e}");
        cfg("", 3);
        let e = Sae::load(&dir).err().unwrap().to_string();
        assert!(e.contains("W_enc") && e.contains("[3, 3]"), "{e}");
        // So is a NaN weight (an SAE saved from a diverged run elsewhere).
        cfg("", 2);
        t.insert("b_dec".to_string(), Tensor::new(&[0.0f32, f32::NAN], &dev).unwrap());
        candle_core::safetensors::save(&t, dir.join("sae_weights.safetensors")).unwrap();
        let e = Sae::load(&dir).err().unwrap().to_string();
        assert!(e.contains("`b_dec`") && e.contains("non-finite"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
