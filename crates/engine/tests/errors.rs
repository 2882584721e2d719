//! Bad inputs give errors that name the file, field or tensor at fault (never a panic), and the
//! on-disk variants that should load do: sharded checkpoints and bf16 weights.

mod common;
use common::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use reward_lens_engine::config::SUPPORTED_ARCHITECTURES;
use reward_lens_engine::{
    Batch, DType, Device, EngineError, LoadOptions, PaddingSide, RewardModel, Tensor, Truncation,
};

/// A scratch copy of a fixture model directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(fixture: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "reward-lens-errors-{}-{}-{fixture}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(model_dir(fixture)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        Scratch(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    fn config(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.path("config.json")).unwrap()).unwrap()
    }
    fn write_config(&self, v: &serde_json::Value) {
        std::fs::write(self.path("config.json"), serde_json::to_string_pretty(v).unwrap()).unwrap();
    }
    fn tensors(&self) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(self.path("model.safetensors"), &Device::Cpu).unwrap()
    }
    fn write_tensors(&self, t: &HashMap<String, Tensor>) {
        candle_core::safetensors::save(t, self.path("model.safetensors")).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(dir: &Path) -> EngineError {
    match RewardModel::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{}: loaded, expected an error", dir.display()),
        Err(e) => e,
    }
}

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error message lacks `{p}`: {msg}");
    }
}

#[test]
fn missing_model_directory() {
    let e = load_err(Path::new("/nonexistent/reward-lens-model"));
    assert!(matches!(e, EngineError::Io { .. }), "{e}");
    has(&e.to_string(), &["/nonexistent/reward-lens-model"]);
}

#[test]
fn missing_config() {
    let s = Scratch::copy_of("llama");
    std::fs::remove_file(s.path("config.json")).unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::Io { ref path, .. } if path.ends_with("config.json")), "{e}");
    has(&e.to_string(), &["config.json", "cannot read file"]);
}

#[test]
fn corrupt_config() {
    let s = Scratch::copy_of("llama");
    std::fs::write(s.path("config.json"), "{\"architectures\": [\"LlamaForSequenceClassification\"], oops").unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::Json { .. }), "{e}");
    has(&e.to_string(), &["config.json", "not valid JSON", "line 1"]);
    // Valid JSON that is not an object.
    std::fs::write(s.path("config.json"), "[1, 2, 3]").unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::ConfigField { .. }), "{e}");
    has(&e.to_string(), &["config.json"]);
}

#[test]
fn config_missing_or_mistyped_fields() {
    let s = Scratch::copy_of("llama");
    let good = s.config();
    let mut v = good.clone();
    v.as_object_mut().unwrap().remove("hidden_size");
    s.write_config(&v);
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::ConfigField { ref field, .. } if field == "hidden_size"), "{e}");
    has(&e.to_string(), &["config.json", "hidden_size", "missing"]);

    let mut v = good.clone();
    v["num_hidden_layers"] = serde_json::json!("three");
    s.write_config(&v);
    let e = load_err(&s.0);
    has(&e.to_string(), &["config.json", "num_hidden_layers", "\"three\""]);

    let mut v = good.clone();
    v["num_key_value_heads"] = serde_json::json!(3);
    s.write_config(&v);
    has(&load_err(&s.0).to_string(), &["num_key_value_heads", "3"]);

    let mut v = good.clone();
    v["hidden_act"] = serde_json::json!("swoosh");
    s.write_config(&v);
    has(&load_err(&s.0).to_string(), &["hidden_act", "swoosh"]);

    let mut v = good.clone();
    v.as_object_mut().unwrap().remove("architectures");
    s.write_config(&v);
    has(&load_err(&s.0).to_string(), &["architectures", "missing"]);

    // A config that disagrees with the weights: the tensor and both shapes are named.
    let mut v = good;
    v["intermediate_size"] = serde_json::json!(100);
    s.write_config(&v);
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::ShapeMismatch { .. }), "{e}");
    has(&e.to_string(), &["model.layers.0.mlp.gate_proj.weight", "[172, 64]", "[100, 64]"]);
}

#[test]
fn unknown_architecture_lists_supported() {
    let s = Scratch::copy_of("llama");
    let mut v = s.config();
    v["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    s.write_config(&v);
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::UnsupportedArchitecture { .. }), "{e}");
    let msg = e.to_string();
    has(&msg, &["config.json", "BertForSequenceClassification"]);
    has(&msg, SUPPORTED_ARCHITECTURES);
    assert_eq!(SUPPORTED_ARCHITECTURES.len(), 7);
}

#[test]
fn missing_tensor_is_named() {
    let s = Scratch::copy_of("llama");
    let mut t = s.tensors();
    let name = "model.layers.1.mlp.up_proj.weight";
    assert!(t.remove(name).is_some());
    s.write_tensors(&t);
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::MissingTensor { name: ref n, .. } if n == name), "{e}");
    has(&e.to_string(), &[name, "model.safetensors"]);

    // The reward head too (GPT-2 layout).
    let s = Scratch::copy_of("gpt2");
    let mut t = s.tensors();
    assert!(t.remove("score.weight").is_some());
    s.write_tensors(&t);
    has(&load_err(&s.0).to_string(), &["score.weight"]);

    // ArmoRM's gating network.
    let s = Scratch::copy_of("armorm");
    let mut t = s.tensors();
    assert!(t.remove("gating.layers.2.bias").is_some());
    s.write_tensors(&t);
    has(&load_err(&s.0).to_string(), &["gating.layers.2.bias"]);
}

#[test]
fn wrong_shape_tensor_names_both_shapes() {
    let s = Scratch::copy_of("llama");
    let mut t = s.tensors();
    let name = "model.layers.2.mlp.down_proj.weight";
    let w = t[name].t().unwrap().contiguous().unwrap(); // stored transposed by mistake
    t.insert(name.into(), w);
    s.write_tensors(&t);
    let e = load_err(&s.0);
    assert!(
        matches!(e, EngineError::ShapeMismatch { name: ref n, ref file, ref expected, ref found } if n == name && file.ends_with("model.safetensors") && expected == &[64, 172] && found == &[172, 64]),
        "{e}"
    );
    has(&e.to_string(), &[name, "[172, 64]", "[64, 172]"]);

    // GPT-2's Conv1D weights are [in, out]; an nn.Linear-style [out, in] c_fc is caught.
    let s = Scratch::copy_of("gpt2");
    let mut t = s.tensors();
    let name = "transformer.h.0.mlp.c_fc.weight";
    let w = t[name].t().unwrap().contiguous().unwrap();
    t.insert(name.into(), w);
    s.write_tensors(&t);
    has(&load_err(&s.0).to_string(), &[name, "[172, 64]", "[64, 172]"]);
}

