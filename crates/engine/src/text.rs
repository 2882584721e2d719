//! Text → token ids: the model's chat template rendered once by a real Jinja engine (with
//! transformers' `trim_blocks` / `lstrip_blocks`), then encoded without adding special tokens a
//! second time, so there is exactly one BOS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;
use serde_json::Value;
use std::str::FromStr;

use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};
use crate::missing_specials::AddedSpecial;

/// The format used when a model ships no chat template (the Python peer's plain format). It is
/// encoded with the tokenizer's own special tokens (its post-processor may add a BOS).
pub const PLAIN_FORMAT: &str = "User: {prompt}\nAssistant: {response}";

/// What to do when a conversation is longer than the model's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Refuse (the default): a reward on a silently shortened text is a different reward.
    #[default]
    Error,
    /// Drop prompt tokens from the left (after a leading BOS); the response is never cut.
    DropPromptLeft,
}

/// One encoded (prompt, response) conversation.
#[derive(Debug, Clone, Serialize)]
pub struct Encoded {
    /// The rendered text (before any truncation).
    pub text: String,
    pub ids: Vec<u32>,
    /// Index of the first token of the response.
    pub response_start: usize,
    /// Prompt tokens dropped by `Truncation::DropPromptLeft`.
    pub dropped: usize,
}

pub struct ChatTokenizer {
    pub tokenizer: Tokenizer,
    template: Option<(String, String)>,
    /// Every special token transformers puts into the template context, by name.
    special_tokens: BTreeMap<String, String>,
    /// What reading the special tokens noticed (see [`ChatTokenizer::warnings`]).
    notes: Vec<String>,
    /// Special tokens tokenizer.json lacked, added as transformers adds them.
    added: Vec<AddedSpecial>,
    pub max_tokens: usize,
    /// What sets `max_tokens`, for the error that refuses a longer input.
    pub max_tokens_source: &'static str,
}

/// The context limit's source when it is the model's own.
pub const MODEL_CONTEXT: &str = "the model's context";
/// The context limit's source when tokenizer_config.json's `model_max_length` is smaller.
pub const MODEL_MAX_LENGTH: &str = "tokenizer_config.json's `model_max_length`";

/// A special token as `tokenizer_config.json` writes it: a string, or an added-token object with
/// its `content`; absent or null is no token. Anything else is an error (read as absent, the
/// template would silently render without it).
fn token_string(cfg: &Value, key: &str, path: &Path) -> Result<Option<String>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) if o.get("content").is_some_and(Value::is_string) => {
            Ok(o.get("content").and_then(|c| c.as_str()).map(str::to_string))
        }
        Some(other) => Err(EngineError::ConfigField {
            path: path.to_path_buf(),
            field: key.into(),
            message: format!("expected a token string (or an object with its `content`), found {other}"),
        }),
    }
}

/// The named special tokens of transformers' tokenizers (`SPECIAL_TOKENS_ATTRIBUTES`); the
/// chat template sees each one that is set.
pub(crate) const SPECIAL_TOKEN_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// A model-specific special token (`image_token`, or an entry of an `extra_special_tokens` object):
/// transformers takes a string, or an object it reads as an AddedToken. `added_token_object` says
/// which objects count (`any_object`): in tokenizer_config.json only those tagged `"__type": "AddedToken"`, in
/// special_tokens_map.json any object with a `content`.
pub(crate) fn extra_token(v: &Value, any_object: bool) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) if any_object || o.get("__type").and_then(Value::as_str) == Some("AddedToken") => {
            o.get("content").and_then(Value::as_str).map(str::to_string)
        }
        _ => None,
    }
}

/// The special tokens a tokenizer class of transformers 5 defaults to (its `__init__`'s keyword
/// defaults), for the classes it instantiates here: where tokenizer_config.json leaves one out, the
/// class's stands (Qwen2Tokenizer's `unk_token` is `<|endoftext|>` unless the file says otherwise).
fn class_defaults(class: Option<&str>) -> &'static [(&'static str, &'static str)] {
    const EOT: &str = "<|endoftext|>";
    match class {
        Some("Qwen2Tokenizer") => &[("unk_token", EOT), ("eos_token", EOT), ("pad_token", EOT)],
        Some("GPT2Tokenizer") => &[("unk_token", EOT), ("bos_token", EOT), ("eos_token", EOT)],
        Some("GemmaTokenizer") => &[
            ("unk_token", "<unk>"),
            ("bos_token", "<bos>"),
            ("eos_token", "<eos>"),
            ("pad_token", "<pad>"),
            ("mask_token", "<mask>"),
        ],
        Some("LlamaTokenizer") => &[("unk_token", "<unk>"), ("bos_token", "<s>"), ("eos_token", "</s>")],
        _ => &[],
    }
}

