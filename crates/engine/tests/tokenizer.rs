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

/// The llama fixture's ids for ("Hi there", "Hello!"): `<s><|user|>\nHi there<|end|><|assistant|>…`.
const LLAMA_HI: [u32; 15] = [1, 3, 205, 46, 79, 265, 591, 6, 4, 205, 46, 75, 947, 7, 6];

fn with_template(name: &str, cfg: impl FnOnce(&mut Value), template: &str, extra: &[(&str, &str)]) -> PathBuf {
    let d = variant(name, "llama", |_| {}, cfg, extra);
    std::fs::write(d.join("chat_template.jinja"), template).unwrap();
    d
}

#[test]
fn the_template_sees_every_special_token_and_tools_documents_as_none() {
    let t = "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ sep_token }}|{{ pad_token }}|{{ cls_token }}|\
             {{ mask_token }}|{{ image_token }}|{{ additional_special_tokens }}|{{ tools }}|{{ documents }}|\
             {% if tools is not none %}TOOLS{% endif %}{% if documents is not none %}DOCS{% endif %}|\
             {% for m in messages %}{{ m.content }}{% endfor %}";
    let d = with_template(
        "context",
        |c| {
            let o = c.as_object_mut().unwrap();
            o.insert("unk_token".into(), json!("<unk>"));
            o.insert("sep_token".into(), json!("</s>"));
            o.insert("cls_token".into(), json!("<s>"));
            o.insert("mask_token".into(), json!({"__type": "AddedToken", "content": "<pad>"}));
            // A model-specific `*_token` is a special token too; the additional list is not passed.
            o.insert("image_token".into(), json!("<|user|>"));
            o.insert("additional_special_tokens".into(), json!(["<|end|>"]));
        },
        t,
        &[],
    );
    let tok = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
    // transformers 5.25 renders exactly this.
    assert_eq!(tok.render("p", "r").unwrap(), "<s>|</s>|<unk>|</s>|<pad>|<s>|<pad>|<|user|>||None|None||pr");
    // The fixture's tokenizer.json has no `<unk>`: transformers adds it (see
    // special_tokens_tokenizer_json_lacks_get_transformers_ids), and loading says so.
    assert_eq!(
        tok.warnings(),
        ["tokenizer.json lacks the special token \"<unk>\" (`unk_token`): added as id 1024, as transformers adds it"]
    );
}

#[test]
fn pad_token_in_the_template_renders_and_an_undefined_one_is_named() {
    let t = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ pad_token }}<|end|>{% endfor %}";
    let d = with_template("padtok", |_| {}, t, &[]);
    assert_eq!(
        ids(&d, "llama", "Hi there", "Hello!"),
        [1, 3, 205, 46, 79, 265, 591, 0, 6, 4, 205, 46, 75, 947, 7, 0, 6]
    );
    let d = with_template("padtok-undefined", |c| drop(c.as_object_mut().unwrap().remove("pad_token")), t, &[]);
    let w = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap().warnings();
    assert!(
        w.len() == 1
            && w[0].contains(
                "uses `pad_token`, which neither tokenizer_config.json nor special_tokens_map.json defines: it renders \
                 as empty text"
            ),
        "{w:?}"
    );
}