#[test]
fn non_finite_weight_is_named() {
    for (name, bad) in [("model.layers.0.self_attn.k_proj.weight", f32::NAN), ("model.norm.weight", f32::INFINITY)] {
        let s = Scratch::copy_of("llama");
        let mut t = s.tensors();
        let dims = t[name].dims().to_vec();
        let mut v: Vec<f32> = t[name].flatten_all().unwrap().to_vec1().unwrap();
        v[7] = bad;
        t.insert(name.into(), Tensor::from_vec(v, dims, &Device::Cpu).unwrap());
        s.write_tensors(&t);
        let e = load_err(&s.0);
        assert!(
            matches!(e, EngineError::NonFinite { name: ref n, ref file } if n == name && file.ends_with("model.safetensors")),
            "{e}"
        );
        has(&e.to_string(), &[name, "non-finite"]);
    }
}

#[test]
fn corrupt_or_missing_weight_files() {
    let s = Scratch::copy_of("llama");
    std::fs::write(s.path("model.safetensors"), b"definitely not a safetensors file").unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::Safetensors { .. }), "{e}");
    has(&e.to_string(), &["model.safetensors"]);

    std::fs::remove_file(s.path("model.safetensors")).unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::NoWeights { .. }), "{e}");
    has(&e.to_string(), &["model.safetensors", "model.safetensors.index.json"]);
}

#[test]
fn corrupt_or_missing_tokenizer() {
    let s = Scratch::copy_of("llama");
    std::fs::write(s.path("tokenizer.json"), "{\"version\": \"1.0\", \"model\": ").unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::Tokenizer { .. }), "{e}");
    has(&e.to_string(), &["tokenizer.json", "cannot load tokenizer"]);

    std::fs::remove_file(s.path("tokenizer.json")).unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::Tokenizer { .. }), "{e}");
    has(&e.to_string(), &["tokenizer.json", "not found"]);

    // A corrupt tokenizer_config.json is named too.
    let s = Scratch::copy_of("llama");
    std::fs::write(s.path("tokenizer_config.json"), "{ nope").unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::Json { .. }), "{e}");
    has(&e.to_string(), &["tokenizer_config.json"]);

    // A chat template that does not parse is reported at load, with its file.
    let s = Scratch::copy_of("llama");
    std::fs::write(s.path("chat_template.jinja"), "{% for m in messages %}{{ m.content }").unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::Template { .. }), "{e}");
    has(&e.to_string(), &["chat_template.jinja"]);
}

#[test]
fn empty_texts() {
    let model = load("llama");
    for (prompt, response, field) in
        [("", "Fine.", "prompt"), ("  \n\t", "Fine.", "prompt"), ("Hi?", "", "response"), ("Hi?", " \n ", "response")]
    {
        for trunc in [Truncation::Error, Truncation::DropPromptLeft] {
            let e = model.encode(prompt, response, trunc).unwrap_err();
            assert!(matches!(e, EngineError::EmptyText { field: f } if f == field), "{e}");
            has(&e.to_string(), &["empty", field]);
        }
    }
}

