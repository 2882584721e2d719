//! Golden outputs: the bytes that `eval`, `score`, `patch`, `atp`, `cart discover` and the
//! audit's `results.json` (minus timings) write on the fixtures, recorded before the library
//! was reorganised and kept identical through every move since. A change here is a change in
//! what users get; regenerate deliberately with `REWARD_LENS_BLESS=1 cargo test --test golden`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, tmp};
use serde_json::Value;

fn repo() -> PathBuf {
    common::repo().canonicalize().unwrap()
}

fn exe() -> Command {
    let mut c = common::exe();
    c.env("RAYON_NUM_THREADS", "1");
    c
}

/// Paths differ between machines; everything else must not.
fn portable(text: &str, tmp: &Path) -> String {
    text.replace(&tmp.display().to_string(), "$TMP").replace(&repo().display().to_string(), "$REPO")
}

/// Compares with (or, blessing, writes) `tests/golden/NAME`.
fn check(name: &str, actual: &str) {
    let path = repo().join("tests/golden").join(name);
    if std::env::var_os("REWARD_LENS_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with REWARD_LENS_BLESS=1)", path.display()));
    if expected != actual {
        let line = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "{name} differs from its golden file at line {}:\nexpected: {}\nactual:   {}",
            line + 1,
            expected.lines().nth(line).unwrap_or("<end>"),
            actual.lines().nth(line).unwrap_or("<end>")
        );
    }
}

fn model(name: &str) -> PathBuf {
    repo().join("tests/fixtures/models").join(name)
}

fn pairs() -> PathBuf {
    repo().join("tests/fixtures/pairs.jsonl")
}

#[test]
fn score_and_eval_are_unchanged() {
    let d = tmp("score");
    run(exe()
        .args(["score", "--model"])
        .arg(model("armorm"))
        .arg("--pairs")
        .arg(pairs())
        .arg("--out")
        .arg(d.join("scores.jsonl"))
        .arg("--summary")
        .arg(d.join("summary.json")));
    check("score-armorm.jsonl", &portable(&std::fs::read_to_string(d.join("scores.jsonl")).unwrap(), &d));
    check("score-armorm-summary.json", &portable(&std::fs::read_to_string(d.join("summary.json")).unwrap(), &d));
    run(exe()
        .args(["eval", "--model"])
        .arg(model("llama"))
        .arg("--model")
        .arg(model("qwen2"))
        .arg("--pairs")
        .arg(pairs())
        .arg("--out")
        .arg(d.join("eval.json")));
    check("eval.json", &portable(&std::fs::read_to_string(d.join("eval.json")).unwrap(), &d));
}

#[test]
fn patch_and_atp_are_unchanged() {
    let d = tmp("patch");
    for cmd in ["patch", "atp"] {
        let out = d.join(format!("{cmd}.jsonl"));
        run(exe().arg(cmd).arg("--model").arg(model("llama")).arg("--pairs").arg(pairs()).arg("--out").arg(&out));
        check(&format!("{cmd}-llama.jsonl"), &portable(&std::fs::read_to_string(&out).unwrap(), &d));
    }
    let out = d.join("patch-heads.jsonl");
    run(exe()
        .args(["patch", "--granularity", "head", "--positions", "response", "--model"])
        .arg(model("qwen3"))
        .arg("--pairs")
        .arg(pairs())
        .arg("--out")
        .arg(&out));
    check("patch-qwen3-heads.jsonl", &portable(&std::fs::read_to_string(&out).unwrap(), &d));
}

#[test]
fn cart_discover_is_unchanged() {
    let d = tmp("cart");
    let out = d.join("circuits.json");
    run(exe()
        .args(["cart", "discover", "--model"])
        .arg(model("llama"))
        .arg("--pairs")
        .arg(pairs())
        .args(["--tail-subsets", "safety,sycophancy", "--permutations", "200", "--random-sets", "5"])
        .args(["--bootstrap", "200", "--out"])
        .arg(&out));
    check("cart-discover-llama.json", &portable(&std::fs::read_to_string(&out).unwrap(), &d));
    // The report is reused only on the pairs it ran on: the same number of pairs in another
    // order would give its split and ablation values to other pairs.
    let reordered = d.join("reordered.jsonl");
    let text = std::fs::read_to_string(pairs()).unwrap();
    std::fs::write(&reordered, text.lines().rev().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let o = exe()
        .args(["cart", "vulnerability", "--model"])
        .arg(model("llama"))
        .arg("--pairs")
        .arg(&reordered)
        .args(["--tail-subsets", "safety,sycophancy", "--discovery"])
        .arg(&out)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && e.contains("the discovery ran on other pairs than"), "{e}");
}

/// Drops wall-clock fields anywhere in the tree.
fn without_timings(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !matches!(k.as_str(), "timings" | "seconds" | "total_seconds" | "created"));
            m.values_mut().for_each(without_timings);
        }
        Value::Array(a) => a.iter_mut().for_each(without_timings),
        _ => {}
    }
}

#[test]
fn audit_results_are_unchanged() {
    let d = tmp("audit");
    let out = d.join("audit-out");
    run(exe().args(["audit", "--model"]).arg(model("llama")).arg("--pairs").arg(pairs()).arg("--out").arg(&out));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    without_timings(&mut v);
    check("audit-llama-results.json", &portable(&serde_json::to_string_pretty(&v).unwrap(), &d));
}