#[test]
fn special_tokens_map_is_read_as_transformers_reads_it() {
    // Only in special_tokens_map.json (older repositories): used, no warning.
    let d = variant(
        "stm-only",
        "llama",
        |_| {},
        |c| drop(c.as_object_mut().unwrap().remove("bos_token")),
        &[("special_tokens_map.json", r#"{"bos_token": "<s>", "eos_token": "</s>"}"#)],
    );
    assert_eq!(ids(&d, "llama", "Hi there", "Hello!"), LLAMA_HI);
    assert!(ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap().warnings().is_empty());

    // Both files, disagreeing: without added_tokens_decoder transformers lets
    // special_tokens_map.json win (bos becomes <|system|>, id 5), and loading says so.
    let stm = [("special_tokens_map.json", r#"{"bos_token": {"content": "<|system|>", "lstrip": false}}"#)];
    let d = variant("stm-conflict", "llama", |_| {}, |_| {}, &stm);
    let mut expected = LLAMA_HI;
    expected[0] = 5;
    assert_eq!(ids(&d, "llama", "Hi there", "Hello!"), expected);
    let w = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap().warnings();
    assert_eq!(
        w,
        ["special_tokens_map.json sets `bos_token` to \"<|system|>\", tokenizer_config.json to \"<s>\": using \
          special_tokens_map.json's, as transformers does"]
    );

    // With added_tokens_decoder in tokenizer_config.json transformers never opens the map.
    let d = variant(
        "stm-conflict-atd",
        "llama",
        |_| {},
        |c| {
            c["added_tokens_decoder"] = json!({"1": {"content": "<s>", "lstrip": false, "rstrip": false,
                "normalized": false, "single_word": false, "special": true}})
        },
        &stm,
    );
    assert_eq!(ids(&d, "llama", "Hi there", "Hello!"), LLAMA_HI);
    let w = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap().warnings();
    assert!(w.len() == 1 && w[0].contains("using tokenizer_config.json's (it has added_tokens_decoder"), "{w:?}");

    // A null in the map unsets the token (transformers: the template then renders it empty).
    let d = variant("stm-null", "llama", |_| {}, |_| {}, &[("special_tokens_map.json", r#"{"bos_token": null}"#)]);
    assert_eq!(ids(&d, "llama", "Hi there", "Hello!"), LLAMA_HI[1..]);
}

#[test]
fn split_special_tokens_encodes_special_token_strings_as_text() {
    let d = variant("split-special", "llama", |_| {}, |c| c["split_special_tokens"] = json!(true), &[]);
    // transformers 5.25: `<s>`, `<|user|>`, `<|end|>` … become their characters' ids.
    assert_eq!(
        ids(&d, "llama", "Hi there", "Hello!"),
        [
            34, 89, 36, 34, 98, 346, 268, 98, 36, 205, 46, 79, 265, 591, 34, 98, 488, 98, 36, 34, 98, 647, 89, 79, 460,
            302, 90, 98, 36, 205, 46, 75, 947, 7, 34, 98, 488, 98, 36
        ]
    );
    let d = variant("split-special-str", "llama", |_| {}, |c| c["split_special_tokens"] = json!("yes"), &[]);
    let e = ChatTokenizer::from_dir(&d, 4096, Some("llama")).err().expect("must fail").to_string();
    assert!(
        e.ends_with("tokenizer_config.json: field `split_special_tokens`: expected true or false, found \"yes\""),
        "{e}"
    );
}

#[test]
fn added_tokens_decoder_flags_win_over_tokenizer_json_as_in_transformers() {
    let end = |lstrip: bool| {
        json!({"6": {"content": "<|end|>", "lstrip": lstrip, "rstrip": lstrip, "normalized": false,
                      "single_word": false, "special": true}})
    };
    let d = variant("atd-lstrip", "llama", |_| {}, |c| c["added_tokens_decoder"] = end(true), &[]);
    // transformers 5.25: `<|end|>` eats the spaces around it (ids 227 = "▁" gone).
    assert_eq!(
        ids(&d, "llama", "a <|end|> b </s> c", "x <s> y <pad> z"),
        [1, 3, 205, 71, 6, 72, 227, 2, 271, 6, 4, 205, 94, 227, 1, 650, 227, 0, 227, 96, 6]
    );
    assert_eq!(
        ids(&d, "llama", "Tabs\tand  double  spaces ", "  leading and trailing  "),
        [
            1, 3, 205, 58, 493, 89, 204, 302, 74, 227, 332, 91, 72, 541, 227, 270, 86, 71, 73, 266, 6, 4, 205, 227,
            592, 272, 779, 343, 743, 71, 79, 82, 610, 6
        ]
    );
    let w = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap().warnings();
    assert_eq!(
        w,
        ["tokenizer_config.json's added_tokens_decoder gives \"<|end|>\" lstrip=true, rstrip=true where tokenizer.json's \
          added_tokens differ: using tokenizer_config.json's, as transformers does"]
    );
    // The same flags in both files: nothing changes, nothing to say.
    let d = variant("atd-same", "llama", |_| {}, |c| c["added_tokens_decoder"] = end(false), &[]);
    assert_eq!(ids(&d, "llama", "Hi there", "Hello!"), LLAMA_HI);
    assert!(ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap().warnings().is_empty());
    // A token tokenizer.json does not have would be a new vocabulary entry in transformers.
    let d = variant(
        "atd-new",
        "llama",
        |_| {},
        |c| c["added_tokens_decoder"] = json!({"1024": {"content": "<tool>", "special": true}}),
        &[],
    );
    let e = ChatTokenizer::from_dir(&d, 4096, Some("llama")).err().expect("must fail").to_string();
    assert!(
        e.contains("tokenizer_config.json: field `added_tokens_decoder`: entry 1024 (\"<tool>\") is not among ")
            && e.ends_with(
                "tokenizer.json's added_tokens; transformers would add it to the vocabulary as a new token, which \
                 reward-lens does not do"
            ),
        "{e}"
    );
}

#[test]
fn qwen3_without_a_tokenizer_class_gets_the_qwen2_pipeline() {
    // transformers maps model_type qwen3 to Qwen2Tokenizer: NFC, then digits one by one.
    let d =
        variant("qwen3-nocls", "qwen3", |_| {}, |c| drop(c.as_object_mut().unwrap().remove("tokenizer_class")), &[]);
    assert_eq!(
        ids(&d, "qwen3", "1234567890 3.14159", "new\n\n\nlines\n"),
        [
            1, 3, 205, 23, 24, 25, 26, 27, 28, 29, 30, 31, 22, 227, 25, 20, 23, 26, 23, 27, 31, 6, 4, 205, 84, 75, 93,
            205, 205, 205, 82, 277, 266, 205, 6
        ]
    );
    // The fixture itself (tokenizer_class PreTrainedTokenizerFast) keeps tokenizer.json's split.
    assert_eq!(ids(&fixture("qwen3"), "qwen3", "1234567890 3.14159", "new\n\n\nlines\n")[3..6], [655, 25, 26]);
}

#[test]
fn classes_transformers_rebuilds_differently_are_refused() {
    let load_err = |d: &Path, model_type: &str| {
        ChatTokenizer::from_dir(d, 4096, Some(model_type)).err().expect("must be refused").to_string()
    };
    // GPT-2 with add_prefix_space: transformers puts Ġ before every segment.
    let d = variant(
        "gpt2-prefix",
        "gpt2",
        |_| {},
        |c| {
            c["tokenizer_class"] = json!("GPT2TokenizerFast");
            c["add_prefix_space"] = json!(true)
        },
        &[],
    );
    let e = load_err(&d, "gpt2");
    assert!(
        e.contains(
            "GPT2TokenizerFast: transformers 5 rebuilds that tokenizer with no normalizer and GPT-2's ByteLevel \
             pre-tokenizer with add_prefix_space=true"
        ),
        "{e}"
    );
    // No class: model_type gemma2 means GemmaTokenizer, which is not byte-level.
    let d =
        variant("gemma2-nocls", "gemma2", |_| {}, |c| drop(c.as_object_mut().unwrap().remove("tokenizer_class")), &[]);
    let e = load_err(&d, "gemma2");
    assert!(
        e.contains("field `tokenizer_class`: no tokenizer_class, and model_type gemma2 maps to GemmaTokenizer"),
        "{e}"
    );
}

/// A small SentencePiece-converted (Llama-2 layout) tokenizer.json: normalizer Prepend("▁") +
/// Replace(" ", "▁"), no pre-tokenizer, a byte-fallback BPE with `<unk>` `<s>` `</s>`, the 256
/// byte tokens (ids 3–258) and a few merged pieces, and a `<s> $A` post-processor.
fn sp_tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for t in ["<unk>", "<s>", "</s>"] {
        vocab.insert(t.into(), json!(vocab.len()));
    }
    for b in 0..=255u8 {
        vocab.insert(format!("<0x{b:02X}>"), json!(vocab.len()));
    }
    let merges = [
        ("l", "l"),
        ("▁", "H"),
        ("e", "ll"),
        ("▁H", "ell"),
        ("▁Hell", "o"),
        ("[", "I"),
        ("[I", "N"),
        ("[IN", "S"),
        ("[INS", "T"),
        ("[INST", "]"),
        ("[INST]", "▁"),
        ("▁", "w"),
        ("o", "r"),
        ("▁w", "or"),
        ("l", "d"),
        ("▁wor", "ld"),
        ("▁", "["),
        ("▁[", "/"),
    ];
    for c in ["▁", "[", "]", "/", "I", "N", "S", "T", "H", "e", "l", "o", "w", "r", "d", "i", "a", "b"] {
        vocab.insert(c.into(), json!(vocab.len()));
    }
    for (a, b) in merges {
        vocab.insert(format!("{a}{b}"), json!(vocab.len()));
    }
    let added = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()}
    })
}

/// The Llama-2 `[INST]` template (without the system-prompt branch).
const LLAMA2_TEMPLATE: &str = "{% for m in messages %}{% if m.role == 'user' %}{{ bos_token + '[INST] ' + \
    m.content.strip() + ' [/INST]' }}{% else %}{{ ' ' + m.content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
/// The same without the BOS, so that the text starts at offset 0 and the prepend scheme shows.
const NO_BOS_TEMPLATE: &str =
    "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }} [/INST]{% else %} {{ m.content }}{% endif %}{% endfor %}";

/// A Llama-2-style model folder: the SentencePiece tokenizer.json under `class`, with the
/// tokenizer_config.json fields `fields` and the chat template `template`.
fn sp_llama(name: &str, class: &str, fields: Value, template: &str, tok: impl FnOnce(&mut Value)) -> PathBuf {
    let d = variant(
        name,
        "llama",
        |t| {
            *t = sp_tokenizer_json();
            tok(t)
        },
        |c| {
            *c = json!({"tokenizer_class": class, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"});
            c.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        },
        &[("chat_template.jinja", template), ("config.json", r#"{"model_type": "llama"}"#)],
    );
    d
}

/// The texts of the Llama tests: plain, spaces at the ends, newlines, special-token strings and
/// `[INST]` inside user text, non-ASCII (byte fallback), digits.
const SP_TEXTS: [(&str, &str); 5] = [
    ("Hello world", "Hi"),
    ("  Hello ", "world\n\nHello"),
    ("a </s> b<s>Hello", "x [INST] y [/INST] z"),
    ("héllo 😀", "42 Hello"),
    ("[INST]", "\tworld "),
];

fn sp_ids(d: &Path) -> Vec<Vec<u32>> {
    SP_TEXTS.iter().map(|(p, r)| ids(d, "llama", p, r)).collect()
}

#[test]
fn llama_sentencepiece_tokenizers_are_rebuilt_as_transformers_rebuilds_them() {
    // transformers 5.25 on these folders (LlamaTokenizer drops the file's normalizer and
    // pre-tokenizer): after `<s>` no "▁" is prepended ("first": only at the very start of the
    // text), so `[INST]` is 286, not 259 ("▁") + 286 as the file's Prepend normalizer gives.
    let first = sp_llama("sp-first", "LlamaTokenizerFast", json!({}), LLAMA2_TEMPLATE, |_| {});
    assert_eq!(
        sp_ids(&first),
        vec![
            vec![1, 286, 281, 292, 294, 263, 264, 265, 266, 261, 278, 274, 259, 2],
            vec![1, 286, 281, 294, 263, 264, 265, 266, 261, 292, 13, 13, 267, 279, 270, 259, 2],
            vec![
                1, 287, 275, 259, 2, 259, 276, 1, 267, 279, 270, 294, 263, 264, 265, 266, 261, 259, 123, 259, 287, 124,
                294, 263, 264, 265, 266, 261, 259, 125, 259, 2
            ],
            vec![
                1, 287, 107, 198, 172, 277, 270, 259, 243, 162, 155, 131, 294, 263, 264, 265, 266, 261, 259, 55, 53,
                281, 259, 2
            ],
            vec![1, 287, 287, 260, 262, 263, 264, 265, 266, 261, 292, 259, 2],
        ]
    );
    // legacy: true is "always": "▁" after every special token too (259 before `[INST]`, and 281
    // "▁Hello" after the `<s>` inside the prompt where "first" has 267 279 270 "H" "ell" "o").
    let always = sp_llama("sp-always", "LlamaTokenizer", json!({"legacy": true}), LLAMA2_TEMPLATE, |_| {});
    assert_eq!(
        sp_ids(&always),
        vec![
            vec![1, 259, 286, 281, 292, 294, 263, 264, 265, 266, 261, 278, 274, 259, 2],
            vec![1, 259, 286, 281, 294, 263, 264, 265, 266, 261, 292, 13, 13, 267, 279, 270, 259, 2],
            vec![
                1, 259, 287, 275, 259, 2, 259, 276, 1, 281, 294, 263, 264, 265, 266, 261, 259, 123, 259, 287, 124, 294,
                263, 264, 265, 266, 261, 259, 125, 259, 2
            ],
            vec![
                1, 259, 287, 107, 198, 172, 277, 270, 259, 243, 162, 155, 131, 294, 263, 264, 265, 266, 261, 259, 55,
                53, 281, 259, 2
            ],
            vec![1, 259, 287, 287, 260, 262, 263, 264, 265, 266, 261, 292, 259, 2],
        ]
    );
    // Without a BOS in the template the start of the text shows the scheme; add_prefix_space:
    // false is "never" whatever legacy says, null is its default (true).
    let nobos =
        |name: &str, fields: Value| sp_ids(&sp_llama(name, "LlamaTokenizerFast", fields, NO_BOS_TEMPLATE, |_| {}));
    let nobos_first = nobos("sp-nobos-first", json!({"legacy": false, "add_prefix_space": true}));
    assert_eq!(
        nobos_first,
        vec![
            vec![281, 292, 294, 263, 264, 265, 266, 261, 278, 274],
            vec![259, 281, 259, 294, 263, 264, 265, 266, 261, 292, 13, 13, 267, 279, 270],
            vec![
                259, 275, 259, 2, 259, 276, 1, 267, 279, 270, 294, 263, 264, 265, 266, 261, 259, 123, 259, 287, 124,
                294, 263, 264, 265, 266, 261, 259, 125
            ],
            vec![259, 107, 198, 172, 277, 270, 259, 243, 162, 155, 131, 294, 263, 264, 265, 266, 261, 259, 55, 53, 281],
            vec![259, 287, 260, 262, 263, 264, 265, 266, 261, 259, 12, 271, 289, 291, 259],
        ]
    );
    let nobos_always = nobos("sp-nobos-always", json!({"legacy": true, "add_prefix_space": null}));
    assert_eq!(
        nobos_always,
        vec![
            vec![281, 292, 294, 263, 264, 265, 266, 261, 278, 274],
            vec![259, 281, 259, 294, 263, 264, 265, 266, 261, 292, 13, 13, 267, 279, 270],
            vec![
                259, 275, 259, 2, 259, 276, 1, 281, 294, 263, 264, 265, 266, 261, 259, 123, 259, 287, 124, 294, 263,
                264, 265, 266, 261, 259, 125
            ],
            vec![259, 107, 198, 172, 277, 270, 259, 243, 162, 155, 131, 294, 263, 264, 265, 266, 261, 259, 55, 53, 281],
            vec![259, 287, 260, 262, 263, 264, 265, 266, 261, 259, 12, 271, 289, 291, 259],
        ]
    );
    let nobos_never = nobos("sp-nobos-never", json!({"legacy": true, "add_prefix_space": false}));
    assert_eq!(
        nobos_never,
        vec![
            vec![267, 279, 270, 292, 294, 263, 264, 265, 266, 261, 278, 274],
            vec![259, 281, 259, 294, 263, 264, 265, 266, 261, 292, 13, 13, 267, 279, 270],
            vec![
                275, 259, 2, 259, 276, 1, 267, 279, 270, 294, 263, 264, 265, 266, 261, 259, 123, 259, 287, 124, 294,
                263, 264, 265, 266, 261, 259, 125
            ],
            vec![107, 198, 172, 277, 270, 259, 243, 162, 155, 131, 294, 263, 264, 265, 266, 261, 259, 55, 53, 281],
            vec![287, 260, 262, 263, 264, 265, 266, 261, 259, 12, 271, 289, 291, 259],
        ]
    );
    // `[/INST]` as a normalized added token (some Llama-2 RMs add it, id 295): matched in the
    // text as transformers' rebuilt tokenizer sees it, without the file's normalizer.
    let added = sp_llama("sp-added", "LlamaTokenizerFast", json!({}), LLAMA2_TEMPLATE, |t| {
        let id = t["model"]["vocab"].as_object().unwrap().len();
        t["model"]["vocab"]["[/INST]"] = json!(id);
        t["added_tokens"].as_array_mut().unwrap().push(json!({"id": id, "content": "[/INST]", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": true, "special": false}));
    });
    assert_eq!(
        sp_ids(&added),
        vec![
            vec![1, 286, 281, 292, 259, 295, 278, 274, 259, 2],
            vec![1, 286, 281, 259, 295, 292, 13, 13, 267, 279, 270, 259, 2],
            vec![
                1, 287, 275, 259, 2, 259, 276, 1, 267, 279, 270, 259, 295, 259, 123, 259, 287, 124, 259, 295, 259, 125,
                259, 2
            ],
            vec![1, 287, 107, 198, 172, 277, 270, 259, 243, 162, 155, 131, 259, 295, 259, 55, 53, 281, 259, 2],
            vec![1, 287, 287, 295, 292, 259, 2],
        ]
    );
    // The same file under PreTrainedTokenizerFast is used as written (Prepend normalizer: "▁"
    // after `<s>`).
    let as_written = sp_llama("sp-as-written", "PreTrainedTokenizerFast", json!({}), LLAMA2_TEMPLATE, |_| {});
    assert_eq!(ids(&as_written, "llama", "Hello world", "Hi")[..3], [1, 259, 286]);
}

#[test]
fn llama_tokenizer_settings_transformers_cannot_rebuild_the_same_are_refused() {
    let load_err =
        |d: &Path| ChatTokenizer::from_dir(d, 4096, Some("llama")).err().expect("must be refused").to_string();
    // A non-boolean legacy / add_prefix_space would be read by Python truthiness.
    let d = sp_llama("sp-legacy-str", "LlamaTokenizer", json!({"legacy": "false"}), LLAMA2_TEMPLATE, |_| {});
    let e = load_err(&d);
    assert!(
        e.ends_with(
            "tokenizer_config.json: field `legacy`: expected true or false (read by LlamaTokenizer), found \"false\""
        ),
        "{e}"
    );
    let d = sp_llama("sp-prefix-num", "LlamaTokenizerFast", json!({"add_prefix_space": 1}), LLAMA2_TEMPLATE, |_| {});
    assert!(load_err(&d)
        .ends_with("field `add_prefix_space`: expected true or false (read by LlamaTokenizerFast), found 1"));
    // A Unigram model: transformers would make a BPE of its pieces without the scores.
    let d = sp_llama("sp-unigram", "LlamaTokenizerFast", json!({}), LLAMA2_TEMPLATE, |t| {
        t["model"] = json!({"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["<s>", 0.0], ["</s>", 0.0]]});
    });
    let e = load_err(&d);
    assert!(
        e.contains(
            "tokenizer_config.json: field `tokenizer_class`: LlamaTokenizerFast: transformers 5 rebuilds that \
             tokenizer as a BPE model from "
        ) && e.ends_with("tokenizer.json's vocab and merges, but the file's model is Unigram, not BPE; not supported"),
        "{e}"
    );
}

/// Special tokens tokenizer_config.json names and tokenizer.json lacks are added as transformers 5
/// adds them: named ones in attribute order, then the other `*_token` keys in file order, then
/// `extra_special_tokens` entries. Ids from transformers 5.25 on the same edited fixtures.
#[test]
fn special_tokens_tokenizer_json_lacks_get_transformers_ids() {
    // A template that renders pad, sep and an extra list token, none of them in tokenizer.json.
    let d = variant(
        "missing-specials-template",
        "llama",
        |_| {},
        |c| {
            c["pad_token"] = json!("<|padme|>");
            c["sep_token"] = json!("<|sepme|>");
            c["extra_special_tokens"].as_array_mut().unwrap().push(json!("<|xtra|>"));
        },
        &[(
            "chat_template.jinja",
            "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\
             {{ pad_token }}{{ sep_token }}<|xtra|><|end|>{% endfor %}",
        )],
    );
    assert_eq!(
        ids(&d, "llama", "hi", "yo"),
        [1, 3, 205, 345, 1025, 1024, 1026, 6, 4, 205, 95, 85, 1025, 1024, 1026, 6]
    );
    let t = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
    let a = t.added_special(1025).expect("pad_token was added");
    assert_eq!((a.key.as_str(), a.content.as_str()), ("pad_token", "<|padme|>"));
    assert_eq!(t.added_special(1026).unwrap().key, "extra_special_tokens[4]");
    assert!(t
        .warnings()
        .iter()
        .any(|w| w.contains("lacks the special token \"<|sepme|>\" (`sep_token`): added as id 1024")));
    // The fixture model has 1024 embeddings, so transformers' forward pass fails on these ids; ours
    // refuses at encoding, naming the token and where it comes from.
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("llama").join(f), d.join(f)).unwrap();
    }
    let m = reward_lens_engine::RewardModel::load(&d, &Default::default()).unwrap();
    let e = m.encode("hi", "yo", Truncation::Error).unwrap_err().to_string();
    assert!(
        e.starts_with("token id 1025 (at position 4: the special token \"<|padme|>\" (`pad_token` in tokenizer_config.json), which tokenizer.json lacks")
            && e.ends_with("is outside the model's vocabulary: config.json has vocab_size 1024"),
        "{e}"
    );

    // Every named token, then a model-specific one.
    let d = variant(
        "missing-specials-named",
        "llama",
        |_| {},
        |c| {
            for (k, v) in [
                ("image_token", "<|img|>"),
                ("mask_token", "<|m|>"),
                ("cls_token", "<|c|>"),
                ("unk_token", "<|u|>"),
                ("eos_token", "<|e|>"),
                ("pad_token", "<|p|>"),
            ] {
                c[k] = json!(v);
            }
        },
        &[],
    );
    let t = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
    let got: Vec<Option<u32>> =
        ["<|e|>", "<|u|>", "<|p|>", "<|c|>", "<|m|>", "<|img|>"].iter().map(|s| t.tokenizer.token_to_id(s)).collect();
    assert_eq!(got, (1024..1030).map(Some).collect::<Vec<_>>());

    // File order of model-specific keys (`video_token` before `zeta_token`), then an
    // extra_special_tokens object; `bos_token` first, wherever the file has it.
    let cfg = r#"{"video_token": "<|v|>", "backend": "tokenizers", "bos_token": "<|b2|>", "eos_token": "</s>",
        "extra_special_tokens": {"image_token": "<|img|>"}, "model_max_length": 512, "pad_token": "<pad>",
        "padding_side": "right", "tokenizer_class": "PreTrainedTokenizerFast", "zeta_token": "<|zt|>"}"#;
    let d = variant("missing-specials-order", "llama", |_| {}, |_| {}, &[("tokenizer_config.json", cfg)]);
    let t = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
    let got: Vec<Option<u32>> =
        ["<|b2|>", "<|v|>", "<|zt|>", "<|img|>"].iter().map(|s| t.tokenizer.token_to_id(s)).collect();
    assert_eq!(got, (1024..1028).map(Some).collect::<Vec<_>>());

    // Without added_tokens_decoder, special_tokens_map.json is read too: its named tokens in
    // attribute order, then its own model-specific keys in its order (`video` before `audio`),
    // then tokenizer_config.json's (`zeta_token`).
    let stm = r#"{"pad_token": "<|p|>", "video_token": "<|v|>", "audio_token": "<|a|>",
        "unk_token": {"content": "<|u|>", "lstrip": false}}"#;
    let d = variant(
        "missing-specials-stm",
        "llama",
        |_| {},
        |c| c["zeta_token"] = json!("<|zt|>"),
        &[("special_tokens_map.json", stm)],
    );
    let t = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
    let got: Vec<Option<u32>> =
        ["<|u|>", "<|p|>", "<|v|>", "<|a|>", "<|zt|>"].iter().map(|s| t.tokenizer.token_to_id(s)).collect();
    assert_eq!(got, (1024..1029).map(Some).collect::<Vec<_>>());

    // A special token in the model's vocabulary but not among tokenizer.json's added tokens
    // (`tion`, id 308) becomes an added token with its id, as in transformers: " tion" then
    // encodes as a space and 308, where the plain tokenizer gives 264, 913.
    let d = variant("specials-in-vocab", "llama", |_| {}, |c| c["sep_token"] = json!("tion"), &[]);
    let t = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
    let enc = |t: &ChatTokenizer| t.tokenizer.encode("xtion recipes tion", false).unwrap().get_ids().to_vec();
    assert_eq!(enc(&t), [94, 308, 323, 79, 86, 266, 227, 308]);
    assert_eq!(t.tokenizer.get_vocab_size(true), 1024);
    assert!(t.added_special(308).is_none(), "not a new id");
    assert_eq!(
        t.warnings(),
        ["tokenizer.json has the special token \"tion\" (`sep_token`, id 308) in its vocabulary only: matched \
          whole in text as an added token, as transformers matches it"]
    );
    let plain = ChatTokenizer::from_dir(&fixture("llama"), 4096, Some("llama")).unwrap();
    assert_eq!(enc(&plain), [94, 308, 323, 79, 86, 266, 264, 913]);
}

/// Where tokenizer_config.json leaves a special token out, the class transformers 5 instantiates
/// supplies its own default (an explicit null still unsets it); a default that tokenizer.json
/// lacks is then added like any other. Values and ids from transformers 5.25 on the same folders.
#[test]
fn class_default_special_tokens_stand_where_the_file_names_none() {
    const TPL: &str = "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ mask_token }}|\
                       {% for m in messages %}{{ m.content }}{% endfor %}";
    let drop_named = |c: &mut Value| {
        for k in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] {
            c.as_object_mut().unwrap().remove(k);
        }
    };
    // model_type qwen2 means Qwen2Tokenizer even under PreTrainedTokenizerFast: unk, eos and pad
    // default to <|endoftext|>, which the fixture's tokenizer.json lacks (added as 1024).
    let d = with_template("defaults-qwen2", drop_named, TPL, &[]);
    let t = ChatTokenizer::from_dir(&d, 4096, Some("qwen2")).unwrap();
    assert_eq!(t.render("p", "r").unwrap(), "|<|endoftext|>|<|endoftext|>|<|endoftext|>||pr");
    assert_eq!(t.tokenizer.token_to_id("<|endoftext|>"), Some(1024));
    // Named in the file (bos, pad) or unset with null (unk): the file wins.
    let d = with_template(
        "defaults-qwen2-partial",
        |c| {
            drop_named(c);
            c["bos_token"] = json!("<s>");
            c["pad_token"] = json!("<pad>");
            c["unk_token"] = Value::Null;
        },
        TPL,
        &[],
    );
    let t = ChatTokenizer::from_dir(&d, 4096, Some("qwen2")).unwrap();
    assert_eq!(t.render("p", "r").unwrap(), "<s>|<|endoftext|>||<pad>||pr");
    // GPT2Tokenizer (model_type gpt2, no class): bos, eos and unk.
    let d = with_template(
        "defaults-gpt2",
        |c| {
            drop_named(c);
            c.as_object_mut().unwrap().remove("tokenizer_class");
        },
        TPL,
        &[],
    );
    let t = ChatTokenizer::from_dir(&d, 4096, Some("gpt2")).unwrap();
    assert_eq!(t.render("p", "r").unwrap(), "<|endoftext|>|<|endoftext|>|<|endoftext|>|||pr");
    // A PreTrainedTokenizerFast of another model type has no defaults.
    let d = with_template("defaults-none", drop_named, TPL, &[]);
    let t = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
    assert!(t.render("p", "r").is_ok_and(|r| r == "|||||pr"));
    // LlamaTokenizer (a SentencePiece tokenizer.json): bos <s>, eos </s>, unk <unk>.
    let d = sp_llama("defaults-sp", "LlamaTokenizerFast", json!({}), TPL, |_| {});
    let mut c = read_json(&d.join("tokenizer_config.json"));
    drop_named(&mut c);
    std::fs::write(d.join("tokenizer_config.json"), c.to_string()).unwrap();
    let t = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
    assert_eq!(t.render("p", "r").unwrap(), "<s>|</s>|<unk>|||pr");

    // special_tokens_map.json, where transformers reads it (no added_tokens_decoder), overrides a
    // class default quietly; where it does not, the default stands and loading says why.
    let stm = [("special_tokens_map.json", r#"{"unk_token": "<|u|>"}"#)];
    let drop_unk = |c: &mut Value| drop(c.as_object_mut().unwrap().remove("unk_token"));
    let d = variant("defaults-stm-legacy", "qwen2", |_| {}, drop_unk, &stm);
    let t = ChatTokenizer::from_dir(&d, 4096, Some("qwen2")).unwrap();
    assert_eq!((t.tokenizer.token_to_id("<|u|>"), t.tokenizer.token_to_id("<|endoftext|>")), (Some(1024), None));
    assert_eq!(
        t.warnings(),
        ["tokenizer.json lacks the special token \"<|u|>\" (`unk_token`): added as id 1024, as transformers adds it"]
    );
    let d = variant(
        "defaults-stm-ignored",
        "qwen2",
        |_| {},
        |c| {
            drop_unk(c);
            c["added_tokens_decoder"] = json!({"0": {"content": "<pad>", "lstrip": false, "rstrip": false,
                "normalized": false, "single_word": false, "special": true}});
        },
        &stm,
    );
    let t = ChatTokenizer::from_dir(&d, 4096, Some("qwen2")).unwrap();
    assert_eq!((t.tokenizer.token_to_id("<|endoftext|>"), t.tokenizer.token_to_id("<|u|>")), (Some(1024), None));
    assert!(
        t.warnings().iter().any(|w| w
            == "special_tokens_map.json sets `unk_token` to \"<|u|>\", the tokenizer class defaults to \
                \"<|endoftext|>\": using the default (tokenizer_config.json has added_tokens_decoder, so \
                transformers does not read special_tokens_map.json)"),
        "{:?}",
        t.warnings()
    );
}