fn words(n: usize) -> String {
    const W: &[&str] = &["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "it", "rains"];
    (0..n).map(|i| W[i % W.len()]).collect::<Vec<_>>().join(" ")
}

#[test]
fn over_long_inputs() {
    let model = load("llama");
    let tok = model.tokenizer().unwrap();
    assert_eq!(tok.max_tokens, 512);
    let long = words(600);
    let short = "Water boils at 100 degrees Celsius at sea level.";

    // A long response: refused by default, and refused under DropPromptLeft (the response is
    // never cut).
    let e = model.encode("Tell me something.", &long, Truncation::Error).unwrap_err();
    assert!(matches!(e, EngineError::TooLong { max_tokens: 512, n_tokens, .. } if n_tokens > 512), "{e}");
    has(&e.to_string(), &["512", "truncation"]);
    let e = model.encode("Tell me something.", &long, Truncation::DropPromptLeft).unwrap_err();
    assert!(matches!(e, EngineError::ResponseTooLong { max_tokens: 512, .. }), "{e}");
    has(&e.to_string(), &["512", "refusing to cut the response"]);

    // A long prompt: refused by default; DropPromptLeft keeps BOS and the whole response.
    let e = model.encode(&long, short, Truncation::Error).unwrap_err();
    let n_full = match e {
        EngineError::TooLong { n_tokens, max_tokens: 512, .. } => n_tokens,
        e => panic!("expected TooLong, got {e}"),
    };
    let enc = model.encode(&long, short, Truncation::DropPromptLeft).unwrap();
    let full = tok.tokenizer.encode(enc.text.as_str(), false).unwrap().get_ids().to_vec();
    assert_eq!(full.len(), n_full);
    assert_eq!(enc.ids.len(), 512, "truncated to the context");
    assert_eq!(enc.dropped, n_full - 512);
    assert_eq!(enc.ids[0], 1, "BOS kept");
    assert_eq!(full[0], 1);
    assert_eq!(&enc.ids[1..], &full[1 + enc.dropped..], "cut right after BOS, the rest intact");
    // The response (and the template after it) survive exactly.
    let untruncated_resp = model.encode("Q?", short, Truncation::Error).unwrap();
    let resp_tail = &untruncated_resp.ids[untruncated_resp.response_start..];
    assert!(enc.ids.ends_with(resp_tail), "response tokens changed");
    assert_eq!(&enc.ids[enc.response_start..], resp_tail);
    assert_eq!(*enc.ids.last().unwrap(), 6, "ends with <|end|>");
    // ... and it scores.
    let s = model.score(&model.batch(&[enc.ids], PaddingSide::Right).unwrap()).unwrap().scores[0];
    assert!(s.is_finite());

    // The longest prompt that fits needs no truncation; one word more is refused.
    let n = (100..300).rev().find(|&n| model.encode(&words(n), short, Truncation::Error).is_ok()).unwrap();
    let fits = model.encode(&words(n), short, Truncation::Error).unwrap();
    assert!(fits.ids.len() <= 512 && fits.ids.len() > 500 && fits.dropped == 0, "{}", fits.ids.len());
    let n_over = match model.encode(&words(n + 1), short, Truncation::Error).unwrap_err() {
        EngineError::TooLong { n_tokens, .. } => n_tokens,
        e => panic!("expected TooLong, got {e}"),
    };
    let cut = model.encode(&words(n + 1), short, Truncation::DropPromptLeft).unwrap();
    assert_eq!((cut.ids.len(), cut.dropped), (512, n_over - 512));
}

#[test]
fn token_ids_outside_the_vocabulary() {
    for name in ["llama", "gpt2"] {
        let model = load(name);
        for bad in [1024u32, 5000, u32::MAX] {
            let batch = model.batch(&[vec![1, 10, 20], vec![1, bad, 6]], PaddingSide::Right).unwrap();
            let e = model.score(&batch).unwrap_err();
            assert!(matches!(e, EngineError::TokenOutOfRange { id, vocab: 1024, .. } if id == bad), "{e}");
            has(&e.to_string(), &[&bad.to_string(), "1024", "vocab_size", "sequence 1 of the batch, position 1"]);
            // Gradients check too.
            let e = model
                .gradients(
                    &batch,
                    &reward_lens_engine::SiteFilter::all(),
                    &[1.0, 1.0],
                    &reward_lens_engine::Hooks::none(),
                )
                .err()
                .unwrap();
            assert!(matches!(e, EngineError::TokenOutOfRange { .. }), "{e}");
        }
        let ok = model.batch(&[vec![1, 1023, 6]], PaddingSide::Right).unwrap();
        assert!(model.score(&ok).unwrap().scores[0].is_finite());
    }
}

#[test]
fn bad_batches() {
    let model = load("llama");
    let e = model.batch(&[], PaddingSide::Right).unwrap_err();
    has(&e.to_string(), &["empty batch"]);
    let e = model.batch(&[vec![1, 2], vec![]], PaddingSide::Right).unwrap_err();
    has(&e.to_string(), &["sequence 1"]);
    let e = Batch::new(&[vec![]], 0, PaddingSide::Left).unwrap_err();
    assert!(matches!(e, EngineError::Invalid(_)), "{e}");
    // ArmoRM without its gating pattern: the row is named.
    let armorm = load("armorm");
    let good = {
        let p = &pairs()[0];
        armorm.encode(p["prompt"].as_str().unwrap(), p["chosen"].as_str().unwrap(), Truncation::Error).unwrap().ids
    };
    let batch = armorm.batch(&[good, vec![1, 3, 50, 60, 6]], PaddingSide::Right).unwrap();
    let e = armorm.score(&batch).unwrap_err();
    assert!(matches!(e, EngineError::GatingPatternMissing { row: 1, .. }), "{e}");
    has(&e.to_string(), &["sequence 1", "[6, 4, 205]"]);
}

fn all_pair_ids(model: &RewardModel) -> Vec<Vec<u32>> {
    pairs()
        .iter()
        .flat_map(|p| {
            ["chosen", "rejected"].map(|side| {
                model.encode(p["prompt"].as_str().unwrap(), p[side].as_str().unwrap(), Truncation::Error).unwrap().ids
            })
        })
        .collect()
}

#[test]
fn sharded_checkpoint_scores_like_the_single_file() {
    for fixture in ["llama", "gpt2", "armorm"] {
        let reference = load(fixture);
        let s = Scratch::copy_of(fixture);
        let tensors = s.tensors();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        let (mut a, mut b) = (HashMap::new(), HashMap::new());
        let mut map = serde_json::Map::new();
        for (i, n) in names.iter().enumerate() {
            let (shard, file) = if i % 2 == 0 {
                (&mut a, "model-00001-of-00002.safetensors")
            } else {
                (&mut b, "model-00002-of-00002.safetensors")
            };
            shard.insert((*n).clone(), tensors[*n].clone());
            map.insert((*n).clone(), serde_json::json!(file));
        }
        candle_core::safetensors::save(&a, s.path("model-00001-of-00002.safetensors")).unwrap();
        candle_core::safetensors::save(&b, s.path("model-00002-of-00002.safetensors")).unwrap();
        std::fs::remove_file(s.path("model.safetensors")).unwrap();
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(s.path("model.safetensors.index.json"), index.to_string()).unwrap();

        let sharded = RewardModel::load(&s.0, &LoadOptions::default()).unwrap_or_else(|e| panic!("{fixture}: {e}"));
        assert_eq!(sharded.n_params, reference.n_params, "{fixture}");
        let seqs = all_pair_ids(&reference);
        let batch = reference.batch(&seqs, PaddingSide::Right).unwrap();
        let (x, y) = (reference.score(&batch).unwrap(), sharded.score(&batch).unwrap());
        assert_eq!(x.scores, y.scores, "{fixture}: sharded scores differ");

        // A shard named in the index but missing is named.
        std::fs::remove_file(s.path("model-00002-of-00002.safetensors")).unwrap();
        let e = load_err(&s.0);
        assert!(matches!(e, EngineError::Io { .. }), "{e}");
        has(&e.to_string(), &["model-00002-of-00002.safetensors"]);
        // An index without a weight map is named.
        std::fs::write(s.path("model.safetensors.index.json"), "{\"metadata\": {}}").unwrap();
        let e = load_err(&s.0);
        has(&e.to_string(), &["model.safetensors.index.json", "weight_map"]);
    }
}

#[test]
fn bf16_checkpoint_loads_in_f32() {
    for fixture in ["llama", "gemma2", "gpt2"] {
        let reference = load(fixture);
        assert_eq!(reference.disk_dtype, Some(DType::F32));
        let s = Scratch::copy_of(fixture);
        let t: HashMap<String, Tensor> =
            s.tensors().into_iter().map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap())).collect();
        s.write_tensors(&t);
        let m = RewardModel::load(&s.0, &LoadOptions::default()).unwrap_or_else(|e| panic!("{fixture}: {e}"));
        assert_eq!(m.disk_dtype, Some(DType::BF16), "{fixture}");
        assert_eq!(m.dtype, DType::F32);
        assert_eq!(m.info().disk_dtype.as_deref(), Some("bf16"));
        assert_eq!(m.info().compute_dtype, "f32");
        let seqs = all_pair_ids(&reference);
        let batch = reference.batch(&seqs, PaddingSide::Right).unwrap();
        let (x, y) = (reference.score(&batch).unwrap().scores, m.score(&batch).unwrap().scores);
        let d = max_abs_diff(&x, &y);
        assert!(d <= 5e-2, "{fixture}: bf16 weights move scores by {d}");
        assert!(d > 0.0, "{fixture}: bf16 rounding should change something");
    }
}

#[test]
fn learned_positions_bound_the_sequence_length() {
    let model = load("gpt2");
    let ids = vec![5u32; model.config.max_position_embeddings + 1];
    let e = model.score(&model.batch(&[ids], reward_lens_engine::PaddingSide::Right).unwrap()).expect_err("too long");
    assert!(matches!(e, EngineError::TooLong { n_tokens: 257, max_tokens: 256, .. }), "{e}");
}

