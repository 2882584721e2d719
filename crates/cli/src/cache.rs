use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use reward_lens_engine::{Hooks, PaddingSide, SiteFilter, Tensor, Truncation};

use crate::ModelArgs;

#[derive(Args)]
#[command(after_help = "Sites use TransformerLens names; globs work (`*` any run, `?` one character):\n  \
hook_embed, hook_pos_embed, blocks.{l}.hook_resid_pre|mid|post, blocks.{l}.attn.hook_q|k|v|rot_q|rot_k|attn_scores|pattern|z,\n  \
blocks.{l}.hook_attn_out, blocks.{l}.mlp.hook_pre|pre_linear|post, blocks.{l}.hook_mlp_out, ln_final.hook_scale, ln_final.hook_normalized\n\n\
Saved shapes (T = tokens): [T, d] for residual-stream sites, [T, heads, head_dim] for q/k/v/z (k, v: kv heads),\n\
[heads, T, T] for attn_scores/pattern (query, key), [T, d_mlp] for mlp sites, [T, 1] for ln_final.hook_scale.\n\
The file also holds `input_ids` [T] (u32).")]
pub struct CacheArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub response: String,
    /// Sites to save: names or globs, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub sites: Vec<String>,
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
    /// Drop prompt tokens from the left when the conversation exceeds the context.
    #[arg(long)]
    pub truncate_prompt: bool,
}

pub fn run(a: CacheArgs) -> Result<()> {
    if a.out.is_dir() {
        bail!("--out {}: is a directory; name the .safetensors file to write", a.out.display());
    }
    // Checked here: the writer's error would name its temporary file, not --out. (File outputs
    // are not given folders: a mistyped path fails rather than writing somewhere unexpected.)
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
        bail!("--out {}: the folder {} does not exist", a.out.display(), parent.display());
    }
    let model = a.model.load()?;
    let filter = SiteFilter::new(&a.sites);
    let sites = model.resolve_sites(&filter)?;
    if sites.is_empty() {
        bail!("--sites {}: matches no site of this model (try 'blocks.*.hook_resid_post')", a.sites.join(","));
    }
    let truncation = if a.truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };
    let enc = model.encode(&a.prompt, &a.response, truncation)?;
    let batch = model.batch(std::slice::from_ref(&enc.ids), PaddingSide::Right)?;
    let fwd = model.forward(&batch, &Hooks { cache: filter, interventions: Vec::new() })?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in fwd.cache.iter() {
        tensors.insert(name.to_string(), t.squeeze(0)?.contiguous()?);
    }
    let n = enc.ids.len();
    tensors.insert("input_ids".into(), Tensor::from_vec(enc.ids.clone(), n, &reward_lens_engine::Device::Cpu)?);
    candle_core::safetensors::save(&tensors, &a.out).with_context(|| format!("{}: cannot write", a.out.display()))?;
    eprintln!(
        "reward {:.6} at token {} of {n}; saved {} sites to {}",
        fwd.output.scores[0],
        fwd.output.pooled_index[0],
        fwd.cache.len(),
        a.out.display()
    );
    for (name, t) in fwd.cache.iter() {
        eprintln!("  {name:<36} {:?}", &t.dims()[1..]);
    }
    Ok(())
}
