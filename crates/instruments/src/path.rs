//! Path patching (one hop): how much of the preference travels from a sender head directly into
//! a receiver. The sender's write into the residual stream under the patch is
//! `Δ = attn_out(head's z from the source) − attn_out(clean)` at its layer (exact, output norms
//! included). The receiver's output is recomputed with `Δ` added to its input only — the
//! residual entering its attention (attention and head receivers) or its MLP (MLP receivers) —
//! and patched into the clean target run, so no other component sees the sender's change.
//! `Downstream` adds `Δ` where every later component sees it: the sender's total effect, equal to
//! patching the head itself. Effects use activation patching's signs (noising: target chosen,
//! source rejected; denoising the reverse).

use candle_core::Tensor;
use serde::Serialize;

use reward_lens_engine::{Action, EncodedPair, Hooks, Intervention, PaddingSide, RewardModel, Site};

use crate::patching::{alignment, Align, PatchMode};
use crate::{InstrumentError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Receiver {
    Attn {
        layer: usize,
    },
    Mlp {
        layer: usize,
    },
    Head {
        layer: usize,
        head: usize,
    },
    /// Everything after the sender (its total effect).
    Downstream,
}

impl std::str::FromStr for Receiver {
    type Err = String;
    /// `attn.L`, `mlp.L`, `head.L.H` or `downstream`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let num = |x: &str| x.parse::<usize>().map_err(|_| format!("receiver `{s}`: `{x}` is not a number"));
        Ok(match parts.as_slice() {
            ["attn", l] => Receiver::Attn { layer: num(l)? },
            ["mlp", l] => Receiver::Mlp { layer: num(l)? },
            ["head", l, h] => Receiver::Head { layer: num(l)?, head: num(h)? },
            ["downstream"] => Receiver::Downstream,
            _ => return Err(format!("receiver `{s}`: expected attn.L, mlp.L, head.L.H, downstream or all")),
        })
    }
}

/// Receivers as a user names them: `all` (alone: every receiver after the sender's layer) or
/// each of `attn.L`, `mlp.L`, `head.L.H`, `downstream`. None, `all` beside other names (which it
/// would swallow unchecked) or a name given twice (a row twice) is an error.
pub fn parse_receivers(
    model: &RewardModel,
    sender_layer: usize,
    names: &[String],
) -> std::result::Result<Vec<Receiver>, String> {
    if names.iter().any(|n| n == "all") {
        if names.len() > 1 {
            return Err(format!("receivers {}: `all` names every receiver; give it alone", names.join(",")));
        }
        return Ok(Receiver::all_after(model, sender_layer));
    }
    if names.is_empty() {
        return Err("receivers: none given (attn.L, mlp.L, head.L.H, downstream or all)".into());
    }
    let mut out: Vec<Receiver> = Vec::with_capacity(names.len());
    for n in names {
        let r: Receiver = n.parse()?;
        if out.contains(&r) {
            return Err(format!("receiver `{n}` given twice"));
        }
        out.push(r);
    }
    Ok(out)
}