/// A degenerate config value is refused at load, naming the file and the field (class: values
/// that would make every score NaN).
#[test]
fn degenerate_config_values_name_file_and_field() {
    let llama_theta = serde_json::json!({"rope_theta": 0, "rope_type": "default"});
    for (fixture, field, value) in [
        ("llama", "rope_parameters", llama_theta),
        ("llama", "rms_norm_eps", serde_json::json!(-1e-6)),
        ("gemma2", "query_pre_attn_scalar", serde_json::json!(0)),
        ("gemma2", "attn_logit_softcapping", serde_json::json!(0.0)),
        ("armorm", "gating_temperature", serde_json::json!(0.0)),
        ("gpt2", "layer_norm_epsilon", serde_json::json!(-1.0)),
        ("qwen2", "num_hidden_layers", serde_json::json!(1u64 << 40)),
        ("mistral", "sliding_window", serde_json::json!(0)),
        ("mistral", "num_key_value_heads", serde_json::json!(3)),
        ("qwen3", "rms_norm_eps", serde_json::json!(0.0)),
        ("qwen3", "vocab_size", serde_json::json!(0)),
        ("llama", "max_position_embeddings", serde_json::json!(0)),
        ("llama", "hidden_size", serde_json::json!(1u64 << 20)),
        ("llama", "intermediate_size", serde_json::json!(1u64 << 30)),
        ("llama", "num_attention_heads", serde_json::json!(0)),
        ("gemma2", "final_logit_softcapping", serde_json::json!(-30.0)),
        ("gemma2", "head_dim", serde_json::json!(0)),
        ("armorm", "num_objectives", serde_json::json!(0)),
        ("armorm", "gating_hidden_dim", serde_json::json!(1u64 << 30)),
        ("gpt2", "n_positions", serde_json::json!(0)),
        ("gpt2", "n_head", serde_json::json!(5)),
    ] {
        let s = Scratch::copy_of(fixture);
        let mut v = s.config();
        v[field] = value;
        s.write_config(&v);
        let e = load_err(&s.0);
        assert!(matches!(e, EngineError::ConfigField { .. }), "{fixture} {field}: {e}");
        let named = match field {
            "rope_parameters" => "rope_parameters.rope_theta",
            // 64 is not divisible by 5 heads: the width is the field at fault.
            "n_head" => "n_embd",
            f => f,
        };
        has(&e.to_string(), &["config.json", &format!("`{named}`")]);
    }
}

/// The llama fixture with `names` scaled by 1e30 (finite, so loading accepts them), its first
/// `n` pairs as if read from `pairs.jsonl` from line `first_line` on, and the error scoring them
/// gives.
fn scaled_llama_scored(
    names: &[&str],
    n: usize,
    first_line: usize,
) -> (Scratch, RewardModel, Vec<reward_lens_engine::EncodedPair>, EngineError) {
    use reward_lens_engine::{PairText, ScoreOptions};
    let s = Scratch::copy_of("llama");
    let mut t = s.tensors();
    for &name in names {
        let w = t[name].clone();
        t.insert(name.into(), (w * 1e30).unwrap());
    }
    s.write_tensors(&t);
    let model = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
    let mut texts: Vec<PairText> = pairs().into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
    texts.truncate(n);
    for (i, p) in texts.iter_mut().enumerate() {
        let file = std::path::Path::new("pairs.jsonl").into();
        p.origin = Some(reward_lens_engine::Origin { file, line: first_line + i });
    }
    let enc = model.encode_pairs(&texts, Truncation::Error).unwrap();
    let e = model.score_pair_texts(&texts, &enc, &ScoreOptions::default(), &mut |_| {}).unwrap_err();
    (s, model, enc, e)
}

/// A reward that overflows is an error naming the pair's file and line and the side, never a
/// NaN or infinity in the output.
#[test]
fn non_finite_reward_names_the_pair() {
    // Each finite on its own (the load-time scan accepts them); their product overflows f32.
    let (_s, model, enc, e) = scaled_llama_scored(&["score.weight", "model.norm.weight"], 3, 10);
    has(&e.to_string(), &["chosen", "not a number", "overflowed f32 itself"]);
    // Every pair overflows; the first batch scored (the longest pairs) names one of them.
    assert!(["pairs.jsonl:10:", "pairs.jsonl:11:", "pairs.jsonl:12:"].iter().any(|l| e.to_string().contains(l)), "{e}");
    // The run is already in f32: suggesting it would send the user in a circle.
    assert!(!e.to_string().contains("--dtype f32"), "{e}");
    let batch = model.batch(&[enc[0].chosen.clone()], PaddingSide::Right).unwrap();
    assert!(matches!(model.score(&batch).unwrap_err(), EngineError::NonFiniteReward { row: 0, .. }));
}

/// A tokenizer whose ids exceed the config's vocabulary is named at encoding time.
#[test]
fn tokenizer_from_another_model_is_named() {
    let s = Scratch::copy_of("llama");
    let mut v = s.config();
    v["vocab_size"] = serde_json::json!(100);
    s.write_config(&v);
    let mut t = s.tensors();
    let embed = t["model.embed_tokens.weight"].narrow(0, 0, 100).unwrap();
    t.insert("model.embed_tokens.weight".into(), embed);
    s.write_tensors(&t);
    let model = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
    let e = model.encode("How do I boil an egg?", "Simmer it for nine minutes.", Truncation::Error).unwrap_err();
    has(&e.to_string(), &["tokenizer.json", "vocab_size 100"]);
}

/// The checkpoint must be the network its config describes: an extra layer or an unknown tensor
/// is an error naming the tensor and file; a known harmless extra is a named warning.
#[test]
fn checkpoint_must_match_its_config() {
    let s = Scratch::copy_of("llama");
    let clean = s.tensors();
    let extra = |name: &str| {
        let mut t = clean.clone();
        t.insert(name.into(), Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap());
        s.write_tensors(&t);
    };
    extra("model.layers.3.mlp.up_proj.weight");
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::UnexpectedTensor { .. }), "{e}");
    has(
        &e.to_string(),
        &["model.layers.3.mlp.up_proj.weight", "model.safetensors", "layer 3", "num_hidden_layers = 3"],
    );
    extra("classifier.dense.weight");
    has(&load_err(&s.0).to_string(), &["classifier.dense.weight", "LlamaForSequenceClassification", "does not match"]);
    // transformers' score head has no bias: a stored one would shift every reward.
    let mut t = clean.clone();
    t.insert("score.bias".into(), Tensor::new(&[0.75f32], &Device::Cpu).unwrap());
    s.write_tensors(&t);
    has(&load_err(&s.0).to_string(), &["score.bias", "has no bias there in transformers", "drops this tensor"]);
    extra("lm_head.weight");
    let m = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    has(&m.warnings[0], &["lm_head.weight", "model.safetensors", "ignored"]);
    // And the clean checkpoint loads without warnings.
    s.write_tensors(&clean);
    assert!(RewardModel::load(&s.0, &LoadOptions::default()).unwrap().warnings.is_empty());
}

