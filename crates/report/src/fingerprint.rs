//! What made an output: a fingerprint of the model, the options and the input, kept beside the
//! output as `<out>.meta.json`. `--resume` continues a file only when all three match; matching
//! pair ids alone would let a run made with another model or other options be silently extended.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use reward_lens_engine::hash::Fnv;

use crate::ReportError;

/// The three things an output depends on, each as a short stable hash (FNV-1a 64) — except
/// the options, kept verbatim so a mismatch can say what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The command that wrote the output (`score`, `patch`, …).
    pub command: String,
    pub model: String,
    /// Every option that can change the output, as the run saw them.
    pub options: serde_json::Value,
    pub input: String,
    /// With `--shard K/N`: which pairs of the input this output holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::shards::ShardRecord>,
    /// What `merge` needs to recompute the run's aggregates from its shards (the names and seed
    /// the single run's summary uses); null when the output is complete in itself.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub aggregate: serde_json::Value,
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> ReportError {
    let path = path.to_path_buf();
    move |source| ReportError::Io { path, what, source }
}

/// A model folder's fingerprint: its config, tokenizer files and chat template in full, and for
/// each safetensors file its size, its header (names, dtypes, shapes, offsets) and samples of
/// every tensor's data: a tensor of up to 64 KiB in full (a reward head), a larger one by its
/// first, middle and last 4 KiB. Every tensor counts, so a copy with only its head retrained
/// differs (evenly spaced samples of the file missed it); the cost stays milliseconds for a 16 GB
/// checkpoint (3 blocks per tensor). `None` is the embedded example model.
pub fn model(dir: Option<&Path>) -> Result<String, ReportError> {
    let Some(dir) = dir else { return Ok(format!("embedded-example-model-{}", env!("CARGO_PKG_VERSION"))) };
    let mut h = Fnv::new();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        let p = dir.join(f);
        if p.is_file() {
            h.eat(f.as_bytes());
            h.eat(&std::fs::read(&p).map_err(io(&p, "cannot read"))?);
        }
    }
    let mut weights: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir, "cannot list the model folder"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
        .collect();
    weights.sort();
    for p in weights {
        let mut f = std::fs::File::open(&p).map_err(io(&p, "cannot read"))?;
        let len = f.metadata().map_err(io(&p, "cannot read"))?.len();
        h.eat(p.file_name().unwrap_or_default().as_encoded_bytes());
        h.eat(&len.to_le_bytes());
        let mut n = [0u8; 8];
        f.read_exact(&mut n).map_err(io(&p, "cannot read the safetensors header"))?;
        let header_len = u64::from_le_bytes(n).min(len.saturating_sub(8)).min(100 << 20);
        let mut header = vec![0u8; header_len as usize];
        f.read_exact(&mut header).map_err(io(&p, "cannot read the safetensors header"))?;
        h.eat(&header);
        let data_start = 8 + header_len;
        let mut read_at = |at: u64, n: u64| -> Result<(), ReportError> {
            let mut block = vec![0u8; n as usize];
            f.seek(SeekFrom::Start(data_start + at)).map_err(io(&p, "cannot read"))?;
            let got = f.read(&mut block).map_err(io(&p, "cannot read"))?;
            h.eat(&block[..got]);
            Ok(())
        };
        // A header that does not parse samples nothing more: loading the model reports it.
        for (begin, end) in tensor_spans(&header) {
            let n = end.saturating_sub(begin);
            if n <= FULL {
                read_at(begin, n)?;
            } else {
                for at in [begin, begin + (n - BLOCK) / 2, end - BLOCK] {
                    read_at(at, BLOCK)?;
                }
            }
        }
    }
    Ok(h.hex())
}

/// Tensors up to this size are hashed whole; larger ones by three blocks of [`BLOCK`] bytes.
const FULL: u64 = 64 << 10;
const BLOCK: u64 = 4 << 10;

/// The data byte ranges of a safetensors header's tensors, in offset order.
fn tensor_spans(header: &[u8]) -> Vec<(u64, u64)> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(header) else {
        return Vec::new();
    };
    let mut spans: Vec<(u64, u64)> = map
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(_, t)| {
            let o = t.get("data_offsets")?.as_array()?;
            Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?))
        })
        .collect();
    spans.sort_unstable();
    spans
}

/// The fingerprint of input files' bytes, in order (a missing optional input hashes as its name).
pub fn files(paths: &[&Path]) -> Result<String, ReportError> {
    let mut h = Fnv::new();
    for p in paths {
        h.eat(p.as_os_str().as_encoded_bytes().rsplit(|&b| b == b'/').next().unwrap_or_default());
        if p.is_file() {
            h.eat(&std::fs::read(p).map_err(io(p, "cannot read"))?);
        }
    }
    Ok(h.hex())
}

/// Where the fingerprint of `out` lives: `<out>.meta.json`, beside it.
pub fn sidecar(out: &Path) -> PathBuf {
    // `acts/` and `acts` are one output: the sidecar goes beside it, not inside.
    let out: PathBuf = out.components().collect();
    let mut s = out.as_os_str().to_owned();
    s.push(".meta.json");
    PathBuf::from(s)
}

