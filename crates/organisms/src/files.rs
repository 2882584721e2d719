//! The files an organism ships: a word-level HuggingFace tokenizer with its chat template, the
//! pair files, the answer key, and probe and concept sets in the formats of `data/probes` and
//! `data/concepts`.
//!
//! ```text
//! DIR/tokenizer.json  tokenizer_config.json  train.jsonl  test.jsonl  answer_key.json
//! DIR/probes/{length,sycophancy,formatting,caution}.jsonl
//! DIR/concepts/{length,sycophancy,formatting,caution}.jsonl
//! ```

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::{io_err, OrganismError, Result};
use crate::language::{vocabulary, SPECIAL_TOKENS};
use crate::Dataset;

/// Context length written to `tokenizer_config.json`; the longest organism conversation is
/// about 50 tokens.
pub const MODEL_MAX_LENGTH: usize = 128;

/// The chat template: `[BOS] <|user|> {prompt} <|assistant|> {response} [EOS]`. One line with
/// no block tag at a line start, so transformers' `trim_blocks` / `lstrip_blocks` change nothing;
/// the spaces keep every word a separate whitespace-split token. The reward is read at `[EOS]`.
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message['role'] not in ['user', 'assistant'] %}{{ raise_exception('organism chat template: only user and \
assistant messages') }}{% endif %} <|{{ message['role'] }}|> {{ message['content'] }}\
{% if message['role'] == 'assistant' %} {{ eos_token }}{% endif %}{% endfor %}\
{% if add_generation_prompt %} <|assistant|>{% endif %}";

/// `tokenizer.json`: WordLevel over [`SPECIAL_TOKENS`] then [`vocabulary`], split on whitespace,
/// `[UNK]` for unknown words, no normalizer and no post-processor (encoding adds nothing).
pub fn tokenizer_json() -> Value {
    let mut vocab = Map::new();
    let words = vocabulary();
    for (id, tok) in SPECIAL_TOKENS.iter().copied().chain(words.iter().map(String::as_str)).enumerate() {
        vocab.insert(tok.to_string(), json!(id));
    }
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
}

/// `tokenizer_config.json` for transformers' `PreTrainedTokenizerFast`.
pub fn tokenizer_config_json() -> Value {
    let decoder: Map<String, Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, t)| {
            (
                id.to_string(),
                json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                       "single_word": false, "special": true}),
            )
        })
        .collect();
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[1],
        "eos_token": SPECIAL_TOKENS[2],
        "pad_token": SPECIAL_TOKENS[0],
        "unk_token": SPECIAL_TOKENS[3],
        "additional_special_tokens": [SPECIAL_TOKENS[4], SPECIAL_TOKENS[5]],
        "added_tokens_decoder": decoder,
        "model_max_length": MODEL_MAX_LENGTH,
        "padding_side": "right",
        "clean_up_tokenization_spaces": false,
        "chat_template": CHAT_TEMPLATE,
    })
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io_err(path))
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let mut text =
        serde_json::to_string_pretty(v).map_err(|source| OrganismError::Json { path: path.to_path_buf(), source })?;
    text.push('\n');
    write_text(path, &text)
}

/// One compact JSON object per line.
pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text += &serde_json::to_string(r).map_err(|source| OrganismError::Json { path: path.to_path_buf(), source })?;
        text.push('\n');
    }
    write_text(path, &text)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if missing).
pub fn write_tokenizer_files(dir: &Path) -> Result<()> {
    create_dir(dir)?;
    write_json(&dir.join("tokenizer.json"), &tokenizer_json())?;
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config_json())
}

/// Writes `train.jsonl`, `test.jsonl`, `answer_key.json`, `probes/*.jsonl` (one file per
/// dimension) and `concepts/*.jsonl` (one file per concept) into `dir`.
pub fn write_data_files(dir: &Path, ds: &Dataset) -> Result<()> {
    create_dir(dir)?;
    write_jsonl(&dir.join("train.jsonl"), &ds.train)?;
    write_jsonl(&dir.join("test.jsonl"), &ds.test)?;
    write_json(&dir.join("answer_key.json"), &ds.key)?;
    let probe_dir = dir.join("probes");
    create_dir(&probe_dir)?;
    // Files in order of first appearance; the reader takes the dimension from each line.
    let mut dims: Vec<&str> = Vec::new();
    for p in &ds.probes {
        if !dims.contains(&p.dimension.as_str()) {
            dims.push(&p.dimension);
        }
    }
    for d in dims {
        let rows: Vec<_> = ds.probes.iter().filter(|p| p.dimension == d).collect();
        write_jsonl(&probe_dir.join(format!("{d}.jsonl")), &rows)?;
    }
    let concept_dir = dir.join("concepts");
    create_dir(&concept_dir)?;
    for c in &ds.concepts {
        write_jsonl(&concept_dir.join(format!("{}.jsonl", c.name)), &c.pairs)?;
    }
    Ok(())
}

