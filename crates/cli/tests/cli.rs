//! The `reward-lens` binary end to end: numbers equal the engine's (and transformers'), bad
//! input is a named error, and an interrupted `score --resume` finishes with the same bytes.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::{exe, fixtures, json, lines, run, tmp};

fn expected_scores(model: &str) -> Vec<(f64, f64)> {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("expected/{model}/forward.json"))).unwrap(),
    )
    .unwrap();
    v["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["chosen"]["score"].as_f64().unwrap(), p["rejected"]["score"].as_f64().unwrap()))
        .collect()
}

#[test]
fn score_matches_transformers_and_summarises() {
    for model in ["gemma2", "armorm"] {
        let d = tmp(&format!("score-{model}"));
        let out = d.join("scores.jsonl");
        let summary = d.join("summary.json");
        run(exe()
            .args(["score", "--model"])
            .arg(fixtures().join("models").join(model))
            .arg("--pairs")
            .arg(fixtures().join("pairs.jsonl"))
            .arg("--out")
            .arg(&out)
            .arg("--summary")
            .arg(&summary)
            .args(["--batch-size", "6"]));
        let rows = lines(&out);
        let want = expected_scores(model);
        assert_eq!(rows.len(), want.len());
        let mut correct = 0;
        for (i, (r, (c, j))) in rows.iter().zip(&want).enumerate() {
            assert_eq!(r["id"].as_u64(), Some(i as u64));
            let (cs, rs) = (r["chosen_score"].as_f64().unwrap(), r["rejected_score"].as_f64().unwrap());
            assert!((cs - c).abs() < 1e-4 && (rs - j).abs() < 1e-4, "{model} pair {i}");
            assert!((r["margin"].as_f64().unwrap() - (cs - rs)).abs() < 1e-6);
            assert_eq!(r["correct"].as_bool().unwrap(), cs > rs);
            correct += usize::from(cs > rs);
            if model == "armorm" {
                let g = r["chosen_objectives"]["gating"].as_object().unwrap();
                assert_eq!(g.len(), 5);
                assert!(g.contains_key("helpsteer-verbosity"));
            }
        }
        let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        assert_eq!(s["overall"]["n"].as_u64(), Some(20));
        assert_eq!(s["overall"]["correct"].as_u64(), Some(correct as u64));
        let per_subset: u64 = s["subsets"].as_object().unwrap().values().map(|a| a["n"].as_u64().unwrap()).sum();
        assert_eq!(per_subset, 20);
    }
}

#[test]
fn padding_side_and_batch_size_do_not_change_scores() {
    let d = tmp("padding");
    let model = fixtures().join("models/qwen3");
    let mut all = Vec::new();
    for (side, bs) in [("right", "1"), ("left", "8"), ("right", "40")] {
        let out = d.join(format!("{side}-{bs}.jsonl"));
        run(exe()
            .args(["score", "--model"])
            .arg(&model)
            .arg("--pairs")
            .arg(fixtures().join("pairs.jsonl"))
            .arg("--out")
            .arg(&out)
            .args(["--padding", side, "--batch-size", bs]));
        all.push(lines(&out));
    }
    for rows in &all[1..] {
        for (a, b) in rows.iter().zip(&all[0]) {
            let d = (a["chosen_score"].as_f64().unwrap() - b["chosen_score"].as_f64().unwrap()).abs();
            assert!(d < 1e-5, "batched vs single differ by {d}");
        }
    }
}

#[test]
fn resume_after_interruption_gives_identical_output() {
    let d = tmp("resume");
    let full = d.join("full.jsonl");
    let pairs = fixtures().join("pairs.jsonl");
    let model = fixtures().join("models/llama");
    run(exe()
        .args(["score", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(&pairs)
        .arg("--out")
        .arg(&full)
        .args(["--batch-size", "2"]));
    let text = std::fs::read_to_string(&full).unwrap();
    // Simulate an interruption: seventeen complete lines and half of the eighteenth.
    let cut: usize = text.split_inclusive('\n').take(17).map(str::len).sum::<usize>() + 20;
    let partial = d.join("partial.jsonl");
    std::fs::write(&partial, &text[..cut]).unwrap();
    interrupted_copy(&full, &partial);
    let out =
        run(exe().args(["score", "--model"]).arg(&model).arg("--pairs").arg(&pairs).arg("--out").arg(&partial).args([
            "--batch-size",
            "2",
            "--resume",
        ]));
    // 17 complete lines, batches of 1 pair sorted by length within blocks of 8: resume keeps 16.
    assert!(String::from_utf8_lossy(&out.stderr).contains("16 of 20"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&partial).unwrap(), text);
}

#[test]
fn bad_jsonl_names_the_line() {
    let d = tmp("badjsonl");
    let cases = [
        ("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{not json}\n", ":2: not valid JSON"),
        ("{\"prompt\": \"a\", \"chosen\": \"b\"}\n", ":1: missing field `rejected`"),
        ("{\"prompt\": \"a\", \"chosen\": 3, \"rejected\": \"c\"}\n", ":1: field `chosen` must be a string"),
        ("\n\n", "no pairs"),
        ("{\"prompt\": \"a\", \"chosen\": \"   \", \"rejected\": \"c\"}\n", ":1: chosen"),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let f = d.join(format!("{i}.jsonl"));
        std::fs::write(&f, body).unwrap();
        let out = exe().args(["score", "--pairs"]).arg(&f).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "case {i}: expected {needle:?} in {err}");
        assert!(!err.contains("panicked"), "case {i} panicked: {err}");
    }
}

#[test]
fn cache_exports_named_sites_with_documented_shapes() {
    let d = tmp("cache");
    let out = d.join("acts.safetensors");
    run(exe()
        .args(["cache", "--model"])
        .arg(fixtures().join("models/gemma2"))
        .args(["--prompt", "How do I boil an egg?", "--response", "Simmer it for nine minutes."])
        .args(["--sites", "blocks.*.hook_resid_post,blocks.1.attn.hook_pattern,blocks.0.attn.hook_z,blocks.0.attn.hook_k,ln_final.hook_scale"])
        .arg("--out")
        .arg(&out));
    let t = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    let ids = t["input_ids"].to_vec1::<u32>().unwrap();
    let n = ids.len();
    assert_eq!(ids[0], 1, "one BOS");
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 1, "no double BOS");
    for l in 0..3 {
        assert_eq!(t[&format!("blocks.{l}.hook_resid_post")].dims(), &[n, 64]);
    }
    assert_eq!(t["blocks.1.attn.hook_pattern"].dims(), &[4, n, n]);
    assert_eq!(t["blocks.0.attn.hook_z"].dims(), &[n, 4, 16]);
    assert_eq!(t["blocks.0.attn.hook_k"].dims(), &[n, 2, 16]);
    assert_eq!(t["ln_final.hook_scale"].dims(), &[n, 1]);
    // Attention rows sum to one, and a query never attends to a later key.
    let p = t["blocks.1.attn.hook_pattern"].to_vec3::<f32>().unwrap();
    for h in &p {
        for (q, row) in h.iter().enumerate() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(row[q + 1..].iter().all(|&x| x == 0.0));
        }
    }
    assert_eq!(t.len(), 3 + 4 + 1);
}

#[test]
fn cache_rejects_unknown_site() {
    let d = tmp("cache-bad");
    let out = exe()
        .args(["cache", "--prompt", "a", "--response", "b", "--sites", "blocks.7.hook_resid_post", "--out"])
        .arg(d.join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "activation site `blocks.7.hook_resid_post`: layer 7 does not exist (this model has 3 layers, blocks 0 to 2)"
    ));
}