/// Call before opening `out`. Fresh runs (no `resume`, or nothing to resume) record `fp`; a
/// resumed run must find the same fingerprint, else an error says which part differs.
pub fn guard(out: &Path, fp: &Fingerprint, resume: bool) -> Result<(), ReportError> {
    let meta = sidecar(out);
    if resume && out.exists() {
        let text = match std::fs::read_to_string(&meta) {
            Ok(t) => t,
            Err(_) => {
                return Err(ReportError::Invalid(format!(
                    "{}: cannot resume: {} is missing, so nothing says which model, options and input made \
                     this output; run without --resume to start again (the file is replaced)",
                    out.display(),
                    meta.display()
                )))
            }
        };
        let old: Fingerprint = serde_json::from_str(&text)
            .map_err(|e| ReportError::Invalid(format!("{}: not a reward-lens fingerprint: {e}", meta.display())))?;
        let mut differs = Vec::new();
        if old.command != fp.command {
            differs.push(format!("the command differs (`{}` then, `{}` now)", old.command, fp.command));
        }
        if old.model != fp.model {
            differs.push("the model differs (its config, tokenizer or weights)".to_string());
        }
        if old.options != fp.options {
            differs.push(format!("the options differ ({})", options_diff(&old.options, &fp.options)));
        }
        if old.input != fp.input {
            differs.push("the input file's contents differ".to_string());
        }
        if old.shard != fp.shard {
            let name = |s: &Option<crate::shards::ShardRecord>| s.map_or("none".to_string(), |s| s.name());
            differs.push(format!("the shard differs ({} then, {} now)", name(&old.shard), name(&fp.shard)));
        }
        if !differs.is_empty() {
            return Err(ReportError::Invalid(format!(
                "{}: cannot resume: {} from the run that made it (recorded in {}); run without --resume to \
                 start again, or choose another --out",
                out.display(),
                differs.join(", "),
                meta.display()
            )));
        }
        return Ok(());
    }
    let text = serde_json::to_string_pretty(fp)?;
    std::fs::write(&meta, text + "\n").map_err(io(&meta, "cannot write the run's fingerprint"))
}

/// What differs between two runs' options, option by option in the words a user typed
/// (`--mode: noising then, denoising now`), when both are the `{:?}` text of the parsed
/// arguments; else both in full.
pub fn options_diff(then: &serde_json::Value, now: &serde_json::Value) -> String {
    options_diff_as(then, now, ["then", "now"])
}

/// [`options_diff`] with other words than "then" and "now" for the two sides.
pub fn options_diff_as(then: &serde_json::Value, now: &serde_json::Value, [t, n]: [&str; 2]) -> String {
    let full = || format!("{t}: {then}; {n}: {now}");
    let (Some(a), Some(b)) = (then.as_str(), now.as_str()) else { return full() };
    let (a, b) = (debug_leaves(a), debug_leaves(b));
    let mut parts = Vec::new();
    for (k, x) in &a {
        match b.iter().find(|(k2, _)| k2 == k) {
            Some((_, y)) if y != x => parts.push(format!("{}: {} {t}, {} {n}", flag(k), value(x), value(y))),
            None => parts.push(format!("{}: {} {t}, absent {n}", flag(k), value(x))),
            _ => {}
        }
    }
    for (k, y) in &b {
        if !a.iter().any(|(k2, _)| k2 == k) {
            parts.push(format!("{}: absent {t}, {} {n}", flag(k), value(y)));
        }
    }
    if parts.is_empty() {
        return full();
    }
    parts.join("; ")
}

/// A field path of the parsed arguments as the flag that sets it: `run.batch_size` → `--batch-size`.
fn flag(path: &str) -> String {
    format!("--{}", path.rsplit('.').next().unwrap_or(path).replace('_', "-"))
}

/// A `{:?}` value as typed: `Some("x.jsonl")` → `x.jsonl`, `None` → `not given`, an enum variant
/// `DropPromptLeft` → `drop-prompt-left`.
fn value(v: &str) -> String {
    let v = v.trim();
    if v == "None" {
        return "not given".into();
    }
    if let Some(inner) = v.strip_prefix("Some(").and_then(|s| s.strip_suffix(')')) {
        return value(inner);
    }
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        return serde_json::from_str::<String>(v).unwrap_or_else(|_| v[1..v.len() - 1].to_string());
    }
    let variant = v.chars().next().is_some_and(char::is_uppercase) && v.chars().all(char::is_alphanumeric);
    if variant {
        let mut out = String::new();
        for (i, c) in v.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('-');
            }
            out.extend(c.to_lowercase());
        }
        return out;
    }
    v.to_string()
}