/// The special tokens the chat template sees, as transformers 5 reads them: the named ones and
/// any other `*_token` string (or `extra_special_tokens` object entry) of tokenizer_config.json;
/// then, only when tokenizer_config.json has no `added_tokens_decoder`, special_tokens_map.json
/// on top, its values winning (transformers' legacy path; a `null` there unsets the token).
/// Returns the tokens and notes on where the two files disagree.
/// `stm` is special_tokens_map.json's path and text, where the file exists.
fn special_tokens(
    stm: Option<(&Path, &str)>,
    cfg: &Value,
    cfg_path: &Path,
    defaults: &[(&str, &str)],
) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    // The class's own defaults stand where tokenizer_config.json does not name the token at all
    // (an explicit null unsets it, as in transformers).
    let mut tokens: BTreeMap<String, String> =
        defaults.iter().filter(|(k, _)| cfg.get(*k).is_none()).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut notes = Vec::new();
    if let Some(obj) = cfg.as_object() {
        for (key, v) in obj {
            if SPECIAL_TOKEN_NAMES.contains(&key.as_str()) {
                if let Some(t) = token_string(cfg, key, cfg_path)? {
                    tokens.insert(key.clone(), t);
                }
            } else if key.ends_with("_token") {
                if let Some(t) = extra_token(v, false) {
                    tokens.insert(key.clone(), t);
                }
            }
        }
        if let Some(Value::Object(named)) = obj.get("extra_special_tokens") {
            for (key, v) in named {
                if let Some(t) = extra_token(v, false) {
                    tokens.insert(key.clone(), t);
                }
            }
        }
    }
    let Some((stm_path, stm_text)) = stm else { return Ok((tokens, notes)) };
    let stm_path = stm_path.to_path_buf();
    let stm: Value = serde_json::from_str(stm_text)
        .map_err(|e| EngineError::Json { path: stm_path.clone(), message: e.to_string() })?;
    let Some(stm_obj) = stm.as_object() else {
        return Err(EngineError::Json { path: stm_path, message: "expected a JSON object".into() });
    };
    let mut entries: Vec<(String, Option<String>)> = Vec::new();
    for (key, v) in stm_obj {
        if SPECIAL_TOKEN_NAMES.contains(&key.as_str()) {
            entries.push((key.clone(), token_string(&stm, key, &stm_path)?));
        } else if key.ends_with("_token") {
            if let Some(t) = extra_token(v, true) {
                entries.push((key.clone(), Some(t)));
            }
        } else if key == "extra_special_tokens" {
            if let Value::Object(named) = v {
                entries.extend(named.iter().filter_map(|(k, v)| Some((k.clone(), Some(extra_token(v, true)?)))));
            }
        }
    }
    let show = |t: Option<&String>| t.map_or("nothing".to_string(), |t| format!("{t:?}"));
    let legacy = cfg.get("added_tokens_decoder").is_none();
    for (key, value) in entries {
        let before = tokens.get(&key);
        if before == value.as_ref() {
            continue;
        }
        // Where tokenizer_config.json does not name the token, `before` is the class's default.
        let was = match cfg.get(&key) {
            Some(_) => format!("tokenizer_config.json to {}", show(before)),
            None if before.is_some() => format!("the tokenizer class defaults to {}", show(before)),
            None => "tokenizer_config.json to nothing".to_string(),
        };
        if legacy {
            if before.is_some() && cfg.get(&key).is_some() {
                notes.push(format!(
                    "special_tokens_map.json sets `{key}` to {}, {was}: using special_tokens_map.json's, \
                     as transformers does",
                    show(value.as_ref()),
                ));
            }
            match value {
                Some(t) => tokens.insert(key, t),
                None => tokens.remove(&key),
            };
        } else {
            let using = if cfg.get(&key).is_some() || before.is_none() {
                "tokenizer_config.json's (it has"
            } else {
                "the default (tokenizer_config.json has"
            };
            notes.push(format!(
                "special_tokens_map.json sets `{key}` to {}, {was}: using {using} added_tokens_decoder, so \
                 transformers does not read special_tokens_map.json)",
                show(value.as_ref()),
            ));
        }
    }
    Ok((tokens, notes))
}

/// The flags of an added token, as transformers' `AddedToken` defaults them.
const ADDED_TOKEN_FLAGS: [&str; 5] = ["single_word", "lstrip", "rstrip", "normalized", "special"];