/// A multi-label classifier is not a reward model: refused by the label count.
#[test]
fn multi_label_head_is_refused() {
    let s = Scratch::copy_of("qwen2");
    let mut v = s.config();
    v["id2label"] = serde_json::json!({"0": "bad", "1": "good"});
    s.write_config(&v);
    let mut t = s.tensors();
    let w = t["score.weight"].clone();
    t.insert("score.weight".into(), Tensor::cat(&[&w, &w], 0).unwrap());
    s.write_tensors(&t);
    has(&load_err(&s.0).to_string(), &["config.json", "`id2label`", "2 labels", "multi-label"]);
}

#[test]
fn a_file_given_as_the_model_folder_says_so() {
    let s = Scratch::copy_of("llama");
    has(&load_err(&s.path("config.json")).to_string(), &["config.json", "is a file, expected a model folder"]);
}

/// model.safetensors beside an index naming other shards (a model saved as one file where a
/// sharded one was): one is stale, and which one is refused rather than guessed.
#[test]
fn a_single_file_beside_an_index_of_other_shards_is_refused() {
    let s = Scratch::copy_of("llama");
    std::fs::copy(s.path("model.safetensors"), s.path("old.safetensors")).unwrap();
    let map: serde_json::Map<String, serde_json::Value> =
        s.tensors().keys().map(|n| (n.clone(), serde_json::json!("old.safetensors"))).collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(s.path("model.safetensors.index.json"), index.to_string()).unwrap();
    has(&load_err(&s.0).to_string(), &["model.safetensors.index.json", "model.safetensors is here too", "stale"]);
    std::fs::remove_file(s.path("model.safetensors")).unwrap();
    RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
}

/// Weight files must be regular files inside the model folder: escapes, devices, FIFOs and
/// broken or looping links are refused without being opened; HuggingFace-cache symlinks load.
#[test]
fn weight_paths_are_confined_and_regular() {
    use std::os::unix::fs::symlink;
    let s = Scratch::copy_of("llama");
    let names: Vec<String> = s.tensors().keys().cloned().collect();
    let index = |bad: &str| {
        let mut map: serde_json::Map<String, serde_json::Value> =
            names.iter().map(|n| (n.clone(), serde_json::json!("model.safetensors"))).collect();
        map.insert("score.weight".into(), serde_json::json!(bad));
        let v = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(s.path("model.safetensors.index.json"), v.to_string()).unwrap();
    };
    for bad in ["../../etc/passwd", "/dev/zero", "/etc/passwd", "", "sub/../../x.safetensors"] {
        index(bad);
        let e = load_err(&s.0);
        assert!(matches!(e, EngineError::BadPath { .. }), "{bad}: {e}");
        has(&e.to_string(), &["model.safetensors.index.json", "weight_map.score.weight", "inside the model folder"]);
    }
    std::fs::remove_file(s.path("model.safetensors.index.json")).unwrap();

    // A FIFO where the weights should be: refused at once, not a blocked read.
    let weights = s.path("model.safetensors");
    let saved = s.path("weights.bak");
    std::fs::rename(&weights, &saved).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&weights).status().unwrap().success());
    has(&load_err(&s.0).to_string(), &["model.safetensors", "not a regular file"]);
    std::fs::remove_file(&weights).unwrap();
    // Also a FIFO as config.json.
    let config = s.path("config.json");
    let config_bak = s.path("config.bak");
    std::fs::rename(&config, &config_bak).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&config).status().unwrap().success());
    std::fs::rename(&saved, &weights).unwrap();
    has(&load_err(&s.0).to_string(), &["config.json", "not a regular file"]);
    std::fs::remove_file(&config).unwrap();
    std::fs::rename(&config_bak, &config).unwrap();

    // A symlink loop and a dangling link say so, instead of "no weights found".
    std::fs::rename(&weights, &saved).unwrap();
    symlink("model.safetensors", &weights).unwrap();
    has(&load_err(&s.0).to_string(), &["model.safetensors", "symbolic link", "loop"]);
    std::fs::remove_file(&weights).unwrap();

    // The HuggingFace cache layout: snapshots/<rev>/* are links into ../../blobs.
    let hub = s.path("hub");
    std::fs::create_dir_all(hub.join("blobs")).unwrap();
    std::fs::create_dir_all(hub.join("snapshots/abc123")).unwrap();
    std::fs::rename(&saved, &weights).unwrap();
    for entry in std::fs::read_dir(&s.0).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let name = p.file_name().unwrap().to_owned();
            let blob = hub.join("blobs").join(format!("blob-{}", name.to_string_lossy()));
            std::fs::copy(&p, &blob).unwrap();
            symlink(Path::new("../../blobs").join(blob.file_name().unwrap()), hub.join("snapshots/abc123").join(&name))
                .unwrap();
        }
    }
    let linked = RewardModel::load(&hub.join("snapshots/abc123"), &LoadOptions::default()).unwrap();
    let direct = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
    // Tokenizer, template and weights all come through the links: same ids, same rewards.
    let seqs = all_pair_ids(&direct);
    assert_eq!(all_pair_ids(&linked), seqs);
    let b = direct.batch(&seqs, PaddingSide::Right).unwrap();
    let (x, y) = (linked.score(&b).unwrap().scores, direct.score(&b).unwrap().scores);
    assert_eq!(x.len(), seqs.len());
    assert!(x.iter().all(|r| r.is_finite()));
    assert_eq!(x, y);
}