/// The leaves of a `{:?}` text of nested structs, by dotted field path (`model.dtype`, `mode`).
fn debug_leaves(text: &str) -> Vec<(String, String)> {
    fn split_top(s: &str) -> Vec<&str> {
        let (mut parts, mut depth, mut quoted, mut escaped, mut start) = (Vec::new(), 0i32, false, false, 0);
        for (i, c) in s.char_indices() {
            if quoted {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => quoted = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => quoted = true,
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(s[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(s[start..].trim());
        parts.into_iter().filter(|p| !p.is_empty()).collect()
    }
    fn walk(prefix: &str, v: &str, out: &mut Vec<(String, String)>) {
        let v = v.trim();
        let is_name = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_' || c == ':');
        if let Some(open) = v.find(" {") {
            if v.ends_with('}') && is_name(&v[..open]) {
                for field in split_top(&v[open + 2..v.len() - 1]) {
                    if let Some((k, x)) = field.split_once(": ") {
                        let path = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
                        walk(&path, x, out);
                    }
                }
                return;
            }
        }
        out.push((prefix.to_string(), v.to_string()));
    }
    let mut out = Vec::new();
    walk("", text, &mut out);
    out
}

/// A path resolved through links; one that does not exist yet by its resolved parent folder and
/// name.
fn resolve(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.canonicalize().ok()?,
        _ => std::env::current_dir().ok()?,
    };
    Some(parent.join(p.file_name()?))
}

/// Refuses an output path (given with `flag`) that is one of the inputs (writing would destroy
/// what is being read). Paths are compared after resolving links.
pub fn not_an_input(flag: &str, out: &Path, inputs: &[(&str, &Path)]) -> Result<(), ReportError> {
    let Some(o) = resolve(out) else { return Ok(()) };
    for (what, p) in inputs {
        if resolve(p).is_some_and(|i| i == o) {
            return Err(ReportError::Invalid(format!(
                "{flag} {} is the {what} ({}): writing there would destroy the input; choose another path",
                out.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// Refuses two outputs of one command at the same path (`--out F --summary F`): the second
/// written would replace the first.
pub fn distinct_outputs(outs: &[(&str, &Path)]) -> Result<(), ReportError> {
    for (i, (flag, out)) in outs.iter().enumerate() {
        let Some(o) = resolve(out) else { continue };
        if let Some((other, _)) = outs[..i].iter().find(|(_, p)| resolve(p).is_some_and(|r| r == o)) {
            return Err(ReportError::Invalid(format!(
                "{flag} {} is also {other}: one output would replace the other; give each its own path",
                out.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_differences_are_named_option_by_option() {
        let text = |mode: &str, pairs: &str| {
            serde_json::json!(format!(
                "PatchArgs {{ model: ModelArgs {{ model: None, device: \"cpu\" }}, pairs: Some(\"{pairs}\"), mode: {mode}, \
                 sizes: [1, 2], batch_size: 16 }}"
            ))
        };
        let (a, b) = (text("Noising", "a, b.jsonl"), text("Denoising", "c.jsonl"));
        assert_eq!(options_diff(&a, &b), "--pairs: a, b.jsonl then, c.jsonl now; --mode: noising then, denoising now");
        assert_eq!(options_diff_as(&a, &b, ["there", "here"]).split("; ").count(), 2);
        // Nested fields by their flag; None as not given; enum variants as typed.
        let t = |m: &str| serde_json::json!(format!("A {{ model: ModelArgs {{ model: {m} }}, how: DropPromptLeft }}"));
        assert_eq!(options_diff(&t("Some(\"x\")"), &t("None")), "--model: x then, not given now");
        assert_eq!(value("DropPromptLeft"), "drop-prompt-left");
        // Not the text of parsed arguments: both in full.
        let (x, y) = (serde_json::json!({"k": 1}), serde_json::json!({"k": 2}));
        assert_eq!(options_diff(&x, &y), r#"then: {"k":1}; now: {"k":2}"#);
    }

    #[test]
    fn every_tensor_counts_in_a_model_fingerprint() {
        let dir = std::env::temp_dir().join(format!("reward-lens-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        // A large tensor first, then a small head at the end of the file.
        let (big, head) = (200_000u64, 256u64);
        let header = format!(
            r#"{{"embed":{{"dtype":"U8","shape":[{big}],"data_offsets":[0,{big}]}},"score.weight":{{"dtype":"U8","shape":[{head}],"data_offsets":[{big},{}]}}}}"#,
            big + head
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        let data_start = bytes.len();
        bytes.extend((0..big + head).map(|i| (i % 251) as u8));
        let file = dir.join("model.safetensors");
        let fp = |b: &[u8]| {
            std::fs::write(&file, b).unwrap();
            model(Some(&dir)).unwrap()
        };
        let base = fp(&bytes);
        assert_eq!(fp(&bytes), base, "deterministic");
        for at in [big + head - 1, big + 100, 0, big / 2, big - 1] {
            let mut changed = bytes.clone();
            changed[data_start + at as usize] ^= 1;
            assert_ne!(fp(&changed), base, "a change at data byte {at} is seen");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fnv_is_the_published_function() {
        // FNV-1a 64 test vectors.
        let mut h = Fnv::new();
        assert_eq!(h.hex(), "cbf29ce484222325");
        h.eat(b"a");
        assert_eq!(h.hex(), "af63dc4c8601ec8c");
    }
}