#[test]
fn info_reports_the_architecture() {
    let out = run(exe().args(["info", "--json", "--model"]).arg(fixtures().join("models/armorm")));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "armorm");
    assert_eq!(v["n_params"], 206_623);
    assert_eq!(v["n_kv_heads"], 2);
    assert_eq!(v["head"], "armorm-gated");
    assert_eq!(v["num_objectives"], 5);
    let out = run(exe().args(["info", "--json", "--model"]).arg(fixtures().join("models/gemma2")));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sliding_window"], serde_json::json!([8, null, 8]));
}

#[test]
fn missing_model_dir_is_a_clear_error() {
    let out = exe().args(["info", "--model", "/nonexistent/model"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}

#[test]
fn lens_and_attribute_write_joinable_json() {
    let d = tmp("instruments");
    let model = fixtures().join("models/gpt2");
    let lens = d.join("lens.json");
    run(exe()
        .args(["lens", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(&lens));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&lens).unwrap()).unwrap();
    assert_eq!(v["instrument"], "lens");
    assert_eq!(v["inputs"].as_array().unwrap().len(), 20);
    assert_eq!(v["inputs"][3]["subset"], "safety");
    let want = expected_scores("gpt2");
    for (i, p) in v["report"]["pairs"].as_array().unwrap().iter().enumerate() {
        let normed = p["chosen"]["normed"].as_array().unwrap();
        assert_eq!(normed.len(), 4);
        assert!((normed[3].as_f64().unwrap() - want[i].0).abs() < 1e-4, "last lens point is the reward");
    }
    let att = d.join("att.json");
    let out = run(exe()
        .args(["attribute", "--model"])
        .arg(&model)
        .args(["--prompt", "How do I boil an egg?", "--chosen", "Simmer it for nine minutes.", "--rejected", "Eggs."])
        .args(["--heads", "--out"])
        .arg(&att));
    assert!(String::from_utf8_lossy(&out.stdout).contains("max |Σ contributions + bias − reward|"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&att).unwrap()).unwrap();
    let names: Vec<&str> =
        v["report"]["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(&names[..3], &["embed", "pos_embed", "head.0.0"]);
    assert!(names.contains(&"attn_bias.2"), "GPT-2's c_proj bias is its own term");
    let p = &v["report"]["pairs"][0]["chosen"];
    let sum: f64 = p["contributions"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).sum();
    assert!((sum + p["bias"].as_f64().unwrap() - p["reward"].as_f64().unwrap()).abs() < 1e-5);
}

#[test]
fn pair_input_needs_a_source() {
    let out = exe().args(["lens", "--prompt", "a"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--chosen") || err.contains("required"), "{err}");
    let out = exe().args(["attribute"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --pairs FILE.jsonl, or --prompt"));
}

#[test]
fn concepts_conflict_and_compare_commands() {
    let d = tmp("more-instruments");
    let llama = fixtures().join("models/llama");
    let out = d.join("concepts.json");
    let o = run(exe()
        .args(["concepts", "--model"])
        .arg(&llama)
        .args(["--steer", "verbosity", "--strengths=-1,0,1", "--out"])
        .arg(&out));
    assert!(String::from_utf8_lossy(&o.stdout).contains("slope"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let cs = v["report"]["concepts"]["concepts"].as_array().unwrap();
    assert_eq!(cs.len(), 8);
    for c in cs {
        let a = c["alignment"].as_f64().unwrap();
        let p = c["p_value"].as_f64().unwrap();
        assert!(a.abs() <= 1.0 && (0.0..=1.0).contains(&p));
    }
    let steer = &v["report"]["steering"];
    assert_eq!(steer["mean_delta"][1].as_f64(), Some(0.0));
    // The slope's sign agrees with the steps.
    let md: Vec<f64> = steer["mean_delta"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(steer["slope"].as_f64().unwrap() > 0.0, md[2] > md[0]);

    let out = d.join("conflict.json");
    run(exe()
        .args(["conflict", "--model"])
        .arg(&llama)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["report"]["terms"]["term_names"].as_array().unwrap().len(), 8);
    assert!(v["report"].get("objectives").is_none());

    let out = d.join("compare.json");
    run(exe()
        .args(["compare", "--model"])
        .arg(&llama)
        .arg("--model")
        .arg(fixtures().join("models/qwen2"))
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["report"]["pairwise"].as_array().unwrap().len(), 1);
    let cka = v["report"]["pairwise"][0]["linear_cka"].as_f64().unwrap();
    assert!(cka > 0.0 && cka <= 1.0);
    let e = exe()
        .args(["compare", "--model"])
        .arg(&llama)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("at least two --model"));
}

#[test]
fn patch_atp_and_faithfulness_append_per_pair_and_resume() {
    let d = tmp("causal");
    let model = fixtures().join("models/llama");
    let pairs = fixtures().join("pairs.jsonl");
    let full = d.join("patch.jsonl");
    let o = run(exe().args(["patch", "--model"]).arg(&model).arg("--pairs").arg(&pairs).arg("--out").arg(&full));
    assert!(String::from_utf8_lossy(&o.stdout).contains("forward-equivalents per pair"));
    let rows = lines(&full);
    assert_eq!(rows.len(), 20);
    assert_eq!(rows[3]["subset"], "safety");
    assert_eq!(rows[0]["effects"].as_object().unwrap().len(), 6);
    // Interrupted after 5 pairs and half a line: resume finishes with the same bytes.
    let text = std::fs::read_to_string(&full).unwrap();
    let cut: usize = text.split_inclusive('\n').take(5).map(str::len).sum::<usize>() + 30;
    let part = d.join("part.jsonl");
    std::fs::write(&part, &text[..cut]).unwrap();
    interrupted_copy(&full, &part);
    let o = run(exe()
        .args(["patch", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(&pairs)
        .arg("--out")
        .arg(&part)
        .arg("--resume"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("5 of 20"));
    assert_eq!(std::fs::read_to_string(&part).unwrap(), text);

    let atp = d.join("atp.jsonl");
    run(exe()
        .args(["atp", "--granularity", "head", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(&pairs)
        .arg("--out")
        .arg(&atp));
    assert_eq!(lines(&atp)[0]["effects"].as_object().unwrap().len(), 12);
    assert!(lines(&atp).iter().all(|l| l.get("exact").is_none()), "plain AtP verifies nothing");
    // --verify-top: the three largest estimates of each pair become exact patches, named in
    // "exact"; the other effects stay the estimates, byte for byte.
    let verified = d.join("verified.jsonl");
    let o = run(exe()
        .args(["atp", "--granularity", "head", "--verify-top", "3", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(&pairs)
        .arg("--out")
        .arg(&verified));
    assert!(String::from_utf8_lossy(&o.stdout).contains("forward-equivalents per pair"));
    for (e, v) in lines(&atp).iter().zip(lines(&verified)) {
        let estimates = e["effects"].as_object().unwrap();
        let mut by_size: Vec<(&String, f64)> = estimates.iter().map(|(k, x)| (k, x.as_f64().unwrap())).collect();
        by_size.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        let exact: Vec<&str> = v["exact"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
        assert_eq!(exact.len(), 3);
        assert!(by_size[..3].iter().all(|(k, _)| exact.contains(&k.as_str())), "{exact:?}");
        for (k, x) in estimates {
            if !exact.contains(&k.as_str()) {
                assert_eq!(&v["effects"][k], x, "{k}: unverified effects are the estimates");
            }
        }
    }
    let e = exe()
        .args(["patch", "--verify-top", "2", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(&pairs)
        .arg("--out")
        .arg(d.join("v.jsonl"))
        .output()
        .unwrap();
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("--verify-top"));

    let f = d.join("faith.jsonl");
    let o = run(exe().args(["faithfulness", "--model"]).arg(&model).arg("--pairs").arg(&pairs).arg("--out").arg(&f));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("overall") && out.contains("sycophancy"));
    for l in lines(&f) {
        let r = l["dla_vs_patch"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&r));
    }
    let e = exe()
        .args(["patch", "--mode", "mean", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(&pairs)
        .arg("--out")
        .arg(d.join("m.jsonl"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("--mean-reference"));
}

#[test]
fn path_patch_command() {
    let d = tmp("path");
    let out = d.join("paths.jsonl");
    let model = fixtures().join("models/gpt2");
    run(exe()
        .args(["path-patch", "--sender", "0.2", "--receivers", "mlp.0,attn.2,head.1.3,downstream", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(&out));
    let rows = lines(&out);
    assert_eq!(rows.len(), 20);
    let e = rows[0]["effects"].as_object().unwrap();
    assert_eq!(e.len(), 4);
    assert!(e.contains_key("head.1.3"));
    let bad = exe()
        .args(["path-patch", "--sender", "2.0", "--receivers", "attn.1", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(d.join("x.jsonl"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not read head.2.0"));
}

#[test]
fn eval_weights_rewardbench_sections() {
    let d = tmp("eval");
    // The fixture pairs relabelled with RewardBench subsets.
    let names = ["math-prm", "hep-python", "alpacaeval-easy", "mt-bench-easy"];
    let text: String = std::fs::read_to_string(fixtures().join("pairs.jsonl"))
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v["subset"] = Value::from(names[i % 4]);
            format!("{v}\n")
        })
        .collect();
    let pairs = d.join("rb.jsonl");
    std::fs::write(&pairs, text).unwrap();
    let out = d.join("eval.json");
    let model = fixtures().join("models/llama");
    run(exe().args(["eval", "--model"]).arg(&model).arg("--pairs").arg(&pairs).arg("--out").arg(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let e = &v[0];
    let acc = |s: &str| {
        e["subsets"].as_array().unwrap().iter().find(|x| x["subset"] == s).unwrap()["accuracy"].as_f64().unwrap()
    };
    let secs = e["rewardbench"]["sections"].as_array().unwrap();
    let sec = |n: &str| secs.iter().find(|x| x["section"] == n).unwrap()["score"].as_f64().unwrap();
    assert!((sec("Reasoning") - (984.0 * acc("math-prm") + 164.0 * acc("hep-python")) / 1148.0).abs() < 1e-9);
    assert!((sec("Chat") - (100.0 * acc("alpacaeval-easy") + 28.0 * acc("mt-bench-easy")) / 128.0).abs() < 1e-9);
    assert_eq!(e["rewardbench"]["complete"], false);
    // Overall accuracy agrees with `score`'s margins for the same pairs.
    let want = expected_scores("llama").iter().filter(|(c, r)| c > r).count() as f64 / 20.0;
    assert!((e["accuracy"].as_f64().unwrap() - want).abs() < 1e-12);
}

#[test]
fn probe_and_diagnose_commands() {
    let d = tmp("probe-diagnose");
    let model = fixtures().join("models/llama");
    let out = d.join("probes.json");
    let o = run(exe()
        .args(["probe", "--dimensions", "length,emoji,flattery", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out));
    assert!(String::from_utf8_lossy(&o.stdout).contains("per 100 tokens"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let dims = v["report"]["dimensions"].as_array().unwrap();
    assert_eq!(dims.len(), 3);
    for dim in dims {
        assert_eq!(dim["n"], 10);
        let q = dim["q_value"].as_f64().unwrap();
        assert!(q >= dim["p_value"].as_f64().unwrap() - 1e-12 && q <= 1.0);
    }
    // A user probe file with one probe: statistics undefined, not ±inf.
    let mine = d.join("mine.jsonl");
    std::fs::write(&mine, r#"{"id":"x1","prompt":"Name a colour.","neutral":"Blue.","biased":"Blue! Great question!","dimension":"flattery","edit":"flattery"}"#).unwrap();
    let out2 = d.join("mine.json");
    run(exe().args(["probe", "--probes"]).arg(&mine).arg("--model").arg(&model).arg("--out").arg(&out2));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out2).unwrap()).unwrap();
    assert_eq!(v["report"]["dimensions"][0]["verdict"], "undefined");
    assert!(v["report"]["dimensions"][0]["cohens_d"].is_null());

    let out = d.join("diag.json");
    run(exe().args(["diagnose", "--truncate-prompt", "--model"]).arg(&model).arg("--out").arg(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["report"]["n_pairs"], 120);
    assert_eq!(v["report"]["distortion"].as_array().unwrap().len(), 12);
    assert_eq!(v["report"]["cascade"]["Ok"]["n_prompts"], 10);
    // Pairs without a `seed`: the cascade is refused with a reason, the rest still runs.
    let out = d.join("diag2.json");
    run(exe()
        .args(["diagnose", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(v["report"]["cascade"]["Err"].as_str().unwrap().contains("matched design"));
}

#[test]
fn sae_collect_train_features_decompose() {
    let d = tmp("sae");
    let model = fixtures().join("models/gpt2");
    let (acts, sae) = (d.join("acts"), d.join("sae"));
    run(exe()
        .args(["sae", "collect", "--site", "blocks.1.hook_resid_post", "--positions", "pooled", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(&acts));
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(acts.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["activations"], 40);
    run(exe()
        .args(["sae", "train", "--d-sae", "32", "--k", "4", "--epochs", "3", "--batch-size", "16", "--acts"])
        .arg(&acts)
        .arg("--out")
        .arg(&sae));
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(sae.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["architecture"].as_str(), cfg["k"].as_u64(), cfg["hook_name"].as_str()),
        (Some("topk"), Some(4), Some("blocks.1.hook_resid_post"))
    );
    let out = d.join("dec.json");
    run(exe()
        .args(["sae", "decompose", "--model"])
        .arg(&model)
        .arg("--sae")
        .arg(&sae)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(&out));
    let decs: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(decs.as_array().unwrap().len(), 40);
    for x in decs.as_array().unwrap() {
        assert!(x["residual"].as_f64().unwrap().abs() < 1e-4, "terms add up to the reward");
    }
    let f = d.join("features.json");
    let o = run(exe()
        .args(["sae", "features", "--top", "3", "--model"])
        .arg(&model)
        .arg("--sae")
        .arg(&sae)
        .arg("--acts")
        .arg(&acts)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(&f));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning"), "the SAE's own model");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    assert_eq!(v["alignment"].as_array().unwrap().len(), 32);
    assert_eq!(v["top_positive"][0]["examples"].as_array().unwrap().len(), 3);

    // The SAE knows its model: a different model folder of the same width is warned about.
    assert_eq!(cfg["model_fingerprint"], manifest["model"]);
    let other = d.join("other-model");
    std::fs::create_dir_all(&other).unwrap();
    for f in std::fs::read_dir(&model).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, other.join(f.file_name().unwrap())).unwrap();
    }
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(other.join("config.json"), config + "\n").unwrap();
    let o = run(exe()
        .args(["sae", "decompose", "--prompt", "Hi", "--chosen", "Hello.", "--rejected", "Go.", "--model"])
        .arg(&other)
        .arg("--sae")
        .arg(&sae));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("warning:") && e.contains("trained on activations of another model"), "{e}");
    let o = run(exe()
        .args(["cart", "discover", "--units", "sae", "--tail-subsets", "safety", "--permutations", "200"])
        .args(["--random-sets", "0", "--screen-top", "0", "--model"])
        .arg(&other)
        .arg("--sae")
        .arg(&sae)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl")));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("warning: --sae: this SAE was trained on activations of another model"), "{e}");
    // Top examples from other texts than the collection's would show the wrong tokens.
    let reordered = d.join("reordered.jsonl");
    let lines = std::fs::read_to_string(fixtures().join("pairs.jsonl")).unwrap();
    std::fs::write(&reordered, lines.lines().rev().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let o = exe()
        .args(["sae", "features", "--model"])
        .arg(&model)
        .arg("--sae")
        .arg(&sae)
        .arg("--acts")
        .arg(&acts)
        .arg("--pairs")
        .arg(&reordered)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && e.contains("not the texts this collection was made from"), "{e}");
    // Nor activations of another site: the latents would be the SAE's reading of something else.
    let acts0 = d.join("acts0");
    run(exe()
        .args(["sae", "collect", "--site", "blocks.0.hook_resid_post", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(&acts0));
    let o = exe()
        .args(["sae", "features", "--model"])
        .arg(&model)
        .arg("--sae")
        .arg(&sae)
        .arg("--acts")
        .arg(&acts0)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    let want = "collected at blocks.0.hook_resid_post, but the SAE reads blocks.1.hook_resid_post";
    assert!(o.status.code() == Some(1) && e.contains(want), "{e}");
    // A site that is not one vector per token is refused by name (it indexed heads as positions).
    let o = exe()
        .args(["sae", "collect", "--site", "blocks.1.attn.hook_pattern", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(d.join("pattern"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && e.contains("not one vector per token"), "{e}");
    assert!(!d.join("pattern.meta.json").exists(), "refused before anything is written");
    // Nor does a resumed collection mix models, positions or texts.
    for (positions, pairs) in [("pooled", &reordered), ("response", &fixtures().join("pairs.jsonl"))] {
        let o = exe()
            .args(["sae", "collect", "--resume", "--site", "blocks.1.hook_resid_post", "--model"])
            .arg(&model)
            .args(["--positions", positions])
            .arg("--pairs")
            .arg(pairs)
            .arg("--out")
            .arg(&acts)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && e.contains("cannot resume"), "{e}");
    }
}

/// RewardBench 2 rows go through `score` and `eval` without a flag: the format is read off the
/// file. The fixture's mean (0.34666846682835…) was computed independently by a transcription of
/// RewardBench 2's reference scoring (`scripts/run_v2.py`, `rewardbench/utils.py`) run on the
/// same model's rewards.
#[test]
fn rewardbench2_rows_score_eval_and_resume() {
    let d = tmp("rb2");
    let rows = fixtures().join("rewardbench2/rows.jsonl");
    let model = fixtures().join("models/llama");
    let eval_out = d.join("eval.json");
    run(exe().args(["eval", "--model"]).arg(&model).arg("--pairs").arg(&rows).arg("--out").arg(&eval_out));
    let e = json(&eval_out);
    assert_eq!(e[0]["format"], "rewardbench2");
    assert_eq!(e[0]["n_rows"], 19);
    assert!((e[0]["mean"].as_f64().unwrap() - 0.346_668_466_828_353_8).abs() < 1e-6, "{}", e[0]["mean"]);
    let subsets = e[0]["subsets"].as_array().unwrap();
    assert_eq!(subsets.len(), 6);
    assert!(subsets.iter().any(|s| s["subset"] == "Ties" && s["ties"]["n_paired"] == 2));

    // score: one line per row; the subset scores are the mean credit of their rows.
    let full = d.join("full.jsonl");
    let run_score = |out: &Path, resume: bool| {
        let mut c = exe();
        c.args(["score", "--batch-size", "4", "--model"]).arg(&model).arg("--pairs").arg(&rows).arg("--out").arg(out);
        if resume {
            c.arg("--resume");
        }
        run(&mut c)
    };
    run_score(&full, false);
    let ls = lines(&full);
    assert_eq!(ls.len(), 19);
    for s in subsets.iter().filter(|s| s["subset"] != "Ties") {
        let mine: Vec<f64> =
            ls.iter().filter(|l| l["subset"] == s["subset"]).map(|l| l["credit"].as_f64().unwrap()).collect();
        let mean = mine.iter().sum::<f64>() / mine.len() as f64;
        assert!((mean - s["score"].as_f64().unwrap()).abs() < 1e-12, "{}", s["subset"]);
    }
    for l in &ls {
        let best_rejected =
            l["rejected_scores"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).fold(f64::MIN, f64::max);
        let all_beat = l["chosen_scores"].as_array().unwrap().iter().all(|x| x.as_f64().unwrap() > best_rejected);
        assert_eq!(l["correct"].as_bool().unwrap(), all_beat);
    }
    // An interruption after 17 complete lines and part of the 18th: the resumed file is the same
    // (chunks of 8 rows: resume keeps 16).
    let text = std::fs::read_to_string(&full).unwrap();
    let cut: usize = text.split_inclusive('\n').take(17).map(str::len).sum::<usize>() + 10;
    let partial = d.join("partial.jsonl");
    std::fs::write(&partial, &text[..cut]).unwrap();
    interrupted_copy(&full, &partial);
    let out = run_score(&partial, true);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resuming: 16 of 19 rows"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&partial).unwrap(), text);
    // A kept line whose scores are not numbers is named, not dropped or read as zeros.
    let edited = text.replacen("\"chosen_scores\":[", "\"chosen_scores\":[null,", 1);
    std::fs::write(&partial, edited).unwrap();
    let o = exe()
        .args(["score", "--batch-size", "4", "--resume", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(&rows)
        .arg("--out")
        .arg(&partial)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("partial.jsonl: line 1: expected numeric chosen_scores"), "{err}");

    // A pair line in a RewardBench 2 file is an error naming its line.
    let mixed = d.join("mixed.jsonl");
    let rows_text = std::fs::read_to_string(&rows).unwrap();
    let row1 = rows_text.lines().next().unwrap();
    std::fs::write(
        &mixed,
        format!("{row1}\n{{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\",\"subset\":\"x\",\"id\":9}}\n"),
    )
    .unwrap();
    let o = exe().args(["eval", "--model"]).arg(&model).arg("--pairs").arg(&mixed).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("mixed.jsonl:2"), "{err}");
}

/// A file whose Ties rows are only `ref:` rows (a filtered or sampled file): Ties and the mean
/// are undefined, printed as "—" with the reason, null in the JSON; no NaN anywhere.
#[test]
fn rewardbench2_ties_without_a_pair_is_undefined_with_the_reason() {
    let d = tmp("rb2-ties-unpaired");
    let text = std::fs::read_to_string(fixtures().join("rewardbench2/rows.jsonl")).unwrap();
    let mut first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let mut ties_ref = first.clone();
    ties_ref["id"] = "ref:1".into();
    ties_ref["subset"] = "Ties".into();
    first["subset"] = "Factuality".into();
    let rows = d.join("rows.jsonl");
    std::fs::write(&rows, format!("{first}\n{ties_ref}\n")).unwrap();
    let model = fixtures().join("models/llama");
    let note_ties = "note: Ties is undefined: no prompt id has both a `ref:<n>` and a `tied:<n>` row";
    let note_mean = "note: the mean is undefined: the RewardBench 2 mean is over all 2 subsets, and Ties is undefined";

    let eval_out = d.join("eval.json");
    let o = run(exe().args(["eval", "--model"]).arg(&model).arg("--pairs").arg(&rows).arg("--out").arg(&eval_out));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(!table.contains("NaN") && table.contains(note_ties) && table.contains(note_mean), "{table}");
    let tl = table.lines().find(|l| l.starts_with("Ties (n=1)")).unwrap();
    assert!(tl.trim_end().ends_with('—'), "{table}");
    let e = json(&eval_out);
    assert_eq!(e[0]["mean"], Value::Null);
    assert!(e[0]["mean_undefined"].as_str().unwrap().contains("over all 2 subsets, and Ties is undefined"));
    let ties = &e[0]["subsets"][1];
    assert_eq!(
        (&ties["score"], &ties["ties"]["score"], &ties["ties"]["n_paired"]),
        (&Value::Null, &Value::Null, &0.into())
    );
    assert!(ties["ties"]["undefined"].as_str().unwrap().contains("needs both rows"));
    assert!(e[0]["subsets"][0]["score"].is_f64());

    let summary = d.join("summary.json");
    let o = run(exe().args(["score", "--model"]).arg(&model).arg("--pairs").arg(&rows).arg("--summary").arg(&summary));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("NaN") && err.contains(note_ties) && err.contains(note_mean), "{err}");
    let s = json(&summary);
    assert_eq!(s["mean"], Value::Null);
    assert!(!std::fs::read_to_string(&summary).unwrap().contains("NaN"));
}

/// Inputs whose meaning would change silently are refused at the command line too: a
/// conversation (messages) file, an id serde_json cannot keep exactly, a defaulted id equal to
/// another pair's explicit one. And `--padding`'s help does not promise bit-identical rewards.
#[test]
fn score_refuses_messages_files_and_ids_it_would_change() {
    let d = tmp("score-inputs");
    let model = fixtures().join("models/llama");
    let refused = |name: &str, text: &str| {
        let f = d.join(name);
        std::fs::write(&f, text).unwrap();
        let o = exe().args(["score", "--model"]).arg(&model).arg("--pairs").arg(&f).output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = refused(
        "messages.jsonl",
        r#"{"chosen":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}],"rejected":[{"role":"user","content":"Hi"},{"role":"assistant","content":"No"}]}"#,
    );
    assert!(e.contains("messages.jsonl:1: field `chosen` is a list of messages ({role, content} objects): the conversation (messages) format is not read; expected"), "{e}");
    assert!(!e.contains("missing field `id`"), "{e}");
    let e = refused("rb2.jsonl", r#"{"id":1,"prompt":"Hi","chosen":["a"],"rejected":["b"]}"#);
    assert!(
        e.contains("rb2.jsonl:1: missing field `subset` (read as RewardBench 2 because `chosen` on line 1 is a list)"),
        "{e}"
    );
    let pair = |id: &str| format!("{{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"{id}}}\n");
    let e = refused("bigid.jsonl", &pair(",\"id\":1180591620717411303424"));
    assert!(
        e.contains("bigid.jsonl:1: field `id` is the number 1.1805916207174113e+21, too large to be kept exactly"),
        "{e}"
    );
    let e = refused("clash.jsonl", &format!("{}{}", pair(",\"id\":1"), pair("")));
    assert!(e.contains("clash.jsonl:2: id 1 is given twice: "), "{e}");

    let help = String::from_utf8_lossy(&run(exe().args(["score", "--help"])).stdout).into_owned();
    assert!(help.contains("rewards agree either way up to float rounding, not bit for bit"), "{help}");
    assert!(!help.contains("identical either way"), "{help}");
}

/// An interrupted run leaves its output and the fingerprint written when it started.
fn interrupted_copy(full: &std::path::Path, partial: &std::path::Path) {
    let meta = |p: &std::path::Path| std::path::PathBuf::from(format!("{}.meta.json", p.display()));
    std::fs::copy(meta(full), meta(partial)).unwrap();
}

/// `--resume` continues only what the same model, options and input started; the fingerprint
/// beside the output says which differs.
#[test]
fn resume_checks_model_options_and_input() {
    let d = tmp("fingerprint");
    let pairs = d.join("pairs.jsonl");
    std::fs::copy(fixtures().join("pairs.jsonl"), &pairs).unwrap();
    let (llama, qwen) = (fixtures().join("models/llama"), fixtures().join("models/qwen2"));
    let out = d.join("scores.jsonl");
    let score = |model: &std::path::Path, extra: &[&str]| {
        exe()
            .args(["score", "--model"])
            .arg(model)
            .arg("--pairs")
            .arg(&pairs)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(score(&llama, &["--batch-size", "4"]).status.success());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("scores.jsonl.meta.json")).unwrap()).unwrap();
    assert_eq!(meta["command"], "score");
    let refused = |o: std::process::Output, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains("cannot resume") && err.contains(needle), "{needle}: {err}");
    };
    // The same run resumes (nothing left to do).
    assert!(score(&llama, &["--batch-size", "4", "--resume"]).status.success());
    refused(score(&llama, &["--batch-size", "8", "--resume"]), "the options");
    refused(score(&qwen, &["--batch-size", "4", "--resume"]), "the model");
    let text = std::fs::read_to_string(&pairs).unwrap();
    std::fs::write(&pairs, text.replacen("\"prompt\"", "\"prompt\" ", 1)).unwrap();
    refused(score(&llama, &["--batch-size", "4", "--resume"]), "the input file");
    std::fs::write(&pairs, &text).unwrap();
    std::fs::remove_file(d.join("scores.jsonl.meta.json")).unwrap();
    refused(score(&llama, &["--batch-size", "4", "--resume"]), "is missing");
    // Starting afresh writes a new fingerprint.
    assert!(score(&llama, &["--batch-size", "4"]).status.success());
    assert!(score(&llama, &["--batch-size", "4", "--resume"]).status.success());
}

/// An output path that is one of the inputs is refused before anything is read or written.
#[test]
fn out_equal_to_an_input_is_refused() {
    let d = tmp("out-is-input");
    let pairs = d.join("pairs.jsonl");
    std::fs::copy(fixtures().join("pairs.jsonl"), &pairs).unwrap();
    let before = std::fs::read(&pairs).unwrap();
    let model = fixtures().join("models/llama");
    for (cmd, flag) in [("score", "--out"), ("score", "--summary"), ("patch", "--out"), ("lens", "--out")] {
        let o =
            exe().args([cmd, "--model"]).arg(&model).arg("--pairs").arg(&pairs).arg(flag).arg(&pairs).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("would destroy the input"), "{cmd} {flag}: {err}");
        // The flag named is the one that points at the input.
        assert!(err.contains(&format!("{flag} {}", pairs.display())), "{cmd} {flag}: {err}");
    }
    // Two outputs at one path: the summary would replace the per-pair lines.
    let same = d.join("both.jsonl");
    let o = exe().args(["score", "--pairs"]).arg(&pairs).arg("--out").arg(&same).arg("--summary").arg(&same).output();
    let o = o.unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--summary") && err.contains("is also --out"), "{err}");
    assert!(!same.exists(), "refused before anything is written");
    // Also through another spelling of the same file, and a model's own files.
    let other = d.join(".").join("pairs.jsonl");
    let o = exe().args(["score", "--pairs"]).arg(&pairs).arg("--out").arg(&other).output().unwrap();
    assert!(!o.status.success());
    let o = exe()
        .args(["score", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(&pairs)
        .arg("--summary")
        .arg(model.join("config.json"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.json"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&pairs).unwrap(), before);
}

/// The command's own words are not inputs: retraining into `sae/` beside the `sae` subcommand
/// (the README's example, run twice) is not refused, while an output equal to a positional
/// input still is.
#[test]
fn command_words_are_not_inputs() {
    let d = tmp("command-words");
    let model = fixtures().join("models/llama");
    let pairs = fixtures().join("pairs.jsonl");
    let sae = |out: &str| {
        exe()
            .current_dir(&d)
            .args([
                "sae",
                "train",
                "--acts",
                "acts",
                "--d-sae",
                "16",
                "--k",
                "4",
                "--epochs",
                "1",
                "--batch-size",
                "64",
            ])
            .args(["--out", out])
            .output()
            .unwrap()
    };
    run(exe().current_dir(&d).args(["sae", "collect", "--model"]).arg(&model).arg("--pairs").arg(&pairs).args([
        "--site",
        "blocks.2.hook_resid_post",
        "--out",
        "acts",
    ]));
    for _ in 0..2 {
        let o = sae("sae");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(d.join("sae/cfg.json").is_file());
    }
    let o = sae("acts");
    assert!(String::from_utf8_lossy(&o.stderr).contains("would destroy the input"));
    // `merge sae --out sae`: the word after the command is a positional path, still an input.
    let o = exe().current_dir(&d).args(["merge", "sae", "--out", "sae"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("would destroy the input"));
}

/// A model whose rewards overflow: every command stops with the pair's file and line instead of
/// writing `null` scores or findings computed from NaN.
#[test]
fn non_finite_rewards_stop_every_command_naming_the_pair() {
    let d = tmp("nan-model");
    let model = d.join("model");
    common::copy_fixture("llama", &model);
    let st = model.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    // Finite weights (the load-time scan accepts them) whose product overflows f32.
    for name in ["score.weight", "model.norm.weight"] {
        let w = (t[name].clone() * 1e30).unwrap();
        t.insert(name.into(), w);
    }
    candle_core::safetensors::save(&t, &st).unwrap();
    let pairs = fixtures().join("pairs.jsonl");
    for cmd in ["score", "patch", "lens", "audit"] {
        let out = d.join(format!("{cmd}-out"));
        let o = exe()
            .args([cmd, "--model"])
            .arg(&model)
            .arg("--pairs")
            .arg(&pairs)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{cmd} succeeded");
        assert!(err.contains("pairs.jsonl:1"), "{cmd}: {err}");
        assert!(err.contains("is NaN") || err.contains("is inf"), "{cmd}: {err}");
        if let Ok(text) = std::fs::read_to_string(&out) {
            assert!(!text.contains("null") && !text.contains("NaN"), "{cmd} wrote a non-finite result");
        }
    }
}

/// A model whose arithmetic breaks down on one pair: every command that measures it stops with
/// an error naming the pair's file and line (never `null` margins with exit 0, never a table
/// computed from NaN), and writes no half-honest output.
#[test]
fn a_nan_reward_is_an_error_naming_the_pair() {
    let d = tmp("nan-reward");
    let model = d.join("model");
    let line = common::poisoned_llama(&model);
    let at = format!("pairs.jsonl:{line}");
    let pairs = fixtures().join("pairs.jsonl");
    for cmd in ["score", "lens", "attribute", "eval", "diagnose", "patch", "audit"] {
        let out = d.join(format!("{cmd}.out"));
        let mut c = exe();
        c.args([cmd, "--model"]).arg(&model).arg("--pairs").arg(&pairs);
        if cmd != "eval" && cmd != "diagnose" {
            c.arg("--out").arg(&out);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{cmd} succeeded: {err}");
        assert!(err.contains(&at) && err.contains("NaN"), "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
}

/// Every resumable command, not only `score`, refuses to continue an output made with another
/// model, other options or another input, and one whose fingerprint is missing; each error names
/// the output and its `.meta.json`.
#[test]
fn every_resumable_command_checks_its_fingerprint() {
    let d = tmp("fingerprint-all");
    let pairs = d.join("pairs.jsonl");
    let text: String = std::fs::read_to_string(fixtures().join("pairs.jsonl"))
        .unwrap()
        .lines()
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&pairs, &text).unwrap();
    let (llama, qwen) = (fixtures().join("models/llama"), fixtures().join("models/qwen2"));
    // (output, command, its options, other options)
    type Args<'a> = &'a [&'a str];
    let commands: [(&str, Args, Args, Args); 4] = [
        ("patch.jsonl", &["patch"], &["--granularity", "sublayer"], &["--granularity", "residual"]),
        ("faith.jsonl", &["faithfulness"], &[], &["--mode", "denoising"]),
        ("path.jsonl", &["path-patch", "--sender", "0.0"], &["--receivers", "mlp.1"], &["--receivers", "mlp.2"]),
        (
            "acts",
            &["sae", "collect", "--site", "blocks.1.hook_resid_post", "--positions", "pooled"],
            &[],
            &["--shard-rows", "7"],
        ),
    ];
    for (name, args, same, other) in commands {
        let out = d.join(name);
        let go = |model: &std::path::Path, opts: &[&str], extra: &[&str]| {
            exe()
                .args(args)
                .arg("--model")
                .arg(model)
                .arg("--pairs")
                .arg(&pairs)
                .arg("--out")
                .arg(&out)
                .args(opts)
                .args(extra)
                .output()
                .unwrap()
        };
        let o = go(&llama, same, &[]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(go(&llama, same, &["--resume"]).status.success(), "{name}: the same run resumes");
        let meta = format!("{}.meta.json", out.display());
        let refused = |o: std::process::Output, needle: &str| {
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            assert!(!o.status.success(), "{name} {needle}: resumed");
            assert!(
                err.contains("cannot resume") && err.contains(needle) && err.contains(&meta),
                "{name} {needle}: {err}"
            );
        };
        refused(go(&qwen, same, &["--resume"]), "the model");
        refused(go(&llama, other, &["--resume"]), "the options");
        if name == "patch.jsonl" {
            // The option that changed is named, not the whole parsed command line.
            refused(go(&llama, other, &["--resume"]), "(--granularity: sublayer then, residual now)");
        }
        std::fs::write(&pairs, text.replacen("\"prompt\"", "\"prompt\" ", 1)).unwrap();
        refused(go(&llama, same, &["--resume"]), "the input file");
        std::fs::write(&pairs, &text).unwrap();
        std::fs::remove_file(&meta).unwrap();
        let o = go(&llama, same, &["--resume"]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains("is missing") && err.contains("without --resume"), "{name}: {err}");
    }
}

/// A write that fails names the path it was writing (and a model folder's every file, shards
/// included, counts as an input that `--out` may not overwrite).
#[test]
fn write_errors_name_the_path() {
    let d = tmp("write-errors");
    let pairs = fixtures().join("pairs.jsonl");
    let llama = fixtures().join("models/llama");
    let err = |o: std::process::Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let missing = d.join("no-such-dir").join("scores.jsonl");
    let e = err(exe().args(["score", "--pairs"]).arg(&pairs).arg("--out").arg(&missing).output().unwrap());
    assert!(e.contains("no-such-dir/scores.jsonl"), "{e}");
    let acts = d.join("no-such-dir").join("acts.safetensors");
    let cache = ["cache", "--prompt", "q", "--response", "a", "--sites", "blocks.0.hook_resid_post", "--out"];
    let e = err(exe().args(cache).arg(&acts).output().unwrap());
    assert!(e.contains("no-such-dir/acts.safetensors: the folder") && e.contains("does not exist"), "{e}");
    if std::path::Path::new("/dev/full").exists() {
        // A full disk: the report, the summary and standard output each say which failed.
        let e = err(exe().args(["lens", "--pairs"]).arg(&pairs).args(["--out", "/dev/full"]).output().unwrap());
        assert!(e.contains("/dev/full: cannot write"), "{e}");
        let e = err(exe().args(["score", "--pairs"]).arg(&pairs).args(["--summary", "/dev/full"]).output().unwrap());
        assert!(e.contains("/dev/full: cannot write"), "{e}");
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let e = err(exe().args(["score", "--pairs"]).arg(&pairs).stdout(full).output().unwrap());
        assert!(e.contains("standard output: cannot write"), "{e}");
    }
    // Any file of a model folder, e.g. a weight shard with an unusual name.
    let model = d.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in std::fs::read_dir(&llama).unwrap().flatten() {
        std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
    }
    let shard = model.join("model-00002-of-00002.safetensors");
    std::fs::write(&shard, b"keep").unwrap();
    let e = err(exe()
        .args(["lens", "--model"])
        .arg(&model)
        .arg("--pairs")
        .arg(&pairs)
        .arg("--out")
        .arg(&shard)
        .output()
        .unwrap());
    assert!(e.contains("would destroy the input") && e.contains("model-00002-of-00002.safetensors"), "{e}");
    assert_eq!(std::fs::read(&shard).unwrap(), b"keep");
}

/// `bench --stages --json`: every stage of a tiny generated model's forward pass, summing to the
/// staged pass, with GFLOP/s on the seven matmul stages only.
#[test]
fn bench_stages_add_up() {
    let out =
        run(exe().args(["bench", "--stages", "--json", "--layers", "2", "--d-model", "64", "--heads", "4"]).args([
            "--kv-heads",
            "2",
            "--d-mlp",
            "96",
            "--vocab",
            "100",
            "--seq-len",
            "16",
            "--batch-sizes",
            "1,3",
            "--iters",
            "1",
        ]));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r["batch"].as_u64(), r["seq_len"].as_u64()), (Some(3), Some(16)), "the largest batch");
    assert_eq!(r["scores_max_abs_diff"].as_f64(), Some(0.0));
    let stages = r["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 13);
    let sum: f64 = stages.iter().map(|s| s["seconds"].as_f64().unwrap()).sum();
    let staged = r["staged_seconds"].as_f64().unwrap();
    assert!((sum - staged).abs() < 1e-9 * staged.max(1.0), "{sum} vs {staged}");
    assert_eq!(stages.iter().filter(|s| s["gflops"].is_number()).count(), 7);
    assert_eq!(stages[7]["stage"], "up projection");
}

/// `scripts/gpu-check.sh` in its dry run (`GPU_CHECK_DRY_RUN=1`: every step but the GPU tests, on
/// the CPU, with this binary and a tiny model): the script a lent GPU machine runs once must not
/// rot where no GPU is.
#[test]
fn gpu_check_script_runs_dry_on_the_cpu() {
    let d = tmp("gpu-check-dry");
    let out = Command::new("bash")
        .arg(common::repo().join("scripts/gpu-check.sh"))
        .env("GPU_CHECK_DRY_RUN", "1")
        .env("REWARD_LENS_BIN", env!("CARGO_BIN_EXE_reward-lens"))
        .env("OUT", &d)
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(d.join("summary.md")).unwrap_or_default();
    assert!(out.status.success(), "{summary}\n{}", String::from_utf8_lossy(&out.stderr));
    for want in ["dry run on the cpu", "batch 2 x 16: ", "plain forward ", "| sweep (resume", "done: all checks passed"]
    {
        assert!(summary.contains(want), "{want:?} missing from:\n{summary}");
    }
    let bench = json(&d.join("bench.json"));
    assert_eq!(bench["speed"].as_array().unwrap().len(), 2);
    assert_eq!(json(&d.join("stages.json"))["stages"].as_array().unwrap().len(), 13);
}

/// `bench --patch --patch-pairs` outside 1–20 is refused by name, not silently run on one pair or
/// on all twenty.
#[test]
fn bench_patch_pairs_out_of_range_is_refused() {
    for n in ["0", "21"] {
        let o = exe().args(["bench", "--patch", "--patch-pairs", n]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "a usage error");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("--patch-pairs") && e.contains("1..=20"), "{e}");
    }
}

/// Settings that would silently change what a report says — a NaN link threshold (no links, a
/// cascade risk from nothing), overlapping conflict bands (resolved by the order of the tests),
/// a NaN steering strength (blamed on the weights as an overflow), too few permutations for any
/// probe verdict — are refused before the model loads, naming the setting.
#[test]
fn nonsense_thresholds_and_strengths_are_refused_up_front() {
    let model = fixtures().join("models/llama");
    let pairs = fixtures().join("pairs.jsonl");
    let cases: [(&[&str], &str); 8] = [
        (&["probe", "--permutations", "0"], "permutations 0"),
        (&["conflict", "--group-by", "nosuch"], "--group-by field `nosuch`: no pair has it"),
        (&["audit", "--permutations", "19"], "needs at least 20"),
        (&["diagnose", "--threshold", "nan"], "threshold NaN"),
        (&["diagnose", "--threshold", "1.5"], "in [0, 1]"),
        (&["conflict", "--aligned", "0.1", "--orthogonal", "0.5"], "conflict ≤ −orthogonal ≤ 0 ≤ orthogonal ≤ aligned"),
        (&["conflict", "--conflict", "nan"], "conflict NaN"),
        (&["concepts", "--steer", "verbosity", "--strengths=nan,1"], "steering strength NaN"),
    ];
    for (args, want) in cases {
        let mut c = exe();
        c.args(args).arg("--model").arg(&model);
        if args[0] == "conflict" {
            c.arg("--pairs").arg(&pairs);
        }
        let o = c.output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && e.contains(want), "{args:?}: {e}");
    }
}

/// A batch size of 0 is refused by every command that takes one (some read it as 1, SAE
/// training as something else), and so are zero epochs, before any work.
#[test]
fn a_batch_size_of_zero_is_refused_everywhere() {
    for args in [
        &["score"][..],
        &["eval", "--pairs", "p.jsonl"],
        &["lens"],
        &["attribute"],
        &["patch", "--out", "x.jsonl"],
        &["atp", "--out", "x.jsonl"],
        &["sae", "train", "--acts", "a", "--out", "s"],
        &["cart", "discover", "--pairs", "p.jsonl"],
        &["train", "--pairs", "p.jsonl", "--out", "t"],
        &["audit"],
    ] {
        let o = exe().args(args).args(["--batch-size", "0"]).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(2) && e.contains("'0' for '--batch-size"), "{args:?}: {e}");
        assert!(e.contains("expected at least 1"), "{args:?}: {e}");
    }
    // So is zero epochs, wherever training runs.
    for args in [
        &["organism", "--preset", "length", "--out", "o"][..],
        &["train", "--pairs", "p.jsonl", "--out", "t"],
        &["sae", "train", "--acts", "a", "--out", "s"],
        &["cart", "train", "--preset", "tail", "--out", "c"],
    ] {
        let o = exe().args(args).args(["--epochs", "0"]).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(2) && e.contains("'0' for '--epochs"), "{args:?}: {e}");
    }
}

/// Flags that another flag would override, or that the command never reads, are refused before
/// anything is read or written, instead of being dropped without a word.
#[test]
fn contradictory_flags_are_refused() {
    let d = tmp("contradictory");
    let pairs = fixtures().join("pairs.jsonl");
    let out = d.join("out.jsonl");
    let p = pairs.to_str().unwrap();
    let o = out.to_str().unwrap();
    let llama = fixtures().join("models/llama");
    let m = llama.to_str().unwrap();
    let dir = d.to_str().unwrap();
    for (args, want) in [
        (
            vec!["cache", "--prompt", "q", "--response", "a", "--sites", "blocks.0.hook_resid_post", "--out", dir],
            "is a directory",
        ),
        (vec!["lens", "--v1-compat", "--kind", "normed"], "cannot be used with"),
        (vec!["attribute", "--v1-compat", "--heads"], "cannot be used with"),
        (vec!["concepts", "--strengths", "5"], "--steer"),
        (vec!["concepts", "--pairs", p], "without --steer nothing reads them"),
        (vec!["sae", "features", "--sae", o, "--acts", o], "--pairs <FILE.jsonl>"),
        (vec!["attribute", "--v1-compat", "--neurons", "3"], "cannot be used with"),
        (
            vec!["audit", "--model", m, "--pairs", p, "--tail-subsets", "safty", "--out", o],
            "no pair has one of them (the pairs' subsets: confidence",
        ),
        (vec!["faithfulness", "--pairs", p, "--out", o, "--divergence-reference", p], "never reads it"),
        // The option is wrong, not the file's first line: refused before anything is written.
        (vec!["faithfulness", "--pairs", p, "--out", o, "--verify-top", "2"], "error: --verify-top applies to `atp`"),
        (
            vec!["faithfulness", "--pairs", p, "--out", o, "--granularity", "residual"],
            "granularity residual has no DLA",
        ),
        (vec!["cart", "train", "--preset", "tail", "--pairs", p, "--out", o], "cannot be used with"),
        (vec!["cart", "train", "--preset", "tail", "--batch-size", "0", "--out", o], "'0' for '--batch-size"),
        (vec!["cart", "train", "--preset", "tail", "--augment-per-pair", "2", "--out", o], "--augment"),
        (vec!["cart", "train", "--preset", "tail", "--kappa", "2", "--out", o], "--ensemble"),
        (vec!["cart", "train", "--preset", "tail", "--discovery", p, "--out", o], "nothing reads it"),
        (vec!["patch", "--pairs", p, "--out", o, "--v1-compat", "--align", "anchored"], "cannot be used with"),
        (vec!["patch", "--pairs", p, "--out", o, "--mean-reference", p], "--mean-reference is read by --mode mean"),
        (vec!["patch", "--pairs", p, "--out", o, "--verify-top", "2"], "--verify-top applies to `atp`"),
        (vec!["patch", "--pairs", p, "--out", o, "--granularity", "head", "--divergence-reference", p], "sublayer"),
        (vec!["atp", "--pairs", p, "--out", o, "--naive"], "--naive applies to `patch`"),
    ] {
        let r = exe().args(&args).output().unwrap();
        let e = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && e.contains(want), "{args:?}: {e}");
        assert!(!out.exists() && !d.join("out.jsonl.meta.json").exists(), "{args:?}: nothing written");
    }
}

/// A path-patching sender or receiver the model lacks is an error about the option, raised before
/// any pair runs (not an intervention's index error blamed on the first pair).
#[test]
fn path_patch_names_a_missing_receiver_before_any_pair() {
    let d = tmp("path-receivers");
    for (receiver, want) in [
        ("head.2.99", "error: receiver head.2.99 does not exist (the model has 3 layers of 4 heads)"),
        ("attn.1", "receiver attn.1 does not read head.1.0's output"),
    ] {
        let o = exe()
            .args(["path-patch", "--sender", "1.0", "--receivers", receiver, "--pairs"])
            .arg(fixtures().join("pairs.jsonl"))
            .arg("--out")
            .arg(d.join("p.jsonl"))
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && e.contains(want) && !e.contains("pairs.jsonl:1"), "{e}");
    }
}

/// `bench --iters 0` printed the warm-up's time as the measurement; zero counts are refused.
#[test]
fn bench_refuses_zero_counts() {
    for args in [["--iters", "0"], ["--seq-len", "0"], ["--batch-sizes", "8,0"]] {
        let o = exe().arg("bench").args(args).arg("--no-memory").output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && e.contains("must be at least 1") && o.stdout.is_empty(), "{args:?}: {e}");
    }
}

/// An answer key without rules would show an empty ground-truth section, as if nothing were
/// planted: refused before the audit runs.
#[test]
fn an_answer_key_without_rules_is_refused() {
    let d = tmp("empty-key");
    for (i, key) in ["[]", "{}", r#"{"rules": []}"#].iter().enumerate() {
        let f = d.join(format!("key{i}.json"));
        std::fs::write(&f, key).unwrap();
        let o = exe().args(["audit", "--answer-key"]).arg(&f).arg("--out").arg(d.join("out")).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && e.contains("the answer key holds no rules"), "{key}: {e}");
        assert!(!d.join("out/results.json").exists());
    }
    // Nor one whose rules are not rules: the report showed a "rules | 5" row.
    for (i, (key, want)) in
        [(r#"{"rules": 5}"#, "`rules` must be a list"), ("[1, 2, 3]", "rule 1 is neither")].iter().enumerate()
    {
        let f = d.join(format!("bad{i}.json"));
        std::fs::write(&f, key).unwrap();
        let o = exe().args(["audit", "--answer-key"]).arg(&f).arg("--out").arg(d.join("out")).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && e.contains(want), "{key}: {e}");
    }
}

/// Pairs whose chosen and rejected texts are the same are scored (real datasets hold a few) with
/// a warning naming them: their margin is 0 and they count as wrong.
#[test]
fn identical_pairs_are_scored_with_a_warning() {
    let d = tmp("identical-pairs");
    let f = d.join("p.jsonl");
    std::fs::write(&f, "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"q\", \"chosen\": \"same\", \"rejected\": \"same\"}\n").unwrap();
    let o = exe().args(["score", "--pairs"]).arg(&f).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("warning: 1 of 2 pairs have the same chosen and rejected text") && e.contains("p.jsonl:2"),
        "{e}"
    );
}

/// A constant reward (the score head all zeros, every margin exactly 0) is said to be one: no
/// preference for the rejected answer, no crystallization depth, no cosine of a zero direction,
/// no coverage or cascade computed from 0/0.
#[test]
fn a_constant_reward_gives_no_findings_made_of_nothing() {
    let d = tmp("constant-reward");
    let model = d.join("model");
    common::copy_fixture("llama", &model);
    let st = model.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    let w = t["score.weight"].zeros_like().unwrap();
    t.insert("score.weight".into(), w);
    candle_core::safetensors::save(&t, &st).unwrap();
    let pairs = fixtures().join("pairs.jsonl");
    let go = |args: &[&str]| {
        exe().args([args[0], "--model"]).arg(&model).arg("--pairs").arg(&pairs).args(&args[1..]).output().unwrap()
    };

    let o = go(&["lens"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("crystallization depth fraction: — (over the 0 of "), "{text}");

    let o = exe()
        .args(["compare", "--model"])
        .arg(fixtures().join("models/llama"))
        .arg("--model")
        .arg(&model)
        .arg("--pairs")
        .arg(&pairs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("formation r —") && text.contains("w_r cos —"), "{text}");

    let o = go(&["audit", "--out", d.join("audit").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("the reward's direction in the residual stream is zero"), "{err}");
    // concepts and diagnose read their built-in sets.
    let o = exe().args(["concepts", "--model"]).arg(&model).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("the reward's direction in the residual stream is zero"), "{err}");
    let o = exe().args(["diagnose", "--truncate-prompt", "--model"]).arg(&model).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("pairs has the same margin (0)") && err.contains("undefined"), "{err}");
}