/// A sender head written `LAYER.HEAD` (e.g. `0.1`).
pub fn parse_sender(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("sender `{s}`: expected LAYER.HEAD, e.g. 0.1");
    let (l, h) = s.split_once('.').ok_or_else(bad)?;
    Ok((l.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

impl Receiver {
    pub fn name(&self) -> String {
        match self {
            Receiver::Attn { layer } => format!("attn.{layer}"),
            Receiver::Mlp { layer } => format!("mlp.{layer}"),
            Receiver::Head { layer, head } => format!("head.{layer}.{head}"),
            Receiver::Downstream => "downstream".into(),
        }
    }

    /// Every receiver after a head of layer `l`: attention and heads of later layers, MLPs from
    /// layer `l` on (the MLP of the same layer reads the head's write), then `Downstream`.
    pub fn all_after(model: &RewardModel, l: usize) -> Vec<Receiver> {
        let mut v = vec![Receiver::Mlp { layer: l }];
        for r in l + 1..model.config.n_layers {
            v.push(Receiver::Attn { layer: r });
            v.extend((0..model.config.n_heads).map(|h| Receiver::Head { layer: r, head: h }));
            v.push(Receiver::Mlp { layer: r });
        }
        v.push(Receiver::Downstream);
        v
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PathEffect {
    pub receiver: String,
    pub effect: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairPaths {
    pub pair: usize,
    pub original_margin: f64,
    pub paths: Vec<PathEffect>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    pub sender: String,
    pub mode: PatchMode,
    pub pairs: Vec<PairPaths>,
}

fn one(model: &RewardModel, ids: &[u32], hooks: &Hooks) -> Result<(f64, reward_lens_engine::ActivationCache)> {
    let batch = model.batch(&[ids.to_vec()], PaddingSide::Right)?;
    let f = model.forward(&batch, hooks)?;
    Ok((f.output.scores[0] as f64, f.cache))
}

/// Path effects from head `(layer, head)` into each receiver, for every pair.
pub fn path_patch(
    model: &RewardModel,
    pairs: &[EncodedPair],
    sender: (usize, usize),
    receivers: &[Receiver],
    mode: PatchMode,
    align: Align,
) -> Result<PathReport> {
    let report = path_patch_unchecked(model, pairs, sender, receivers, mode, align)?;
    crate::finite::ensure_finite("path patching", &report)?;
    Ok(report)
}

/// Refuses a sender or receiver the model does not have, a receiver that cannot read the
/// sender's output (an earlier or same-layer attention), and modes other than noising and
/// denoising — before any pair is run, so the error is about the options, not a pair.
pub fn check_path(
    config: &reward_lens_engine::ModelConfig,
    sender: (usize, usize),
    receivers: &[Receiver],
    mode: PatchMode,
) -> Result<()> {
    let (ls, hs) = sender;
    let (n, heads) = (config.n_layers, config.n_heads);
    let shape = format!("the model has {n} layers of {heads} heads");
    if ls >= n || hs >= heads {
        return Err(InstrumentError::Invalid(format!("sender head.{ls}.{hs} does not exist ({shape})")));
    }
    if !matches!(mode, PatchMode::Noising | PatchMode::Denoising) {
        return Err(InstrumentError::Invalid("path patching takes noising or denoising".into()));
    }
    for r in receivers {
        let exists = match *r {
            Receiver::Attn { layer } | Receiver::Mlp { layer } => layer < n,
            Receiver::Head { layer, head } => layer < n && head < heads,
            Receiver::Downstream => true,
        };
        if !exists {
            return Err(InstrumentError::Invalid(format!("receiver {} does not exist ({shape})", r.name())));
        }
        let reads = match *r {
            Receiver::Attn { layer } | Receiver::Head { layer, .. } => layer > ls,
            Receiver::Mlp { layer } => layer >= ls,
            Receiver::Downstream => true,
        };
        if !reads {
            return Err(InstrumentError::Invalid(format!(
                "receiver {} does not read head.{ls}.{hs}'s output (attention reads it from layer {} on, an MLP \
                 from layer {ls} on)",
                r.name(),
                ls + 1
            )));
        }
    }
    Ok(())
}

fn path_patch_unchecked(
    model: &RewardModel,
    pairs: &[EncodedPair],
    sender: (usize, usize),
    receivers: &[Receiver],
    mode: PatchMode,
    align: Align,
) -> Result<PathReport> {
    check_path(&model.config, sender, receivers, mode)?;
    let (ls, hs) = sender;
    let mut out = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        let denoise = mode == PatchMode::Denoising;
        let (t, s) = if denoise { (&p.rejected, &p.chosen) } else { (&p.chosen, &p.rejected) };
        let names = ["blocks.*.attn.hook_z", "blocks.*.hook_attn_out", "blocks.*.hook_mlp_out"];
        let (t_side, s_side) = if denoise { ("rejected", "chosen") } else { ("chosen", "rejected") };
        let (r_t, tc) = one(model, t, &Hooks::cache(&names)).map_err(|e| crate::trace::on_pair(e, i, t_side))?;
        let (r_s, sc) = one(model, s, &Hooks::cache(&names)).map_err(|e| crate::trace::on_pair(e, i, s_side))?;
        let (r_c, r_r) = if denoise { (r_s, r_t) } else { (r_t, r_s) };
        let delta_orig = r_c - r_r;
        let pooled_t = model.pooled_index(&model.batch(std::slice::from_ref(t), PaddingSide::Right)?)[0];
        let pooled_s = model.pooled_index(&model.batch(std::slice::from_ref(s), PaddingSide::Right)?)[0];
        let map = alignment(t, s, pooled_t, pooled_s, align);
        let shared = reward_lens_engine::shared_prefix(t, s);
        // The sender head's z from the source, aligned; everything else the target's own.
        let zt = tc.site(Site::Z(ls)).expect("cached").get(0)?;
        let zs = sc.site(Site::Z(ls)).expect("cached").get(0)?;
        let rows = (0..t.len())
            .map(|q| match map[q] {
                Some(j) if q >= shared => zs.get(j),
                _ => zt.get(q),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let z_src = Tensor::stack(&rows, 0)?.unsqueeze(0)?;
        let patch_z = Intervention::new(Site::Z(ls), Action::Replace(z_src)).heads(vec![hs]);
        let (_, pc) = one(model, t, &Hooks::cache(&["blocks.*.hook_attn_out"]).with(patch_z))?;
        let delta = (pc.site(Site::AttnOut(ls)).expect("cached") - tc.site(Site::AttnOut(ls)).expect("cached"))?;
        let effect =
            |r_patched: f64| if denoise { delta_orig - (r_c - r_patched) } else { delta_orig - (r_patched - r_r) };
        let mut paths = Vec::with_capacity(receivers.len());
        for r in receivers {
            let r_patched = match *r {
                Receiver::Downstream => {
                    let add = Intervention::new(Site::AttnOut(ls), Action::Add(delta.clone()));
                    one(model, t, &Hooks::none().with(add))?.0
                }
                Receiver::Attn { layer } | Receiver::Head { layer, .. } | Receiver::Mlp { layer } => {
                    // 1. The receiver's output with Δ added to its input only.
                    let (input, output) = match r {
                        Receiver::Mlp { .. } => (Site::ResidMid(layer), Site::MlpOut(layer)),
                        Receiver::Head { .. } => (Site::ResidPre(layer), Site::Z(layer)),
                        _ => (Site::ResidPre(layer), Site::AttnOut(layer)),
                    };
                    // An MLP of the sender's own layer reads Δ through resid_mid already added.
                    let add = Intervention::new(input, Action::Add(delta.clone()));
                    let (_, rc) = one(model, t, &Hooks::cache(&[output.name()]).with(add))?;
                    let new = rc.site(output).expect("cached").clone();
                    // 2. Only that output changes in the clean run.
                    let mut iv = Intervention::new(output, Action::Replace(new));
                    if let Receiver::Head { head, .. } = r {
                        iv = iv.heads(vec![*head]);
                    }
                    one(model, t, &Hooks::none().with(iv))?.0
                }
            };
            paths.push(PathEffect { receiver: r.name(), effect: effect(r_patched) });
        }
        out.push(PairPaths { pair: i, original_margin: delta_orig, paths });
    }
    Ok(PathReport { sender: format!("head.{ls}.{hs}"), mode, pairs: out })
}