/// A config for a far larger network than the weights hold is refused before any layer is built,
/// naming config.json and the size field that does not match (within the size caps, so only the
/// comparison with the stored weights can catch it).
#[test]
fn config_implying_far_more_parameters_than_stored_is_refused() {
    for (fixture, field, value, named) in [
        ("llama", "num_hidden_layers", serde_json::json!(200), "`num_hidden_layers`"),
        ("gpt2", "n_layer", serde_json::json!(500), "`n_layer`"),
        ("qwen2", "intermediate_size", serde_json::json!(1 << 18), "intermediate_size"),
        ("mistral", "vocab_size", serde_json::json!(1 << 21), "vocab_size"),
    ] {
        let s = Scratch::copy_of(fixture);
        let mut v = s.config();
        let stored = RewardModel::load(&s.0, &LoadOptions::default()).unwrap().n_params;
        v[field] = value;
        s.write_config(&v);
        let e = load_err(&s.0);
        assert!(matches!(e, EngineError::ConfigField { .. }), "{fixture} {field}: {e}");
        has(&e.to_string(), &["config.json", named, "more than twice", "does not describe this checkpoint"]);
        // The stored count in the message is the checkpoint's, not the config's.
        let msg = e.to_string();
        let found: u128 = msg.split("more than twice the ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(found >= stored as u128, "{fixture}: {found} < {stored}: {msg}");
    }
}

/// A two-row score head under a one-label config is refused by the tensor's name, with both
/// shapes: its first row alone would be a silent wrong reward. ArmoRM's multi-objective
/// regression layer (many rows) is the supported exception and loads.
#[test]
fn multi_row_score_head_is_named_unless_multi_objective() {
    for fixture in ["llama", "gpt2"] {
        let s = Scratch::copy_of(fixture);
        let mut t = s.tensors();
        let w = t["score.weight"].clone();
        let d = w.dims()[1];
        t.insert("score.weight".into(), Tensor::cat(&[&w, &w], 0).unwrap());
        s.write_tensors(&t);
        let e = load_err(&s.0);
        assert!(matches!(e, EngineError::ShapeMismatch { .. }), "{fixture}: {e}");
        has(&e.to_string(), &["score.weight", "model.safetensors", &format!("[2, {d}]"), &format!("[1, {d}]")]);
    }
    // GPT-2's layers are `h.N`: one beyond n_layer is named like Llama's `layers.N`.
    let s = Scratch::copy_of("gpt2");
    let n = s.config()["n_layer"].as_u64().unwrap();
    let mut t = s.tensors();
    let extra = format!("transformer.h.{n}.mlp.c_fc.weight");
    t.insert(extra.clone(), Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap());
    s.write_tensors(&t);
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::UnexpectedTensor { .. }), "{e}");
    has(&e.to_string(), &[&extra, &format!("layer {n}"), &format!("n_layer = {n}")]);

    let armo = load("armorm");
    let k = armo.config.gating.as_ref().unwrap().num_objectives;
    assert!(k > 1, "the ArmoRM fixture has {k} objectives");
    assert!(armo.warnings.is_empty(), "{:?}", armo.warnings);
}

/// The small text files of a model folder are read whole only when they are regular files of a
/// sane size: a huge (here sparse) config.json, a FIFO as the shard index and a dangling
/// chat_template.jinja link are each refused by name, never read without end or skipped.
#[test]
fn text_files_are_bounded_and_regular() {
    use std::os::unix::fs::symlink;
    let s = Scratch::copy_of("llama");
    let config = s.path("config.json");
    let saved = std::fs::read(&config).unwrap();
    std::fs::OpenOptions::new().write(true).open(&config).unwrap().set_len(65 << 20).unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::BadPath { .. }), "{e}");
    has(&e.to_string(), &["config.json", &format!("{} bytes", 65u64 << 20), "at most 64 MiB"]);
    std::fs::write(&config, &saved).unwrap();
    // tokenizer.json may be larger (big vocabularies) but not without bound.
    let tok = s.path("tokenizer.json");
    let tok_saved = std::fs::read(&tok).unwrap();
    std::fs::OpenOptions::new().write(true).open(&tok).unwrap().set_len((1 << 30) + 1).unwrap();
    has(&load_err(&s.0).to_string(), &["tokenizer.json", "at most 1024 MiB"]);
    std::fs::write(&tok, &tok_saved).unwrap();

    let index = s.path("model.safetensors.index.json");
    assert!(std::process::Command::new("mkfifo").arg(&index).status().unwrap().success());
    has(
        &load_err(&s.0).to_string(),
        &["model.safetensors.index.json", "not a regular file", "expected a regular file"],
    );
    std::fs::remove_file(&index).unwrap();

    let jinja = s.path("chat_template.jinja");
    let _ = std::fs::remove_file(&jinja);
    symlink("nowhere.jinja", &jinja).unwrap();
    has(&load_err(&s.0).to_string(), &["chat_template.jinja", "does not resolve"]);
    std::fs::remove_file(&jinja).unwrap();

    // A missing config.json keeps its plain "not found" cause (no talk of weight files).
    std::fs::remove_file(&config).unwrap();
    let e = load_err(&s.0).to_string();
    has(&e, &["config.json", "cannot read file"]);
    assert!(!e.contains("weight file"), "{e}");
}