/// transformers 5 re-adds every `added_tokens_decoder` entry of tokenizer_config.json whose flags
/// (lstrip, rstrip, normalized, single_word, special) differ from tokenizer.json's `added_tokens`,
/// so the config's flags win, keeping tokenizer.json's id for that content. Done here by editing
/// tokenizer.json's text before loading it. An entry whose content tokenizer.json does not list
/// would become a new token in transformers; that is refused.
fn apply_added_tokens_decoder(
    tok_text: String,
    cfg: &Value,
    cfg_path: &Path,
    tok_path: &Path,
) -> Result<(String, Vec<String>)> {
    let Some(decoder) = cfg.get("added_tokens_decoder") else { return Ok((tok_text, Vec::new())) };
    let field = |message: String| EngineError::ConfigField {
        path: cfg_path.to_path_buf(),
        field: "added_tokens_decoder".into(),
        message,
    };
    let Some(decoder) = decoder.as_object() else {
        return Err(field(format!("expected an object of id → token, found {decoder}")));
    };
    let mut tok: Value = serde_json::from_str(&tok_text)
        .map_err(|e| EngineError::Tokenizer { path: tok_path.to_path_buf(), message: e.to_string() })?;
    let Some(added) = tok.get_mut("added_tokens").and_then(Value::as_array_mut) else {
        return Err(EngineError::Tokenizer { path: tok_path.to_path_buf(), message: "no added_tokens list".into() });
    };
    let mut notes = Vec::new();
    let mut changed = false;
    for (id, entry) in decoder {
        let content = entry
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| field(format!("entry {id}: expected an object with a string `content`, found {entry}")))?;
        let special = entry.get("special").and_then(Value::as_bool).unwrap_or(false);
        let mut flags = Vec::new();
        for name in ADDED_TOKEN_FLAGS {
            let value = match entry.get(name) {
                // Python's AddedToken defaults: normalized = not special, the rest false.
                None | Some(Value::Null) => name == "normalized" && !special,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(field(format!(
                        "entry {id} ({content:?}): `{name}` must be true or false, found {other}"
                    )))
                }
            };
            flags.push((name, value));
        }
        let Some(target) = added.iter_mut().find(|t| t.get("content").and_then(Value::as_str) == Some(content)) else {
            return Err(field(format!(
                "entry {id} ({content:?}) is not among {}'s added_tokens; transformers would add it to the \
                 vocabulary as a new token, which reward-lens does not do",
                tok_path.display()
            )));
        };
        let differing: Vec<String> = flags
            .iter()
            .filter(|(name, v)| target.get(*name).and_then(Value::as_bool) != Some(*v))
            .map(|(name, v)| format!("{name}={v}"))
            .collect();
        if !differing.is_empty() {
            notes.push(format!(
                "tokenizer_config.json's added_tokens_decoder gives {content:?} {} where tokenizer.json's added_tokens \
                 differ: using tokenizer_config.json's, as transformers does",
                differing.join(", ")
            ));
            for (name, v) in flags {
                target[name] = Value::Bool(v);
            }
            changed = true;
        }
    }
    if !changed {
        return Ok((tok_text, notes));
    }
    Ok((serde_json::to_string(&tok).expect("a JSON value serializes"), notes))
}

