//! Activation collection for SAE training: one site's activations at chosen positions over many
//! sequences, streamed to disk as safetensors shards (`acts-00000.safetensors`: `activations
//! [N, d]`, `sequence [N]`, `position [N]`), with `manifest.json` recording the shards and how
//! many sequences are done — so collections larger than RAM work, and an interrupted one resumes.
//! The manifest also records what made the activations (the model's fingerprint, the positions
//! kept, a hash of the token ids read so far), so a resumed run cannot silently mix two models or
//! two inputs in one collection, and an SAE trained on it knows its model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use reward_lens_engine::hash::Fnv;
use reward_lens_engine::{Hooks, PaddingSide, Positions, RewardModel, Site};

use crate::{InstrumentError, Result};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub site: String,
    /// The fingerprint of the model collected from, as the caller gave it ("" when unknown).
    #[serde(default)]
    pub model: String,
    /// Which positions were kept (`pooled`, `response` or `all`; "" in older manifests).
    #[serde(default)]
    pub positions: String,
    /// FNV-1a of the token ids of the first `sequences_done` sequences ("" in older manifests):
    /// what the shards' `sequence` indices point into.
    #[serde(default)]
    pub input: String,
    pub d: usize,
    pub shards: Vec<String>,
    /// Sequences fully written (a resumed run continues after them).
    pub sequences_done: usize,
    pub activations: usize,
}

fn err(m: impl Into<String>) -> InstrumentError {
    InstrumentError::Invalid(m.into())
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let tmp = dir.join("manifest.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(m).expect("json"))
        .map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join("manifest.json")).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    Ok(())
}

/// What to collect and how.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    pub site: String,
    pub positions: Positions,
    /// Activations per shard (a shard closes at the next sequence boundary).
    pub shard_rows: usize,
    /// Continue an existing collection of the same site, model, positions and input.
    pub resume: bool,
    /// The model's fingerprint (e.g. `reward_lens_report::fingerprint::model`), recorded in the
    /// manifest and checked on resume; "" records nothing.
    pub model: String,
}

/// Hashes sequences' token ids into `h`, in order, each with its length (so a split between two
/// sequences cannot hash like another split).
pub fn hash_sequences<'a>(h: &mut Fnv, seqs: impl IntoIterator<Item = &'a [u32]>) {
    for ids in seqs {
        h.eat(&(ids.len() as u64).to_le_bytes());
        for id in ids {
            h.eat(&id.to_le_bytes());
        }
    }
}

/// Whether `seqs` (the collection's sequences in order, or more) begin with the sequences the
/// collection in `m` was made from. True for manifests that predate the input hash.
pub fn same_input<'a>(m: &Manifest, seqs: impl IntoIterator<Item = &'a [u32]>) -> bool {
    if m.input.is_empty() {
        return true;
    }
    let mut h = Fnv::new();
    hash_sequences(&mut h, seqs.into_iter().take(m.sequences_done));
    h.hex() == m.input
}

/// The site `collect` would read, or why it cannot: unknown, or not one vector per token (rows are
/// positions). Callers may check before they write anything.
pub fn collectable_site(site: &str) -> Result<Site> {
    let s = Site::parse(site).ok_or_else(|| err(format!("unknown site `{site}`")))?;
    if matches!(s, Site::Pattern(_) | Site::AttnScores(_)) {
        return Err(err(format!(
            "`{site}` is [heads, query, key] per sequence, not one vector per token; collect a per-token site \
             (hook_resid_*, hook_attn_out, hook_mlp_out, mlp.hook_post, attn.hook_z, …)"
        )));
    }
    Ok(s)
}

