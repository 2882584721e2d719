//! What the binary's integration tests share: the binary, scratch directories, the fixtures.
// Each test file uses its own part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The binary, its unpacked default model kept inside the build tree.
pub fn exe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reward-lens"));
    c.env("REWARD_LENS_CACHE", tmp_root().join("cache"));
    c
}

/// This test binary's scratch root (`cli-tests`, `audit-tests`, …).
pub fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-tests", env!("CARGO_CRATE_NAME")))
}

/// An empty scratch directory.
pub fn tmp(name: &str) -> PathBuf {
    let d = tmp_root().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// Runs `cmd`, failing the test (with its output) unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// A JSON file.
pub fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// A JSONL file, one value per line.
pub fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A copy of fixture model `name` in `to` (created), to edit.
pub fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(fixtures().join("models").join(name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

/// A copy of the Llama fixture that breaks down (NaN reward) on the chosen response of one pair
/// of `tests/fixtures/pairs.jsonl` alone, every weight finite; returns that pair's 1-based line.
/// Only a token of that response has a component along dimension 0, where block 0's input norm
/// scales by 1e30 and q and k read it: its self-attention score overflows to +inf, its softmax
/// row is NaN, and later blocks spread that to every later position.
pub fn poisoned_llama(dir: &Path) -> usize {
    use reward_lens_engine::{LoadOptions, RewardModel, Truncation};
    let src = fixtures().join("models/llama");
    let pairs = reward_lens_report::datasets::read_pairs(&fixtures().join("pairs.jsonl")).unwrap();
    let clean = RewardModel::load(&src, &LoadOptions::default()).unwrap();
    let enc = clean.encode_pairs(&pairs, Truncation::Error).unwrap();
    let (k, token) = (0..enc.len())
        .rev()
        .find_map(|k| {
            let elsewhere = |t: &u32| {
                enc.iter().enumerate().any(|(j, e)| e.rejected.contains(t) || (j != k && e.chosen.contains(t)))
            };
            enc[k].chosen.iter().find(|t| !elsewhere(t)).map(|&t| (k, t as usize))
        })
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut set = |name: &str, row: usize, col: usize, v: f32| {
        let t = &header[name];
        let cols = t["shape"].as_array().unwrap().get(1).map_or(1, |c| c.as_u64().unwrap() as usize);
        let at = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize + (row * cols + col) * 4;
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    for r in 0..1024 {
        set("model.embed_tokens.weight", r, 0, if r == token { 1.0 } else { 0.0 });
    }
    set("model.layers.0.input_layernorm.weight", 0, 0, 1e30);
    (0..64).for_each(|r| set("model.layers.0.self_attn.q_proj.weight", r, 0, 1.0));
    (0..32).for_each(|r| set("model.layers.0.self_attn.k_proj.weight", r, 0, 1.0));
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    pairs[k].line()
}