/// transformers 5 rebuilds the normalizer and pre-tokenizer of some named tokenizer classes in
/// their `__init__`, whatever tokenizer.json says (the class is `tokenizer_class`, or comes from
/// `model_type` when that is absent). LlamaTokenizer's rebuild is copied (`llama_pipeline`, which
/// returns the edited tokenizer.json text); for the others, where tokenizer.json's pipeline is not
/// already the one the class builds, ids would differ: refused, naming the class and what
/// transformers builds. (Qwen2Tokenizer is rebuilt for real, by `qwen2_pretokenizer`.)
fn class_pipeline(
    class: &str,
    model_type: Option<&str>,
    cfg: &Value,
    tok_text: String,
    cfg_path: &Path,
    tok_path: &Path,
) -> Result<(String, Option<&'static str>)> {
    let (name, from_type) = match (class.strip_suffix("Fast").unwrap_or(class), model_type) {
        ("", Some("gemma" | "gemma2")) => ("GemmaTokenizer", true),
        ("", Some("gpt2")) => ("GPT2Tokenizer", true),
        // transformers keeps a model_type llama tokenizer.json as written, and a LlamaTokenizer
        // class with model_type mistral too (it falls back to TokenizersBackend).
        ("LlamaTokenizer", Some("mistral")) => return Ok((tok_text, None)),
        ("GemmaTokenizer", _) => ("GemmaTokenizer", false),
        ("GPT2Tokenizer", _) => ("GPT2Tokenizer", false),
        ("LlamaTokenizer", _) => ("LlamaTokenizer", false),
        ("CodeLlamaTokenizer", _) => ("CodeLlamaTokenizer", false),
        ("CohereTokenizer", _) => ("CohereTokenizer", false),
        _ => return Ok((tok_text, None)),
    };
    let mut tok: Value = serde_json::from_str(&tok_text)
        .map_err(|e| EngineError::Tokenizer { path: tok_path.to_path_buf(), message: e.to_string() })?;
    let (normalizer, pre) = (&tok["normalizer"], &tok["pre_tokenizer"]);
    let is_type = |v: &Value, t: &str| v.get("type").and_then(Value::as_str) == Some(t);
    let byte_level = is_type(pre, "ByteLevel")
        || pre["pretokenizers"].as_array().is_some_and(|l| l.iter().any(|p| is_type(p, "ByteLevel")));
    let flag = |key: &str| cfg.get(key).and_then(Value::as_bool);
    let builds: Option<String> = match name {
        // A byte-level tokenizer.json is kept as written (transformers falls back to TokenizersBackend).
        "LlamaTokenizer" if byte_level => return Ok((tok_text, None)),
        "LlamaTokenizer" => {
            llama_pipeline(class, cfg, &mut tok, cfg_path, tok_path)?;
            return Ok((serde_json::to_string(&tok).expect("a JSON value serializes"), Some(name)));
        }
        "GemmaTokenizer" => {
            let replace = is_type(normalizer, "Replace")
                && normalizer["pattern"]["String"] == " "
                && normalizer["content"] == "▁";
            // After that normalizer no space is left, so Gemma's split on " " changes nothing.
            let same = replace
                && (pre.is_null()
                    || (is_type(pre, "Split")
                        && pre["pattern"]["String"] == " "
                        && pre["behavior"] == "MergedWithPrevious"));
            (!same).then(|| "a Replace(\" \", \"▁\") normalizer and a Split(\" \") pre-tokenizer".to_string())
        }
        "GPT2Tokenizer" => {
            let prefix = flag("add_prefix_space").unwrap_or(false);
            let same = normalizer.is_null()
                && is_type(pre, "ByteLevel")
                && pre["add_prefix_space"].as_bool().unwrap_or(false) == prefix
                && pre["use_regex"].as_bool().unwrap_or(true);
            (!same).then(|| format!("no normalizer and GPT-2's ByteLevel pre-tokenizer with add_prefix_space={prefix}"))
        }
        _ => Some("its own pipeline".to_string()),
    };
    let Some(builds) = builds else { return Ok((tok_text, Some(name))) };
    let source = if from_type {
        format!("no tokenizer_class, and model_type {} maps to {name}", model_type.unwrap_or_default())
    } else {
        class.to_string()
    };
    Err(EngineError::ConfigField {
        path: cfg_path.to_path_buf(),
        field: "tokenizer_class".into(),
        message: format!(
            "{source}: transformers 5 rebuilds that tokenizer with {builds}, ignoring {}'s normalizer and \
             pre-tokenizer, which differ; not supported (write tokenizer.json with that pipeline, or set \
             tokenizer_class to PreTrainedTokenizerFast if the file is what the model was trained with)",
            tok_path.display()
        ),
    })
}

/// What transformers 5's `LlamaTokenizer.__init__` builds from a non-byte-level tokenizer.json
/// (the `Fast` name is an alias of it): the file's BPE vocab and merges in a new
/// `BPE(fuse_unk=True, byte_fallback=True)` (no unk token, no dropout), no normalizer, a Metaspace
/// pre-tokenizer whose prepend scheme comes from `add_prefix_space` (default true) and `legacy`
/// (default false): "first", "always" with legacy, "never" without the prefix space; and the
/// Replace/ByteFallback/Fuse(/Strip) decoder. The file's added tokens and post-processor are kept,
/// as transformers keeps them. Done on the JSON before loading, so that added tokens are matched
/// against the new (absent) normalizer, as in transformers, which adds them to the rebuilt tokenizer.
fn llama_pipeline(class: &str, cfg: &Value, tok: &mut Value, cfg_path: &Path, tok_path: &Path) -> Result<()> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::replace::Replace;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::DecoderWrapper;
    // Python reads a null as its default (`add_prefix_space=None` means true; `legacy=None` is
    // falsy, so "first"); any other non-boolean would be read by truthiness: refused.
    let flag = |key: &str, default: bool| match cfg.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(EngineError::ConfigField {
            path: cfg_path.to_path_buf(),
            field: key.into(),
            message: format!("expected true or false (read by {class}), found {other}"),
        }),
    };
    let add_prefix_space = flag("add_prefix_space", true)?;
    let legacy = flag("legacy", false)?;
    let model_type = tok["model"]["type"].as_str().unwrap_or("none");
    if model_type != "BPE" || !tok["model"]["vocab"].is_object() {
        // transformers would build a BPE from this vocabulary without its scores or merges.
        return Err(EngineError::ConfigField {
            path: cfg_path.to_path_buf(),
            field: "tokenizer_class".into(),
            message: format!(
                "{class}: transformers 5 rebuilds that tokenizer as a BPE model from {}'s vocab and merges, \
                 but the file's model is {model_type}, not BPE; not supported",
                tok_path.display()
            ),
        });
    }
    let scheme = match (add_prefix_space, legacy) {
        (false, _) => PrependScheme::Never,
        (true, true) => PrependScheme::Always,
        (true, false) => PrependScheme::First,
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").expect("a plain string pattern").into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if add_prefix_space {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let json = |v: serde_json::Result<Value>| v.expect("a tokenizers component serializes");
    let model = &mut tok["model"];
    for (key, value) in [
        ("dropout", Value::Null),
        ("unk_token", Value::Null),
        ("continuing_subword_prefix", Value::Null),
        ("end_of_word_suffix", Value::Null),
        ("fuse_unk", Value::Bool(true)),
        ("byte_fallback", Value::Bool(true)),
        ("ignore_merges", Value::Bool(false)),
    ] {
        model[key] = value;
    }
    tok["normalizer"] = Value::Null;
    tok["pre_tokenizer"] = json(serde_json::to_value(Metaspace::new('▁', scheme, false)));
    tok["decoder"] = json(serde_json::to_value(DecoderWrapper::from(Sequence::new(decoders))));
    Ok(())
}

