//! `reward-lens cart`: discovery on a fixture model writes a self-consistent report, and a tiny
//! CART table trains every arm, aggregates one row per arm and resumes without retraining.

mod common;

use std::process::Command;

use common::{fixtures, json, run, tmp};
use serde_json::Value;

/// Tiny models: one matmul thread is faster, and far steadier on a busy machine.
fn exe() -> Command {
    let mut c = common::exe();
    c.env("RAYON_NUM_THREADS", "1");
    c
}

#[test]
fn discover_writes_a_consistent_report() {
    let d = tmp("discover");
    let out = d.join("circuits.json");
    let pairs = fixtures().join("pairs.jsonl");
    let o = run(exe()
        .args(["cart", "discover", "--model"])
        .arg(fixtures().join("models/llama"))
        .arg("--pairs")
        .arg(&pairs)
        .args([
            "--tail-subsets",
            "safety,sycophancy",
            "--permutations",
            "200",
            "--random-sets",
            "5",
            "--bootstrap",
            "200",
            "--out",
        ])
        .arg(&out));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("N_head 15, N_tail 5"), "{stdout}");
    let r = json(&out);
    let n_pairs = r["n_pairs"].as_u64().unwrap();
    assert_eq!(n_pairs, 20);
    let (nh, nt) = (r["split"]["n_head"].as_u64().unwrap(), r["split"]["n_tail"].as_u64().unwrap());
    assert_eq!((nh, nt), (15, 5));
    assert_eq!(nh + nt, n_pairs);
    assert_eq!(r["split"]["tail"].as_array().unwrap().len() as u64, nt);
    assert_eq!(r["split"]["rule"]["rule"], "field");
    assert_eq!(r["clean_head"]["n"].as_u64().unwrap(), nh);
    assert_eq!(r["clean_tail"]["n"].as_u64().unwrap(), nt);
    // Fixture llama: 3 layers, d_mlp 172, 4 heads → last-layer neurons + every head.
    let n_units = r["n_units"].as_u64().unwrap();
    assert_eq!(n_units, 172 + 3 * 4);
    let spec = &r["specialisation"];
    assert_eq!(spec["stats"].as_array().unwrap().len() as u64, n_units);
    let tau = spec["tau"].as_f64().unwrap();
    assert!(tau.is_finite() && tau > 0.0);
    // Every tail-specialised unit has z > τ, and the circuits hold exactly the clustered ones.
    let stats = spec["stats"].as_array().unwrap();
    for k in spec["tail_units"].as_array().unwrap() {
        assert!(stats[k.as_u64().unwrap() as usize]["z"].as_f64().unwrap() > tau);
    }
    let in_circuits: usize =
        r["circuits"].as_array().unwrap().iter().map(|c| c["units"].as_array().unwrap().len()).sum();
    let clustered = r["coherence"]["candidates"].as_u64().unwrap() as usize;
    assert_eq!(in_circuits, clustered);
    // The report names its model; reusing it with another model, or with another split, is refused.
    assert_eq!(r["model"].as_str().unwrap().len(), 16);
    for (model, tail, want) in [
        ("gpt2", "safety,sycophancy", "made with another model"),
        ("llama", "safety", "split the pairs otherwise (tail: `subset` ∈ {safety, sycophancy}, 5 pairs)"),
    ] {
        let o = exe()
            .args(["cart", "bound", "--model"])
            .arg(fixtures().join("models").join(model))
            .arg("--pairs")
            .arg(&pairs)
            .args(["--tail-subsets", tail, "--discovery"])
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{model} {tail}: {err}");
    }
    // A tail value the file does not have is an error naming the file and the values it has.
    let bad = exe()
        .args(["cart", "discover", "--model"])
        .arg(fixtures().join("models/llama"))
        .arg("--pairs")
        .arg(&pairs)
        .args(["--tail-subsets", "nosuch"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("pairs.jsonl") && err.contains("tail is empty") && err.contains("safety"), "{err}");
    // The rule in words, not Rust's formatting of it.
    assert!(err.contains("(`subset` ∈ {nosuch})") && !err.contains("tail_values"), "{err}");
}