/// A shard index must map something, and a tensor stored in two shards is ambiguous (the
/// loader would otherwise take whichever copy came last): both are named.
#[test]
fn empty_index_and_duplicated_tensors_are_named() {
    let s = Scratch::copy_of("llama");
    let tensors = s.tensors();
    std::fs::write(s.path("model.safetensors.index.json"), r#"{"metadata": {}, "weight_map": {}}"#).unwrap();
    has(&load_err(&s.0).to_string(), &["model.safetensors.index.json", "`weight_map`", "is empty"]);

    // Shard 2 repeats score.weight with other values.
    let mut second = HashMap::new();
    second.insert("score.weight".to_string(), (tensors["score.weight"].clone() * 2.0).unwrap());
    candle_core::safetensors::save(&second, s.path("model-00002-of-00002.safetensors")).unwrap();
    let mut map: serde_json::Map<String, serde_json::Value> =
        tensors.keys().map(|n| (n.clone(), serde_json::json!("model.safetensors"))).collect();
    map.insert("score.weight".into(), serde_json::json!("model-00002-of-00002.safetensors"));
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(s.path("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::DuplicateTensor { .. }), "{e}");
    has(
        &e.to_string(),
        &["`score.weight`", "stored more than once", "model.safetensors", "model-00002-of-00002.safetensors"],
    );
}

/// ArmoRM's gate position comes from `token_pattern` in modeling_custom.py (read as text, never
/// run); a pattern with an id beyond the vocabulary could never match, so it is named at load.
#[test]
fn armorm_pattern_outside_the_vocabulary_is_named() {
    let s = Scratch::copy_of("armorm");
    let vocab = s.config()["vocab_size"].as_u64().unwrap();
    let path = s.path("modeling_custom.py");
    let code = std::fs::read_to_string(&path).unwrap();
    assert!(code.contains("token_pattern = [6, 4, 205]"));
    std::fs::write(&path, code.replace("token_pattern = [6, 4, 205]", &format!("token_pattern = [6, 4, {vocab}]")))
        .unwrap();
    let e = load_err(&s.0);
    has(&e.to_string(), &["modeling_custom.py", "`token_pattern`", &format!("below vocab_size {vocab}")]);
}

/// Finite weights whose activations overflow f32 inside the final norm (|x| ≈ 1e31: the mean
/// square is ∞, the normalized row x / ∞ = 0) would score every sequence at the head's bias, 0
/// here, a finite reward the model never computed. It is refused as NaN, naming the pair.
#[test]
fn residual_overflow_at_the_final_norm_is_not_a_reward() {
    let (_s, model, enc, e) = scaled_llama_scored(&["model.layers.0.mlp.down_proj.weight"], 2, 3);
    has(&e.to_string(), &["pairs.jsonl:3", "chosen", "NaN", "overflow"]);
    // The residual entering the final norm is finite, just too large to square in f32.
    let batch = model.batch(&[enc[0].chosen.clone()], PaddingSide::Right).unwrap();
    let prepared = model.prepare(&batch).unwrap();
    let none = reward_lens_engine::Hooks::none();
    let (x, _) = prepared.embed(&none).unwrap();
    let (x, _) = prepared.blocks(x, 0..3, &none).unwrap();
    let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    assert!(x.iter().all(|v| v.is_finite()));
    assert!(x.iter().any(|v| v.abs() > 2e19), "max |x| {}", x.iter().fold(0f32, |m, v| m.max(v.abs())));
    let err = prepared.head(&prepared.blocks(prepared.embed(&none).unwrap().0, 0..3, &none).unwrap().0, &none);
    assert!(matches!(err, Err(EngineError::NonFiniteReward { row: 0, value, .. }) if value.is_nan()));
}

/// ArmoRM pools at its first pad − 1: with a pad id that also occurs in the text (here
/// `<|end|>`), that rule must read each sequence's own tokens. On a left-padded row the first pad
/// would be the padding, and the reward would depend on the batch's other sequences.
#[test]
fn armorm_pools_each_sequence_by_its_own_tokens_whatever_the_padding() {
    use reward_lens_engine::{PairText, ScoreOptions, Truncation};
    let s = Scratch::copy_of("armorm");
    let mut v = s.config();
    v["pad_token_id"] = serde_json::json!(6);
    s.write_config(&v);
    let model = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
    let texts: Vec<PairText> = common::pairs().into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
    let enc = model.encode_pairs(&texts, Truncation::Error).unwrap();
    assert!(enc.iter().all(|e| e.chosen.contains(&6)), "the pad id occurs in the text");
    let seqs: Vec<Vec<u32>> = enc.iter().flat_map(|e| [e.chosen.clone(), e.rejected.clone()]).collect();
    let alone: Vec<usize> = enc.iter().flat_map(|e| [e.pooled.0, e.pooled.1]).collect();
    for side in [PaddingSide::Right, PaddingSide::Left] {
        let batch = model.batch(&seqs, side).unwrap();
        let pooled = model.pooled_index(&batch);
        for (b, (&p, &a)) in pooled.iter().zip(&alone).enumerate() {
            assert_eq!(p, batch.offset(b) + a, "{side:?} row {b}");
        }
    }
    let run = |padding| model.score_pairs(&enc, &ScoreOptions { batch_size: 16, padding }, &mut |_| {}).unwrap();
    let (right, left) = (run(PaddingSide::Right), run(PaddingSide::Left));
    for (r, l) in right.iter().zip(&left) {
        assert!((r.chosen - l.chosen).abs() < 1e-5 && (r.rejected - l.rejected).abs() < 1e-5, "{r:?} {l:?}");
    }
}

/// Token ids are u32: a larger number in config.json would be cut to 32 bits and silently name
/// another token (4294967302 became 6), and transformers refuses a list for `pad_token_id`
/// (a list used to mean "its first entry", an empty one "no pad"). Each is refused by file,
/// field and value; `eos_token_id` keeps its legitimate list form.
#[test]
fn token_ids_beyond_u32_or_listed_pads_are_refused() {
    use serde_json::json;
    for (fixture, field, value, expect) in [
        ("llama", "pad_token_id", json!(4_294_967_302u64), "4294967302"),
        ("llama", "pad_token_id", json!([6, 0]), "[6,0]"),
        ("llama", "pad_token_id", json!([]), "[]"),
        ("llama", "eos_token_id", json!([2, 4_294_967_302u64]), "4294967302"),
        ("llama", "bos_token_id", json!(4_294_967_297u64), "4294967297"),
        ("armorm", "gating_token_pattern", json!([6, 4, 4_294_967_501u64]), "4294967501"),
    ] {
        let s = Scratch::copy_of(fixture);
        let mut v = s.config();
        v[field] = value;
        s.write_config(&v);
        let e = load_err(&s.0);
        assert!(matches!(e, EngineError::ConfigField { field: ref f, .. } if f == field), "{field}: {e}");
        has(&e.to_string(), &["config.json", &format!("`{field}`"), expect]);
    }
    // A list of stop tokens stays a valid eos_token_id.
    let s = Scratch::copy_of("llama");
    let mut v = s.config();
    v["eos_token_id"] = json!([2, 6]);
    s.write_config(&v);
    let model = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
    assert_eq!(model.config.eos_token_id, Some(2));
}

fn gate_pattern(model: &RewardModel) -> Vec<u32> {
    match &model.head {
        reward_lens_engine::head::RewardHead::Gated(g) => g.token_pattern.clone(),
        _ => panic!("not a gated head"),
    }
}

/// The armorm fixture with its `token_pattern = [6, 4, 205]` line replaced by `code`.
fn armorm_with_pattern(code: &str) -> Scratch {
    let s = Scratch::copy_of("armorm");
    let path = s.path("modeling_custom.py");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\ntoken_pattern = [6, 4, 205]\n"));
    std::fs::write(&path, text.replace("\ntoken_pattern = [6, 4, 205]\n", &format!("\n{code}\n"))).unwrap();
    s
}

/// ArmoRM gates where `token_pattern` in modeling_custom.py says, whatever Python layout writes
/// the list: a trailing comma or a list over several lines used to read as "no pattern", and the
/// loader silently derived another one (rewards off by up to 0.03).
#[test]
fn armorm_pattern_is_read_in_any_python_layout() {
    let scores = |s: &Scratch| {
        let model = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
        let texts: Vec<reward_lens_engine::PairText> =
            common::pairs().into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
        let enc = model.encode_pairs(&texts, Truncation::Error).unwrap();
        let opts = reward_lens_engine::ScoreOptions { batch_size: 16, padding: PaddingSide::Right };
        let out = model.score_pairs(&enc, &opts, &mut |_| {}).unwrap();
        (gate_pattern(&model), out.iter().flat_map(|r| [r.chosen, r.rejected]).collect::<Vec<f32>>())
    };
    // [4, 205] is not the pattern the template's boundary would give, so a fallback shows.
    let (pattern, reference) = scores(&armorm_with_pattern("token_pattern = [4, 205]"));
    assert_eq!(pattern, [4, 205]);
    for code in [
        "token_pattern = [4, 205,]",
        "token_pattern = [\n    4, 205\n]",
        "token_pattern = [  # <|assistant|>\n    4,\n    205,  # \\n\n]  # the gate",
        "token_pattern: list[int] = [0x4, 2_05]",
    ] {
        let (pattern, got) = scores(&armorm_with_pattern(code));
        assert_eq!(pattern, [4, 205], "{code:?}");
        assert_eq!(got, reference, "{code:?}");
    }
}

/// An assignment the text reader cannot follow is refused by file and line, not replaced.
#[test]
fn armorm_unreadable_pattern_names_the_line() {
    for code in [
        "token_pattern = tokenizer.encode('<|end|>')",
        "token_pattern = [4, , 205]",
        "token_pattern = [4, 205] + extra",
        "token_pattern = [4,\n    205",
    ] {
        let s = armorm_with_pattern(code);
        let e = load_err(&s.0);
        assert!(matches!(e, EngineError::ConfigField { .. }), "{code:?}: {e}");
        has(&e.to_string(), &["modeling_custom.py", "`token_pattern`", "line 34"]);
    }
}

/// transformers runs modeling_custom.py and never reads config.json's `gating_token_pattern`:
/// two different patterns are refused, naming both; agreeing ones load.
#[test]
fn armorm_config_and_code_patterns_must_agree() {
    let s = Scratch::copy_of("armorm");
    let mut v = s.config();
    v["gating_token_pattern"] = serde_json::json!([4, 205]);
    s.write_config(&v);
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::ConfigField { ref field, .. } if field == "gating_token_pattern"), "{e}");
    has(
        &e.to_string(),
        &["config.json", "[4, 205]", "modeling_custom.py", "line 34", "[6, 4, 205]", "transformers runs"],
    );
    v["gating_token_pattern"] = serde_json::json!([6, 4, 205]);
    s.write_config(&v);
    let model = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
    assert_eq!(gate_pattern(&model), [6, 4, 205]);
}

/// A sliding layer with no window is refused where transformers fails on it, naming the field:
/// Qwen2/Qwen3 drop `sliding_window` unless `use_sliding_window` is true (reward-lens used to apply
/// it anyway), and a Gemma-2 with `"sliding_window": null` still has sliding layers (reward-lens
/// used to attend to everything). Mistral's null is no window, as in transformers.
#[test]
fn sliding_layers_without_a_window_are_refused() {
    use serde_json::json;
    for fixture in ["qwen2", "qwen3"] {
        let s = Scratch::copy_of(fixture);
        let mut v = s.config();
        v["sliding_window"] = json!(4);
        v["layer_types"] = json!(["sliding_attention", "full_attention", "full_attention"]);
        for flag in [Some(json!(false)), None] {
            match &flag {
                Some(f) => v["use_sliding_window"] = f.clone(),
                None => drop(v.as_object_mut().unwrap().remove("use_sliding_window")),
            }
            s.write_config(&v);
            let e = load_err(&s.0);
            assert!(matches!(e, EngineError::ConfigField { ref field, .. } if field == "use_sliding_window"), "{e}");
            has(&e.to_string(), &["config.json", "layer 0 is sliding_attention", "set use_sliding_window to true"]);
        }
        // With the flag on, the window applies.
        v["use_sliding_window"] = json!(true);
        s.write_config(&v);
        let model = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
        assert_eq!(model.config.sliding_window, [Some(4), None, None]);
    }
    let s = Scratch::copy_of("gemma2");
    let mut v = s.config();
    v["sliding_window"] = serde_json::Value::Null;
    for explicit_types in [true, false] {
        if !explicit_types {
            v.as_object_mut().unwrap().remove("layer_types");
        }
        s.write_config(&v);
        let e = load_err(&s.0);
        assert!(matches!(e, EngineError::ConfigField { ref field, .. } if field == "sliding_window"), "{e}");
        has(&e.to_string(), &["config.json", "is null", "sliding_attention", "transformers fails"]);
    }
    let s = Scratch::copy_of("mistral");
    let mut v = s.config();
    v["sliding_window"] = serde_json::Value::Null;
    s.write_config(&v);
    let model = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
    assert_eq!(model.config.sliding_window, [None, None, None]);
}

/// A tensor stored in a dtype the engine does not compute with (an int8-quantized checkpoint)
/// is named with the file that holds it.
#[test]
fn unsupported_tensor_dtype_names_the_file() {
    let s = Scratch::copy_of("llama");
    let mut t = s.tensors();
    let name = "model.layers.0.mlp.up_proj.weight";
    let w = t[name].clone();
    t.insert(name.to_string(), w.to_dtype(DType::U8).unwrap());
    s.write_tensors(&t);
    let e = load_err(&s.0);
    assert!(matches!(e, EngineError::UnsupportedDtype { .. }), "{e}");
    has(&e.to_string(), &[name, "model.safetensors", "U8", "supported on disk"]);
}

/// When tokenizer_config.json's `model_max_length` is below the model's context, it is what
/// refuses a long input, and the error says so (the remedy is in that file, not config.json).
#[test]
fn context_limit_from_model_max_length_is_named() {
    let s = Scratch::copy_of("llama");
    let tc = s.path("tokenizer_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    v["model_max_length"] = serde_json::json!(64);
    std::fs::write(&tc, serde_json::to_string(&v).unwrap()).unwrap();
    let model = RewardModel::load(&s.0, &LoadOptions::default()).unwrap();
    let e = model.encode("Tell me something.", &words(100), Truncation::Error).unwrap_err();
    assert!(matches!(e, EngineError::TooLong { max_tokens: 64, .. }), "{e}");
    has(&e.to_string(), &["tokenizer_config.json's `model_max_length` is 64"]);
    let e = model.encode("Tell me something.", &words(100), Truncation::DropPromptLeft).unwrap_err();
    has(&e.to_string(), &["more than tokenizer_config.json's `model_max_length` of 64"]);
    // The fixture's own limit is the model's context (model_max_length equals it).
    let e = load("llama").encode("Tell me something.", &words(600), Truncation::Error).unwrap_err();
    has(&e.to_string(), &["the model's context is 512"]);
}