/// Qwen2's pre-tokenizer split (digits one by one, letters with one leading non-letter).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// transformers 5 builds the Qwen2 tokenizer's normalizer and pre-tokenizer itself (NFC, then
/// the Qwen2 split, then byte-level without its own regex), whatever tokenizer.json says. Real
/// Qwen2 tokenizer.json files already say exactly this, so doing it here changes nothing for
/// them and matches transformers for files written otherwise.
fn qwen2_pretokenizer(tokenizer: &mut Tokenizer, path: &Path) -> Result<()> {
    use tokenizers::normalizers::unicode::NFC;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::SplitDelimiterBehavior;
    let split = Split::new(SplitPattern::Regex(QWEN2_SPLIT.to_string()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| EngineError::Tokenizer { path: path.to_path_buf(), message: e.to_string() })?;
    let byte_level = ByteLevel::new(false, false, false);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])));
    tokenizer.with_normalizer(Some(NFC));
    Ok(())
}

/// Instructions one rendering may run (a real chat template needs a few thousand for a pair).
const TEMPLATE_FUEL: u64 = 5_000_000;
/// Nesting depth one rendering may reach (minijinja counts a macro call as several levels).
const TEMPLATE_RECURSION: usize = 100;
/// Bytes one rendering may write (the conversation itself plus the template's text).
const TEMPLATE_MAX_OUTPUT: usize = 64 << 20;