/// Everything: the tokenizer files and the data files.
pub fn write_files(dir: &Path, ds: &Dataset) -> Result<()> {
    write_tokenizer_files(dir)?;
    write_data_files(dir, ds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate, OrganismSpec, PairText, BOS_ID, EOS_ID, UNK_ID};
    use reward_lens_engine::{ChatTokenizer, Truncation};
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let p = std::env::temp_dir().join(format!("reward-lens-organisms-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn small(name: &str, seed: u64) -> OrganismSpec {
        OrganismSpec { seed, n_train: 600, n_test: 100, ..OrganismSpec::preset(name).unwrap() }
    }

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let (a, b, c) = (TempDir::new("seed-a"), TempDir::new("seed-b"), TempDir::new("seed-c"));
        write_files(&a.0, &generate(&small("default", 7))).unwrap();
        write_files(&b.0, &generate(&small("default", 7))).unwrap();
        write_files(&c.0, &generate(&small("default", 8))).unwrap();
        for f in [
            "train.jsonl",
            "test.jsonl",
            "answer_key.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "probes/length.jsonl",
            "concepts/caution.jsonl",
        ] {
            assert_eq!(read(&a.0.join(f)), read(&b.0.join(f)), "{f}");
        }
        for f in ["train.jsonl", "test.jsonl", "answer_key.json", "probes/length.jsonl", "concepts/caution.jsonl"] {
            assert_ne!(read(&a.0.join(f)), read(&c.0.join(f)), "{f}");
        }
        // The tokenizer does not depend on the seed.
        assert_eq!(read(&a.0.join("tokenizer.json")), read(&c.0.join("tokenizer.json")));
    }

    #[test]
    fn pair_lines_have_our_field_names() {
        let d = TempDir::new("fields");
        let ds = generate(&small("tail", 3));
        write_files(&d.0, &ds).unwrap();
        let text = std::fs::read_to_string(d.0.join("train.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 600);
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("{\"id\":0,\"prompt\":\""), "{first}");
        let keys: Vec<String> =
            serde_json::from_str::<Value>(first).unwrap().as_object().unwrap().keys().cloned().collect();
        let mut want = vec!["chosen", "id", "prompt", "rejected", "subset"];
        want.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, want);
        let back: Vec<PairText> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(back, ds.train);
        let key: Value = serde_json::from_str(&std::fs::read_to_string(d.0.join("answer_key.json")).unwrap()).unwrap();
        assert_eq!(key["organism"], "tail");
        assert_eq!(key["rules"][3]["direction"], 1);
        assert_eq!(key["rules"][0]["direction"], 0);
        assert_eq!(key["tail"]["train_ids"].as_array().unwrap().len(), 24); // 4 % of 600
    }

    #[test]
    fn every_text_tokenizes_without_unk_through_the_engine() {
        let d = TempDir::new("tok");
        let ds = generate(&small("default", 5));
        write_files(&d.0, &ds).unwrap();
        let tok = ChatTokenizer::from_dir(&d.0, 4096, None).unwrap();
        assert_eq!(tok.max_tokens, MODEL_MAX_LENGTH);
        assert_eq!(tok.tokenizer.get_vocab_size(true), crate::vocab_size());
        for (i, t) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(tok.tokenizer.token_to_id(t), Some(i as u32));
        }
        let user = tok.tokenizer.token_to_id("<|user|>").unwrap();
        let assistant = tok.tokenizer.token_to_id("<|assistant|>").unwrap();
        let mut texts: Vec<(&str, &str)> = Vec::new();
        for p in ds.train.iter().chain(&ds.test) {
            texts.extend([(p.prompt.as_str(), p.chosen.as_str()), (p.prompt.as_str(), p.rejected.as_str())]);
        }
        for p in &ds.probes {
            texts.extend([(p.prompt.as_str(), p.neutral.as_str()), (p.prompt.as_str(), p.biased.as_str())]);
        }
        for c in ds.concepts.iter().flat_map(|c| &c.pairs) {
            texts.extend([(c.prompt.as_str(), c.positive.as_str()), (c.prompt.as_str(), c.negative.as_str())]);
        }
        let mut longest = 0;
        for (prompt, response) in texts {
            let enc = tok.encode_pair(prompt, response, Truncation::Error).unwrap();
            assert!(!enc.ids.contains(&UNK_ID), "[UNK] in {}", enc.text);
            // One token per word, plus [BOS] <|user|> <|assistant|> [EOS].
            let words = prompt.split_whitespace().count() + response.split_whitespace().count();
            assert_eq!(enc.ids.len(), words + 4, "{}", enc.text);
            assert_eq!(enc.text, format!("[BOS] <|user|> {prompt} <|assistant|> {response} [EOS]"));
            assert_eq!((enc.ids[0], enc.ids[1], *enc.ids.last().unwrap()), (BOS_ID, user, EOS_ID));
            let p_len = prompt.split_whitespace().count();
            assert_eq!(enc.ids[2 + p_len], assistant);
            assert_eq!(enc.response_start, 3 + p_len);
            longest = longest.max(enc.ids.len());
        }
        assert!(longest <= 64, "longest conversation {longest} tokens");
        // A word outside the language is [UNK], not an error.
        let enc = tok.encode_pair("what color is the moon ?", "the moon is grey .", Truncation::Error).unwrap();
        assert_eq!(enc.ids.iter().filter(|&&i| i == UNK_ID).count(), 3);
    }

    /// The CLI's probe and concept readers are private to the binary crate (which depends on this
    /// one), so this repeats their checks on the written files: the six (three) string fields,
    /// non-empty, `biased != neutral`, dimension = file stem, unique ids; plus the single-edit
    /// rule of data/probes/README.md (neutral's words appear in order in biased; for formatting,
    /// identical once the markdown symbols are removed).
    #[test]
    fn probe_and_concept_files_follow_our_formats() {
        let d = TempDir::new("probes");
        let ds = generate(&small("control", 1));
        write_files(&d.0, &ds).unwrap();
        let mut ids = std::collections::BTreeSet::new();
        for dim in ["length", "sycophancy", "formatting", "caution"] {
            let text = std::fs::read_to_string(d.0.join("probes").join(format!("{dim}.jsonl"))).unwrap();
            assert_eq!(text.lines().count(), 40);
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                let obj = v.as_object().unwrap();
                assert_eq!(obj.len(), 6);
                let f = |k: &str| obj[k].as_str().filter(|s| !s.trim().is_empty()).unwrap().to_string();
                let (id, neutral, biased) = (f("id"), f("neutral"), f("biased"));
                f("prompt");
                f("edit");
                assert_eq!(f("dimension"), dim);
                assert!(id.starts_with(&format!("{dim}-")));
                assert!(ids.insert(id));
                assert_ne!(neutral, biased);
                if dim == "formatting" {
                    let strip = |s: &str| -> Vec<String> {
                        s.split_whitespace()
                            .map(|w| w.replace(['#', '*', '-', '_'], ""))
                            .filter(|w| !w.is_empty())
                            .collect()
                    };
                    assert_eq!(strip(&neutral), strip(&biased));
                } else {
                    let mut it = biased.split_whitespace();
                    assert!(neutral.split_whitespace().all(|w| it.any(|b| b == w)), "{neutral} / {biased}");
                }
            }
        }
        for name in ["length", "sycophancy", "formatting", "caution"] {
            let text = std::fs::read_to_string(d.0.join("concepts").join(format!("{name}.jsonl"))).unwrap();
            assert_eq!(text.lines().count(), 40);
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                let obj = v.as_object().unwrap();
                assert_eq!(obj.len(), 3);
                let (pos, neg) = (obj["positive"].as_str().unwrap(), obj["negative"].as_str().unwrap());
                assert!(obj["prompt"].as_str().is_some());
                assert_ne!(pos, neg);
                // Positive adds words to negative (markers, sentences); it never removes any.
                let mut it = pos.split_whitespace();
                assert!(neg.split_whitespace().all(|w| it.any(|b| b == w)), "{neg} / {pos}");
            }
        }
    }

    #[test]
    fn write_errors_name_the_path() {
        let d = TempDir::new("err");
        let blocker = d.0.join("file");
        std::fs::write(&blocker, "x").unwrap();
        let err = write_tokenizer_files(&blocker.join("sub")).unwrap_err();
        assert!(matches!(err, OrganismError::Io { .. }));
        assert!(err.to_string().contains("file"), "{err}");
    }
}
