//! Special tokens that `tokenizer_config.json` names but `tokenizer.json` lacks. transformers 5
//! adds each as a new special token when it loads the tokenizer, with ids after the last one, so
//! a template (or a text) that contains one encodes to that id. Read as plain text it would be
//! split into pieces, and the model would silently read something else. They are added here in
//! transformers' order, which fixes their ids: the named tokens (bos, eos, unk, sep, pad, cls,
//! mask), then the file's other `*_token` keys in file order, then the named entries of an
//! `extra_special_tokens` object, then the entries of an `extra_special_tokens` list.
//!
//! A special token that `tokenizer.json` has in its model's vocabulary but not among its added
//! tokens is made an added token too, with its own id, as transformers makes it: text containing
//! it then encodes to that one id, where the pre-tokenizer would have split it.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tokenizers::{AddedToken, Tokenizer};

use crate::text::{extra_token, SPECIAL_TOKEN_NAMES};

/// A special token added because `tokenizer.json` lacked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedSpecial {
    /// The setting that names it (`pad_token`, `extra_special_tokens[2]`, …).
    pub key: String,
    pub content: String,
    pub id: u32,
    /// True where the model's vocabulary had it (same id, now matched whole as an added token);
    /// false where the id is new.
    pub in_vocab: bool,
}

/// The keys of a JSON object in file order (serde_json's maps are sorted); empty for any other value.
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> std::result::Result<Keys, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Keys(Vec::new()))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
            fn visit_unit<E>(self) -> std::result::Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// tokenizer_config.json's top-level keys and its `extra_special_tokens` object's keys, in file order.
fn key_order(text: &str) -> (Vec<String>, Vec<String>) {
    struct Top(Vec<String>, Vec<String>);
    impl<'de> Deserialize<'de> for Top {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Top;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Top, A::Error> {
                    let (mut top, mut extra) = (Vec::new(), Vec::new());
                    while let Some(k) = m.next_key::<String>()? {
                        if k == "extra_special_tokens" {
                            extra = m.next_value::<Keys>()?.0;
                        } else {
                            m.next_value::<IgnoredAny>()?;
                        }
                        top.push(k);
                    }
                    Ok(Top(top, extra))
                }
            }
            d.deserialize_map(V)
        }
    }
    // The file already parsed as JSON; a failure here only loses the order of optional keys.
    serde_json::from_str::<Top>(text).map(|t| (t.0, t.1)).unwrap_or_default()
}

/// Adds to `tokenizer`, as transformers does, every special token of `tokens` (the template's
/// special tokens, by setting) and of an `extra_special_tokens` list that it lacks; returns them
/// with the ids they got. `cfg_text` and `stm_text` are tokenizer_config.json's and
/// special_tokens_map.json's texts (for their key order; the latter only where transformers reads
/// it, without an `added_tokens_decoder`).
pub(crate) fn add_missing<'a>(
    tokenizer: &mut Tokenizer,
    cfg: &'a Value,
    cfg_text: Option<&str>,
    stm_text: Option<&str>,
    tokens: &BTreeMap<String, String>,
) -> Vec<AddedSpecial> {
    let (top, extra) = cfg_text.map(key_order).unwrap_or_default();
    let model_specific = |k: &String| k.ends_with("_token") && !SPECIAL_TOKEN_NAMES.contains(&k.as_str());
    let mut keys: Vec<String> = SPECIAL_TOKEN_NAMES.iter().map(|s| s.to_string()).collect();
    // special_tokens_map.json's own model-specific keys come next, in its order: transformers
    // merges them into its keyword arguments after it has set tokenizer_config.json's aside.
    if cfg.get("added_tokens_decoder").is_none() {
        keys.extend(stm_text.map(key_order).unwrap_or_default().0.into_iter().filter(model_specific));
    }
    keys.extend(top.into_iter().filter(model_specific));
    keys.extend(extra);
    // Tokens only special_tokens_map.json names (transformers' legacy path), after the rest.
    let rest: Vec<String> = tokens.keys().filter(|k| !keys.contains(k)).cloned().collect();
    keys.extend(rest);
    // An added-token object in tokenizer_config.json carries its flags; a string takes
    // transformers' defaults for special tokens (special, not normalized, no stripping).
    let object = |v: Option<&'a Value>, content: &str| -> Option<&'a Value> {
        v.filter(|v| v.get("content").and_then(Value::as_str) == Some(content))
    };
    let mut candidates: Vec<(String, String, Option<&Value>)> = Vec::new();
    for key in keys {
        if let Some(content) = tokens.get(&key) {
            let v = cfg.get(&key).or_else(|| cfg.get("extra_special_tokens").and_then(|e| e.get(&key)));
            candidates.push((key.clone(), content.clone(), object(v, content)));
        }
    }
    if let Some(Value::Array(list)) = cfg.get("extra_special_tokens") {
        for (i, v) in list.iter().enumerate() {
            if let Some(content) = extra_token(v, false) {
                let obj = object(Some(v), &content);
                candidates.push((format!("extra_special_tokens[{i}]"), content, obj));
            }
        }
    }
    let already: std::collections::HashSet<String> =
        tokenizer.get_added_tokens_decoder().into_values().map(|t| t.content).collect();
    let mut added: Vec<AddedSpecial> = Vec::new();
    for (key, content, obj) in candidates {
        let in_vocab = tokenizer.token_to_id(&content).is_some();
        if content.is_empty() || already.contains(&content) || added.iter().any(|a| a.content == content) {
            continue;
        }
        let flag = |name: &str| obj.and_then(|o| o.get(name)).and_then(Value::as_bool).unwrap_or(false);
        let token = AddedToken::from(content.clone(), true)
            .single_word(flag("single_word"))
            .lstrip(flag("lstrip"))
            .rstrip(flag("rstrip"))
            .normalized(flag("normalized"));
        tokenizer.add_special_tokens(&[token]);
        if let Some(id) = tokenizer.token_to_id(&content) {
            added.push(AddedSpecial { key, content, id, in_vocab });
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_the_files() {
        let (top, extra) = key_order(
            r#"{"z_token": "a", "b": [1, {"x": 2}], "extra_special_tokens": {"q": "1", "c": "2"}, "a_token": null}"#,
        );
        assert_eq!(top, ["z_token", "b", "extra_special_tokens", "a_token"]);
        assert_eq!(extra, ["q", "c"]);
        let (_, extra) = key_order(r#"{"extra_special_tokens": ["<a>", "<b>"]}"#);
        assert!(extra.is_empty());
    }
}
