//! Tokenizer settings in a model folder, read the way transformers 5 reads them. Expected ids come
//! from transformers 5.25 (`apply_chat_template(tokenize=False)` then `tok(text,
//! add_special_tokens=False)`) on the same edited fixtures.

use std::path::{Path, PathBuf};

use reward_lens_engine::{ChatTokenizer, Truncation};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models").join(name)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A copy of a fixture's tokenizer files, with `tokenizer.json` and `tokenizer_config.json`
/// edited; `extra` files are written as given.
fn variant(
    name: &str,
    from: &str,
    tok: impl FnOnce(&mut Value),
    cfg: impl FnOnce(&mut Value),
    extra: &[(&str, &str)],
) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tokenizer").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let src = fixture(from);
    for (file, edit) in
        [("tokenizer.json", Box::new(tok) as Box<dyn FnOnce(&mut Value)>), ("tokenizer_config.json", Box::new(cfg))]
    {
        let mut v = read_json(&src.join(file));
        edit(&mut v);
        std::fs::write(d.join(file), serde_json::to_string(&v).unwrap()).unwrap();
    }
    if src.join("chat_template.jinja").exists() {
        std::fs::copy(src.join("chat_template.jinja"), d.join("chat_template.jinja")).unwrap();
    }
    for (file, text) in extra {
        std::fs::write(d.join(file), text).unwrap();
    }
    d
}

fn ids(d: &Path, model_type: &str, prompt: &str, response: &str) -> Vec<u32> {
    let t = ChatTokenizer::from_dir(d, 4096, Some(model_type)).unwrap_or_else(|e| panic!("{e}"));
    t.encode_pair(prompt, response, Truncation::Error).unwrap().ids
}

/// The llama fixture's ids for ("xxxxx", "<b>&amp;'quote\" \\ back</b>"): 33 tokens.
const LLAMA_33: [u32; 33] = [
    1, 3, 205, 94, 94, 94, 94, 94, 6, 4, 205, 34, 72, 36, 12, 71, 330, 33, 13, 87, 91, 1019, 8, 227, 66, 286, 71, 504,
    34, 21, 72, 36, 6,
];

#[test]
fn saved_truncation_and_padding_blocks_are_not_applied() {
    let (p, r) = ("xxxxx", "<b>&amp;'quote\" \\ back</b>");
    assert_eq!(ids(&fixture("llama"), "llama", p, r), LLAMA_33);
    let d = variant(
        "trunc",
        "llama",
        |t| t["truncation"] = json!({"max_length": 20, "strategy": "LongestFirst", "direction": "Right", "stride": 0}),
        |_| {},
        &[],
    );
    assert_eq!(ids(&d, "llama", p, r), LLAMA_33);
    let d = variant(
        "padfixed",
        "llama",
        |t| {
            t["padding"] = json!({"strategy": {"Fixed": 100}, "direction": "Right", "pad_to_multiple_of": null,
                                  "pad_id": 2, "pad_type_id": 0, "pad_token": "</s>"})
        },
        |_| {},
        &[],
    );
    assert_eq!(ids(&d, "llama", p, r), LLAMA_33);
}