#[test]
fn a_tiny_table_has_one_row_per_arm_and_resumes() {
    let d = tmp("table");
    let out = d.join("cart_table.json");
    let md = d.join("cart_table.md");
    let args = |resume: bool| {
        let mut c = exe();
        // The resume uses the old spellings, which stay as hidden aliases.
        let (preset, ensemble) = if resume { ("--organisms", "--members") } else { ("--preset", "--ensemble") };
        c.args(["cart", "table", preset, "tail", "--seeds", "1", "--epochs", "1", "--n-train", "160"])
            .args(["--n-test", "60", ensemble, "2", "--permutations", "200", "--out"])
            .arg(&out)
            .arg("--markdown")
            .arg(&md);
        if resume {
            c.arg("--resume");
        }
        c
    };
    run(&mut args(false));
    let t = json(&out);
    let rows = t["rows"].as_array().unwrap();
    let arms: Vec<&str> = rows.iter().map(|r| r["arm"].as_str().unwrap()).collect();
    assert_eq!(arms, ["plain", "augment", "regularise", "curriculum", "ensemble", "all"]);
    for r in rows {
        assert_eq!(r["seeds"], serde_json::json!([2024]));
        for k in ["head_accuracy", "tail_accuracy", "tail_margin", "probe_d_caution"] {
            let m = &r["metrics"][k];
            assert_eq!(m["n"], 1, "{k}");
            assert!(m["mean"].as_f64().unwrap().is_finite(), "{k}");
            assert!(m["ci_low"].is_null(), "one seed: no interval");
        }
        let acc = r["metrics"]["tail_accuracy"]["mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
    assert!(t["ci_method"].as_str().unwrap().contains("Student-t"));
    assert_eq!(t["bound_direction"]["gap_vs_complexity"]["n"], 6);
    let runs = std::fs::read_to_string(d.join("cart_table.runs.jsonl")).unwrap();
    let lines: Vec<Value> = runs.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    // The ensemble arm has 2 members and reports their disagreement; augmentation adds tail pairs.
    let ens = lines.iter().find(|l| l["arm"] == "ensemble").unwrap();
    assert_eq!(ens["members"], 2);
    assert!(ens["disagreement_tail"].as_f64().unwrap() >= 0.0);
    let plain = lines.iter().find(|l| l["arm"] == "plain").unwrap();
    let aug = lines.iter().find(|l| l["arm"] == "augment").unwrap();
    assert_eq!(aug["n_tail"].as_u64().unwrap(), 5 * plain["n_tail"].as_u64().unwrap());
    let table = std::fs::read_to_string(&md).unwrap();
    assert_eq!(table.lines().filter(|l| l.starts_with("| `tail` |")).count(), 6, "{table}");
    assert!(table.contains("Bound direction"));
    // Rerunning without --resume refuses to mix runs; with it, nothing retrains and nothing is appended.
    let again = args(false).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // (How long the table and its resume take is a figure of `reward-lens bench --cart`.)
    let resumed = run(&mut args(true));
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(!stdout.contains("[1/6]") && !stdout.contains("[6/6]"), "resume retrained: {stdout}");
    assert_eq!(std::fs::read_to_string(d.join("cart_table.runs.jsonl")).unwrap(), runs);
    let t2 = json(&out);
    let rows2 = t2["rows"].as_array().unwrap();
    assert_eq!(rows2.len(), 6);
    for (a, b) in rows.iter().zip(rows2) {
        assert_eq!(a["arm"], b["arm"]);
        let m = |r: &Value| r["metrics"]["tail_margin"]["mean"].as_f64().unwrap();
        assert!((m(a) - m(b)).abs() < 1e-9);
    }
}

/// A nonsensical loss or ensemble weight stops `cart train` before the reference model trains
/// (which takes minutes on a real model), naming the setting; nothing is written.
#[test]
fn nonsense_weights_stop_cart_train_at_once() {
    let d = tmp("cart-bad-weights");
    for (args, want) in [
        (&["--regularise", "nan,0.1"][..], "λ_div is NaN"),
        (&["--regularise=-1,0.1"][..], "λ_div is -1"),
        (&["--ensemble", "2", "--kappa", "nan"][..], "κ is NaN"),
        (&["--ensemble", "0"][..], "at least 1 member"),
    ] {
        let out = d.join("run");
        let o = exe()
            .args(["cart", "train", "--preset", "tail", "--epochs", "1"])
            .args(args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!out.join("reference").exists(), "{args:?}: the reference model was trained first");
    }
}
