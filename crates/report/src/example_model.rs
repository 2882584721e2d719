//! The model `--model` (and `reward_lens_rs.load()`) falls back to: a small Llama reward model
//! compiled into the library, so the first command a newcomer runs needs no download. It is unpacked once into a cache
//! directory and then loaded like any HuggingFace directory (one loader, no special path).

use std::path::PathBuf;

use crate::error::{ReportError, Result};

const FILES: &[(&str, &[u8])] = &[
    ("config.json", include_bytes!("../../../tests/fixtures/models/llama/config.json")),
    ("model.safetensors", include_bytes!("../../../tests/fixtures/models/llama/model.safetensors")),
    ("tokenizer.json", include_bytes!("../../../tests/fixtures/models/llama/tokenizer.json")),
    ("tokenizer_config.json", include_bytes!("../../../tests/fixtures/models/llama/tokenizer_config.json")),
    ("chat_template.jinja", include_bytes!("../../../tests/fixtures/models/llama/chat_template.jinja")),
];

/// What the embedded model is, for `--help` and logs.
pub const DESCRIPTION: &str = "embedded example model (3-layer Llama reward model, d_model 64, from the test fixtures)";

/// Unpacks the embedded model (if needed) and returns its directory.
pub fn dir() -> Result<PathBuf> {
    let base = std::env::var_os("REWARD_LENS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("reward-lens")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/reward-lens")))
        .unwrap_or_else(|| std::env::temp_dir().join("reward-lens"));
    let dir = base.join(format!("default-model-{}", env!("CARGO_PKG_VERSION")));
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, "cannot create the cache directory", e))?;
    for (name, bytes) in FILES {
        let p = dir.join(name);
        let fresh = std::fs::metadata(&p).map(|m| m.len() == bytes.len() as u64).unwrap_or(false);
        if !fresh {
            // Write then rename, so a concurrent run never sees half a file.
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, "cannot write", e))?;
            std::fs::rename(&tmp, &p).map_err(|e| io(&p, "cannot write", e))?;
        }
    }
    Ok(dir)
}

fn io(path: &std::path::Path, what: &'static str, source: std::io::Error) -> ReportError {
    ReportError::Io { path: path.to_path_buf(), what, source }
}
