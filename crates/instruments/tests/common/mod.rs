#![allow(dead_code)]
use std::path::PathBuf;

use reward_lens_engine::{LoadOptions, RewardModel};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn load(name: &str) -> RewardModel {
    RewardModel::load(&fixtures().join("models").join(name), &LoadOptions::default()).unwrap()
}

pub fn json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}
