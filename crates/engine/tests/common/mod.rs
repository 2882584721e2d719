#![allow(dead_code)]
use std::path::PathBuf;

use reward_lens_engine::{Batch, LoadOptions, PaddingSide, RewardModel, Tensor, Truncation};
use serde_json::Value;

pub const MODELS: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt2", "armorm"];

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn load(name: &str) -> RewardModel {
    RewardModel::load(&model_dir(name), &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn expected(name: &str, file: &str) -> Value {
    let p = fixtures().join("expected").join(name).join(file);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

pub fn pairs() -> Vec<Value> {
    std::fs::read_to_string(fixtures().join("pairs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn probes() -> Vec<Value> {
    std::fs::read_to_string(fixtures().join("probe_pairs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Row `pos` of a `[1, T, d]` cached activation.
pub fn at(t: &Tensor, pos: usize) -> Vec<f32> {
    t.get(0).unwrap().get(pos).unwrap().to_dtype(reward_lens_engine::DType::F32).unwrap().to_vec1().unwrap()
}

/// Encoded ids of pair `i`'s `side` ("chosen" / "rejected").
pub fn ids(model: &RewardModel, i: usize, side: &str) -> Vec<u32> {
    let p = &pairs()[i];
    model.encode(p["prompt"].as_str().unwrap(), p[side].as_str().unwrap(), Truncation::Error).unwrap().ids
}

/// A one-row batch.
pub fn single(model: &RewardModel, ids: &[u32]) -> Batch {
    model.batch(&[ids.to_vec()], PaddingSide::Right).unwrap()
}
