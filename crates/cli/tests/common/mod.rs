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