/// Collects rendered output up to [`TEMPLATE_MAX_OUTPUT`], then fails the write.
struct CappedWriter(Vec<u8>);

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > TEMPLATE_MAX_OUTPUT {
            return Err(std::io::Error::other("template output limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const SENTINEL_PROMPT: &str = "\u{E000}";
const SENTINEL_RESPONSE: &str = "\u{E001}";

impl ChatTokenizer {
    /// What loading noticed: where special_tokens_map.json and tokenizer_config.json disagree, and
    /// a chat template that uses a named special token (`bos_token`, `pad_token`, …) that neither
    /// file defines: it renders as empty text (in transformers too), so every sequence lacks it.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self.notes.clone();
        if let Some((_, source)) = &self.template {
            out.extend(self.undefined_specials().map(|name| {
                format!(
                    "the chat template ({source}) uses `{name}`, which neither tokenizer_config.json nor \
                     special_tokens_map.json defines: it renders as empty text"
                )
            }));
        }
        out
    }

    /// The named special tokens the template mentions that neither file defines.
    fn undefined_specials(&self) -> impl Iterator<Item = &'static str> + '_ {
        let text = self.template.as_ref().map_or("", |t| t.0.as_str());
        SPECIAL_TOKEN_NAMES
            .into_iter()
            .filter(move |name| !self.special_tokens.contains_key(*name) && text.contains(name))
    }

    /// Loads `tokenizer.json`, and the chat template from `chat_template.jinja` or the
    /// `chat_template` field of `tokenizer_config.json`.
    pub fn from_dir(dir: &Path, max_tokens: usize, model_type: Option<&str>) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(EngineError::Tokenizer { path: tok_path, message: "file not found".into() });
        }
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg_text =
            if cfg_path.symlink_metadata().is_ok() { Some(crate::weights::read_text(&cfg_path)?) } else { None };
        let cfg: Value = match &cfg_text {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| EngineError::Json { path: cfg_path.clone(), message: e.to_string() })?,
            None => Value::Null,
        };
        crate::weights::bounded_file(&tok_path, crate::weights::MAX_TOKENIZER_FILE)?;
        let tok_text = std::fs::read_to_string(&tok_path).map_err(crate::error::io_err(&tok_path))?;
        let (tok_text, mut notes) = apply_added_tokens_decoder(tok_text, &cfg, &cfg_path, &tok_path)?;
        let class = cfg.get("tokenizer_class").and_then(|c| c.as_str()).unwrap_or("");
        let (tok_text, mut built_class) = class_pipeline(class, model_type, &cfg, tok_text, &cfg_path, &tok_path)?;
        let mut tokenizer = Tokenizer::from_str(&tok_text)
            .map_err(|e| EngineError::Tokenizer { path: tok_path.clone(), message: e.to_string() })?;
        // transformers turns off a saved `truncation` / `padding` block unless a call asks for it;
        // applied here, a file saved after a truncating call would cut every conversation.
        // (Over-long input is handled by max_tokens and Truncation.)
        tokenizer
            .with_truncation(None)
            .map_err(|e| EngineError::Tokenizer { path: tok_path.clone(), message: e.to_string() })?;
        tokenizer.with_padding(None);
        // `split_special_tokens: true`: transformers encodes special-token strings (the template's
        // own `<s>` too) as plain text, which is what the tokenizer's encode_special_tokens does.
        match cfg.get("split_special_tokens") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => tokenizer.set_encode_special_tokens(true),
            Some(other) => {
                return Err(EngineError::ConfigField {
                    path: cfg_path.clone(),
                    field: "split_special_tokens".into(),
                    message: format!("expected true or false, found {other}"),
                })
            }
        }
        // transformers maps model_type qwen3 (without a tokenizer_class) to Qwen2Tokenizer too.
        if model_type == Some("qwen2")
            || class.starts_with("Qwen2Tokenizer")
            || (class.is_empty() && model_type == Some("qwen3"))
        {
            qwen2_pretokenizer(&mut tokenizer, &tok_path)?;
            built_class = Some("Qwen2Tokenizer");
        }
        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.symlink_metadata().is_ok() {
            Some((crate::weights::read_text(&jinja)?, jinja.display().to_string()))
        } else {
            let field = |message: String| EngineError::ConfigField {
                path: cfg_path.clone(),
                field: "chat_template".into(),
                message,
            };
            match cfg.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some((s.clone(), format!("{}: chat_template", cfg_path.display()))),
                // A list of named templates: take "default".
                Some(Value::Array(list)) => {
                    fn named(t: &Value) -> Option<(&str, &str)> {
                        Some((t.get("name")?.as_str()?, t.get("template")?.as_str()?))
                    }
                    let entries = list.iter().map(named).collect::<Option<Vec<_>>>().ok_or_else(|| {
                        field("expected a list of {\"name\": …, \"template\": …} objects with string values".into())
                    })?;
                    match entries.iter().find(|(n, _)| *n == "default") {
                        Some((_, t)) => {
                            Some((t.to_string(), format!("{}: chat_template[default]", cfg_path.display())))
                        }
                        None => {
                            let names: Vec<&str> = entries.iter().map(|e| e.0).collect();
                            return Err(field(format!(
                                "a list of named templates without one named \"default\" (found: {})",
                                names.join(", ")
                            )));
                        }
                    }
                }
                Some(other) => {
                    let kind = match other {
                        Value::Bool(_) => "a boolean",
                        Value::Number(_) => "a number",
                        _ => "an object",
                    };
                    return Err(field(format!(
                        "expected a Jinja template string or a list of named templates, found {kind}"
                    )));
                }
            }
        };
        let (mut max, mut max_source) = (max_tokens, MODEL_CONTEXT);
        // A zero limit would refuse every input with a message that never names its source.
        if cfg.get("model_max_length").and_then(|m| m.as_u64()) == Some(0) {
            return Err(EngineError::ConfigField {
                path: cfg_path.clone(),
                field: "model_max_length".into(),
                message: "must be positive, found 0".into(),
            });
        }
        if let Some(m) = cfg.get("model_max_length").and_then(|m| m.as_u64()) {
            if (m as usize) < max {
                (max, max_source) = (m as usize, MODEL_MAX_LENGTH);
            }
        }
        let stm_path = dir.join("special_tokens_map.json");
        let stm_text = match stm_path.symlink_metadata() {
            Ok(_) => Some(crate::weights::read_text(&stm_path)?),
            Err(_) => None,
        };
        let stm = stm_text.as_deref().map(|text| (stm_path.as_path(), text));
        let (special_tokens, stm_notes) = special_tokens(stm, &cfg, &cfg_path, class_defaults(built_class))?;
        notes.extend(stm_notes);
        let added = crate::missing_specials::add_missing(
            &mut tokenizer,
            &cfg,
            cfg_text.as_deref(),
            stm_text.as_deref(),
            &special_tokens,
        );
        notes.extend(added.iter().map(|a| match a.in_vocab {
            false => format!(
                "tokenizer.json lacks the special token {:?} (`{}`): added as id {}, as transformers adds it",
                a.content, a.key, a.id
            ),
            true => format!(
                "tokenizer.json has the special token {:?} (`{}`, id {}) in its vocabulary only: matched whole \
                 in text as an added token, as transformers matches it",
                a.content, a.key, a.id
            ),
        }));
        let me =
            Self { tokenizer, template, special_tokens, notes, added, max_tokens: max, max_tokens_source: max_source };
        // Fail at load, not on the first pair, when the template cannot render — or renders a
        // text without the prompt or the response, which would score something else entirely.
        if me.template.is_some() {
            // Long markers, so a template that cuts the content short (`content[:200]`) is caught
            // as well as one that drops it.
            let (prompt, response) = (SENTINEL_PROMPT.repeat(2048), SENTINEL_RESPONSE.repeat(2048));
            let text = me.render(&prompt, &response)?;
            let missing = match (text.find(&prompt), text.find(&response)) {
                (None, _) => Some("the user's prompt (messages[0].content)"),
                (_, None) => Some("the assistant's response (messages[1].content)"),
                (Some(p), Some(r)) if p > r => Some("the prompt before the response"),
                _ => None,
            };
            if let Some(what) = missing {
                return Err(EngineError::Template {
                    source_name: me.template_source(),
                    message: format!(
                        "the rendered conversation does not contain {what} in full; a reward model's template must \
                         render both, whole"
                    ),
                });
            }
        }
        Ok(me)
    }

    /// The special token added with id `id` because tokenizer.json lacked it (see [`AddedSpecial`]).
    pub fn added_special(&self, id: u32) -> Option<&AddedSpecial> {
        self.added.iter().find(|a| a.id == id && !a.in_vocab)
    }

    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    fn template_source(&self) -> String {
        self.template.as_ref().map(|t| t.1.clone()).unwrap_or_default()
    }

    /// Renders `[user: prompt, assistant: response]` as transformers'
    /// `apply_chat_template(..., tokenize=False, add_generation_prompt=False)` would.
    pub fn render(&self, prompt: &str, response: &str) -> Result<String> {
        let Some((source, name)) = &self.template else {
            return Ok(PLAIN_FORMAT.replace("{prompt}", prompt).replace("{response}", response));
        };
        let mut env = Environment::new();
        // Bounded work: a template is data from the model folder, and a loop that never ends (or
        // runs for hours) must end in an error naming the template, not hang the run.
        env.set_fuel(Some(TEMPLATE_FUEL));
        // Nesting (macros calling macros, includes) is bounded too: a real chat template nests a
        // few levels; deep recursion is either a runaway macro or one built to grow output
        // exponentially, and each level costs stack.
        env.set_recursion_limit(TEMPLATE_RECURSION);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python's string methods; strip/split use Python's whitespace (\x1c–\x1f included).
        env.set_unknown_method_callback(crate::jinja_py::unknown_method);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        // transformers' own `tojson` (json.dumps, no HTML escaping) replaces minijinja's.
        env.add_filter("tojson", crate::jinja_py::tojson);
        // And Jinja2's (markupsafe's) escaping, which minijinja spells differently.
        env.add_filter("escape", crate::jinja_py::escape);
        env.add_filter("e", crate::jinja_py::escape);
        // Jinja2's `trim` is Python's `str.strip`, whose whitespace includes \x1c–\x1f.
        env.add_filter("trim", crate::jinja_py::trim);
        // Deterministic: templates that print today's date get a fixed one, in their format.
        env.add_function("strftime_now", |fmt: String| crate::jinja_py::strftime_now(&fmt));
        // An undefined special token fails in `bos_token + …` (in transformers too): say which.
        let hint: String = self
            .undefined_specials()
            .map(|n| {
                format!(" (`{n}` is undefined: neither tokenizer_config.json nor special_tokens_map.json defines it)")
            })
            .collect();
        let terr = |e: JinjaError| EngineError::Template { source_name: name.clone(), message: format!("{e:#}{hint}") };
        env.add_template("chat", source).map_err(terr)?;
        let tmpl = env.get_template("chat").map_err(terr)?;
        let messages =
            vec![context! { role => "user", content => prompt }, context! { role => "assistant", content => response }];
        // The context transformers renders with: every special token, then tools=None and
        // documents=None (a template testing `tools is not none` must see None, not undefined).
        let mut ctx: BTreeMap<&str, minijinja::Value> =
            self.special_tokens.iter().map(|(k, v)| (k.as_str(), minijinja::Value::from(v.as_str()))).collect();
        ctx.insert("messages", minijinja::Value::from_serialize(&messages));
        ctx.insert("tools", minijinja::Value::from(()));
        ctx.insert("documents", minijinja::Value::from(()));
        ctx.insert("add_generation_prompt", minijinja::Value::from(false));
        let mut out = CappedWriter(Vec::new());
        tmpl.render_captured_to(ctx, &mut out).map_err(|e| match e.kind() {
            ErrorKind::WriteFailure => EngineError::Template {
                source_name: name.clone(),
                message: format!("renders more than {} MiB for one conversation; refusing", TEMPLATE_MAX_OUTPUT >> 20),
            },
            _ => terr(e),
        })?;
        String::from_utf8(out.0).map_err(|_| EngineError::Template {
            source_name: name.clone(),
            message: "rendered text is not valid UTF-8".into(),
        })
    }

    /// The template text between the end of the prompt and the start of the response, e.g.
    /// Llama-3's `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n`. ArmoRM reads its
    /// gate at the last occurrence of these tokens.
    pub fn boundary_ids(&self) -> Result<Vec<u32>> {
        let text = self.render(SENTINEL_PROMPT, SENTINEL_RESPONSE)?;
        let (Some(a), Some(b)) = (text.find(SENTINEL_PROMPT), text.find(SENTINEL_RESPONSE)) else {
            return Err(EngineError::Template {
                source_name: self.template_source(),
                message: "cannot locate the prompt and response in the rendered template".into(),
            });
        };
        let between = &text[a + SENTINEL_PROMPT.len()..b];
        self.encode_raw(between, false)
    }

    fn encode_raw(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, special)
            .map_err(|e| EngineError::Tokenizer { path: PathBuf::from("tokenizer.json"), message: e.to_string() })?
            .get_ids()
            .to_vec())
    }

    /// Renders and encodes one conversation, enforcing the context limit.
    pub fn encode_pair(&self, prompt: &str, response: &str, truncation: Truncation) -> Result<Encoded> {
        if prompt.trim().is_empty() {
            return Err(EngineError::EmptyText { field: "prompt" });
        }
        if response.trim().is_empty() {
            return Err(EngineError::EmptyText { field: "response" });
        }
        let text = self.render(prompt, response)?;
        // Where the response begins: render with a sentinel response; the text before it is the
        // same prefix (templates do not look ahead at the response).
        let probe = self.render(prompt, SENTINEL_RESPONSE)?;
        let resp_byte = probe.find(SENTINEL_RESPONSE).unwrap_or(text.len());
        let special = self.template.is_none();
        let enc = self
            .tokenizer
            .encode(text.as_str(), special)
            .map_err(|e| EngineError::Tokenizer { path: PathBuf::from("tokenizer.json"), message: e.to_string() })?;
        let mut ids = enc.get_ids().to_vec();
        let mut response_start = enc
            .get_offsets()
            .iter()
            .zip(enc.get_special_tokens_mask())
            .position(|(&(_, end), &sp)| sp == 0 && end > resp_byte)
            .unwrap_or(ids.len());
        let n = ids.len();
        let mut dropped = 0;
        if n > self.max_tokens {
            match truncation {
                Truncation::Error => {
                    return Err(EngineError::TooLong {
                        n_tokens: n,
                        max_tokens: self.max_tokens,
                        limit: self.max_tokens_source,
                    })
                }
                Truncation::DropPromptLeft => {
                    // Keep a leading BOS (a special token at position 0) and cut after it.
                    let keep =
                        usize::from(enc.get_special_tokens_mask().first() == Some(&1) || self.starts_with_bos(&ids));
                    let need = n - self.max_tokens;
                    if keep + need > response_start {
                        return Err(EngineError::ResponseTooLong {
                            n_tokens: n,
                            needed: n - (response_start - keep),
                            max_tokens: self.max_tokens,
                            limit: self.max_tokens_source,
                        });
                    }
                    ids.drain(keep..keep + need);
                    response_start -= need;
                    dropped = need;
                }
            }
        }
        Ok(Encoded { text, ids, response_start, dropped })
    }

    fn starts_with_bos(&self, ids: &[u32]) -> bool {
        match (self.special_tokens.get("bos_token"), ids.first()) {
            (Some(b), Some(&first)) => self.tokenizer.token_to_id(b) == Some(first),
            _ => false,
        }
    }
}