/// Collects a site over `seqs` (with their response starts) into `dir`; a shard is only recorded
/// in the manifest once complete.
pub fn collect(
    model: &RewardModel,
    seqs: &[(Vec<u32>, usize)],
    dir: &Path,
    opts: &CollectOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Manifest> {
    let (site, positions, shard_rows, resume) = (opts.site.as_str(), opts.positions, opts.shard_rows, opts.resume);
    let s = collectable_site(site)?;
    if shard_rows == 0 {
        return Err(err("shard_rows = 0: a shard holds at least one activation"));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let mpath = dir.join("manifest.json");
    let mut m = if resume && mpath.exists() {
        let m: Manifest = serde_json::from_str(
            &std::fs::read_to_string(&mpath).map_err(|e| err(format!("{}: {e}", mpath.display())))?,
        )
        .map_err(|e| err(format!("{}: {e}", mpath.display())))?;
        let mut differs = Vec::new();
        if m.site != site {
            differs.push(format!("it collects `{}`, not `{site}`", m.site));
        }
        if !m.model.is_empty() && m.model != opts.model {
            differs.push("it was collected from another model (its config, tokenizer or weights differ)".into());
        }
        if !m.positions.is_empty() && m.positions != positions.name() {
            differs.push(format!("it keeps `{}` positions, not `{}`", m.positions, positions.name()));
        }
        if m.sequences_done > seqs.len() {
            differs.push(format!("it holds {} sequences, more than the {} given", m.sequences_done, seqs.len()));
        } else if !same_input(&m, seqs.iter().map(|(ids, _)| ids.as_slice())) {
            differs.push(format!("its first {} sequences are not the texts given now", m.sequences_done));
        }
        if !differs.is_empty() {
            return Err(err(format!(
                "{}: cannot resume: {}; start again without resume, or choose another folder",
                mpath.display(),
                differs.join("; ")
            )));
        }
        m
    } else {
        Manifest {
            site: site.to_string(),
            model: opts.model.clone(),
            positions: positions.name().to_string(),
            ..Default::default()
        }
    };
    // The running hash of the sequences read, continued from the manifest's on resume.
    let mut input = Fnv::resume(&m.input).unwrap_or_default();
    if m.input.is_empty() {
        hash_sequences(&mut input, seqs[..m.sequences_done.min(seqs.len())].iter().map(|(ids, _)| ids.as_slice()));
    }
    let (mut rows, mut seq_idx, mut pos_idx): (Vec<f32>, Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new(), Vec::new());
    let mut pending_from = m.sequences_done;
    let flush = |m: &mut Manifest,
                 rows: &mut Vec<f32>,
                 si: &mut Vec<u32>,
                 pi: &mut Vec<u32>,
                 done: usize,
                 input: &Fnv|
     -> Result<()> {
        if !si.is_empty() {
            let n = si.len();
            let name = format!("acts-{:05}.safetensors", m.shards.len());
            let mut t = HashMap::new();
            t.insert("activations".to_string(), Tensor::from_vec(std::mem::take(rows), (n, m.d), &Device::Cpu)?);
            t.insert("sequence".to_string(), Tensor::from_vec(std::mem::take(si), n, &Device::Cpu)?);
            t.insert("position".to_string(), Tensor::from_vec(std::mem::take(pi), n, &Device::Cpu)?);
            let shard = dir.join(&name);
            candle_core::safetensors::save(&t, &shard)
                .map_err(|e| crate::InstrumentError::Invalid(format!("{}: cannot write: {e}", shard.display())))?;
            m.shards.push(name);
            m.activations += n;
        }
        m.sequences_done = done;
        m.input = input.hex();
        write_manifest(dir, m)
    };
    for (i, (ids, rs)) in seqs.iter().enumerate().skip(m.sequences_done) {
        hash_sequences(&mut input, [ids.as_slice()]);
        let batch = model.batch(std::slice::from_ref(ids), PaddingSide::Right)?;
        let fwd = model.forward(&batch, &Hooks::cache(&[site]))?;
        let x = fwd.cache.site(s).ok_or_else(|| err(format!("`{site}` not produced")))?.get(0)?;
        let x = x.flatten_from(1)?.to_dtype(DType::F32)?;
        m.d = x.dim(1)?;
        let pooled = fwd.output.pooled_index[0];
        let keep: Vec<usize> = match positions {
            Positions::Pooled => vec![pooled],
            Positions::Response => (*rs..=pooled).collect(),
            Positions::All => (0..=pooled).collect(),
        };
        for p in keep {
            rows.extend(x.get(p)?.to_vec1::<f32>()?);
            seq_idx.push(i as u32);
            pos_idx.push(p as u32);
        }
        // A shard closes at a sequence boundary, so `sequences_done` is always exact.
        if seq_idx.len() >= shard_rows {
            flush(&mut m, &mut rows, &mut seq_idx, &mut pos_idx, i + 1, &input)?;
            pending_from = i + 1;
        }
        progress(i + 1, seqs.len());
    }
    if !seq_idx.is_empty() || pending_from < seqs.len() {
        flush(&mut m, &mut rows, &mut seq_idx, &mut pos_idx, seqs.len(), &input)?;
    }
    Ok(m)
}

/// The sequences [`collect`] takes from encoded pairs, in collection order: each pair's chosen,
/// then its rejected side, with its response start.
pub fn sequences(pairs: &[reward_lens_engine::EncodedPair]) -> Vec<(Vec<u32>, usize)> {
    pairs
        .iter()
        .flat_map(|p| [(p.chosen.clone(), p.response_start.0), (p.rejected.clone(), p.response_start.1)])
        .collect()
}

/// Reads every shard of a collection back as one `[N, d]` tensor (for training sets that fit).
pub fn load_all(dir: &Path) -> Result<(Manifest, Tensor)> {
    let mpath = dir.join("manifest.json");
    let m: Manifest =
        serde_json::from_str(&std::fs::read_to_string(&mpath).map_err(|e| err(format!("{}: {e}", mpath.display())))?)
            .map_err(|e| err(format!("{}: {e}", mpath.display())))?;
    let mut parts = Vec::new();
    for s in &m.shards {
        let p: PathBuf = dir.join(s);
        let t = candle_core::safetensors::load(&p, &Device::Cpu).map_err(|e| err(format!("{}: {e}", p.display())))?;
        let a = t.get("activations").ok_or_else(|| err(format!("{}: no `activations`", p.display())))?;
        if a.rank() != 2 || (m.d > 0 && a.dim(1)? != m.d) {
            return Err(err(format!(
                "{}: tensor `activations` has shape {:?}, expected [rows, {}] (the manifest's width)",
                p.display(),
                a.dims(),
                m.d
            )));
        }
        // 0·x is NaN exactly where x is NaN or infinite: one sum finds any.
        let a = a.to_dtype(DType::F32)?;
        if !a.affine(0.0, 0.0)?.sum_all()?.to_scalar::<f32>()?.is_finite() {
            return Err(err(format!("{}: tensor `activations` holds NaN or infinite values", p.display())));
        }
        parts.push(a);
    }
    if parts.is_empty() {
        return Err(err(format!("{}: no activations collected", dir.display())));
    }
    let all = Tensor::cat(&parts, 0)?;
    if m.activations > 0 && all.dim(0)? != m.activations {
        return Err(err(format!(
            "{}: the manifest counts {} activations, its shards hold {}",
            mpath.display(),
            m.activations,
            all.dim(0)?
        )));
    }
    Ok((m, all))
}

/// Where each collected activation came from: (sequence index, position), in row order.
pub fn load_index(dir: &Path) -> Result<Vec<(u32, u32)>> {
    let mpath = dir.join("manifest.json");
    let m: Manifest =
        serde_json::from_str(&std::fs::read_to_string(&mpath).map_err(|e| err(format!("{}: {e}", mpath.display())))?)
            .map_err(|e| err(format!("{}: {e}", mpath.display())))?;
    let mut out = Vec::new();
    for s in &m.shards {
        let p = dir.join(s);
        let t = candle_core::safetensors::load(&p, &Device::Cpu).map_err(|e| err(format!("{}: {e}", p.display())))?;
        let get = |k: &str| -> Result<Vec<u32>> {
            Ok(t.get(k).ok_or_else(|| err(format!("{}: no `{k}`", p.display())))?.to_vec1::<u32>()?)
        };
        out.extend(get("sequence")?.into_iter().zip(get("position")?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_take_chosen_then_rejected_with_their_starts() {
        let pairs = [
            reward_lens_engine::EncodedPair::new(vec![1, 2, 3], vec![1, 4], (2, 1)),
            reward_lens_engine::EncodedPair::new(vec![5], vec![6, 7], (0, 1)),
        ];
        let s = sequences(&pairs);
        assert_eq!(s, vec![(vec![1, 2, 3], 2), (vec![1, 4], 1), (vec![5], 0), (vec![6, 7], 1)]);
    }

    #[test]
    fn sites_and_shard_sizes_that_cannot_be_collected_are_refused() {
        assert!(collectable_site("blocks.1.hook_resid_post").is_ok());
        let e = collectable_site("blocks.1.attn.hook_pattern").unwrap_err().to_string();
        assert!(e.contains("not one vector per token"), "{e}");
        assert!(collectable_site("blocks.x").unwrap_err().to_string().contains("unknown site"));
    }

    #[test]
    fn loading_checks_the_shards_against_the_manifest_and_for_nan() {
        let dir = std::env::temp_dir().join(format!("rl-collect-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |values: &[f32], rows: usize, counted: usize| {
            let t = Tensor::from_vec(values.to_vec(), (rows, values.len() / rows), &Device::Cpu).unwrap();
            let shard: HashMap<String, Tensor> = [("activations".to_string(), t)].into();
            candle_core::safetensors::save(&shard, dir.join("acts-00000.safetensors")).unwrap();
            let m = Manifest {
                site: "blocks.0.hook_resid_post".into(),
                d: 2,
                shards: vec!["acts-00000.safetensors".into()],
                sequences_done: 1,
                activations: counted,
                ..Default::default()
            };
            write_manifest(&dir, &m).unwrap();
        };
        write(&[1.0, 2.0, 3.0, 4.0], 2, 2);
        assert_eq!(load_all(&dir).unwrap().1.dims(), &[2, 2]);
        for bad in [f32::NAN, f32::INFINITY] {
            write(&[1.0, bad, 3.0, 4.0], 2, 2);
            let e = load_all(&dir).unwrap_err().to_string();
            assert!(e.contains("acts-00000.safetensors: tensor `activations` holds NaN"), "{e}");
        }
        write(&[1.0, 2.0, 3.0, 4.0], 2, 999);
        assert!(load_all(&dir).unwrap_err().to_string().contains("counts 999 activations, its shards hold 2"));
        write(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 2);
        assert!(load_all(&dir).unwrap_err().to_string().contains("expected [rows, 2]"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
