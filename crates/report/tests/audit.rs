//! The audit run from Rust (no binary) on the Llama fixture: the same numbers the command
//! writes (its golden results.json, timings aside), and the two files written.

use std::path::PathBuf;

use serde_json::Value;

use reward_lens_report::audit::{AuditInputs, AuditOptions, PairSource, STAGES};
use reward_lens_report::{run_audit, write_files, SECTION_IDS};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Drops wall-clock fields anywhere in the tree (as the command's golden test does).
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
fn library_audit_equals_the_commands_golden_results() {
    let model_dir = repo().join("tests/fixtures/models/llama");
    let pairs = repo().join("tests/fixtures/pairs.jsonl");
    let inputs = AuditInputs {
        model_name: model_dir.display().to_string(),
        model_dir,
        pairs: PairSource::File(pairs),
        probes: Vec::new(),
        concepts: Vec::new(),
        options: AuditOptions::default(),
        answer_key: None,
        tail_subsets: vec!["tail".into()],
    };
    let mut stages: Vec<(usize, String)> = Vec::new();
    let res = run_audit(&inputs, &mut |i: usize, n: usize, name: &str| {
        assert_eq!(n, STAGES.len());
        stages.push((i, name.to_string()));
    })
    .unwrap();
    assert_eq!(stages.iter().map(|s| s.0).collect::<Vec<_>>(), (0..STAGES.len()).collect::<Vec<_>>());
    assert_eq!(res.timings.len(), STAGES.len() - 1, "every measuring stage is timed");

    // Through text, as the command's file is read back (serde_json's float parsing rounds).
    let mut got: Value = serde_json::from_str(&serde_json::to_string_pretty(&res).unwrap()).unwrap();
    without_timings(&mut got);
    let text = serde_json::to_string_pretty(&got).unwrap().replace(&repo().display().to_string(), "$REPO");
    let golden = std::fs::read_to_string(repo().join("tests/golden/audit-llama-results.json")).unwrap();
    if text != golden {
        let line = golden.lines().zip(text.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "differs from the command's golden results.json at line {}:\nexpected: {}\nactual:   {}",
            line + 1,
            golden.lines().nth(line).unwrap_or("<end>"),
            text.lines().nth(line).unwrap_or("<end>")
        );
    }
    assert_eq!(res.inputs.pairs_used, 20);
    assert_eq!(res.scores.len(), 20);
    assert!(res.scores.iter().all(|s| (s.margin - (s.chosen - s.rejected)).abs() < 1e-12));

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-audit");
    let _ = std::fs::remove_dir_all(&dir);
    let (json, html) = write_files(&res, &dir).unwrap();
    let back: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(back["evaluation"], serde_json::to_value(&res.evaluation).unwrap());
    let html = std::fs::read_to_string(html).unwrap();
    for id in SECTION_IDS.iter().filter(|id| **id != "ground-truth") {
        assert!(html.contains(&format!("<section id=\"{id}\">")), "missing section {id}");
    }
    assert!(!html.contains("<section id=\"ground-truth\">"), "no answer key, no ground-truth section");
}

/// Pairs whose chosen and rejected texts are the same are audited (margin exactly 0) and named:
/// in results.json's setup, as a warning finding, in the report's setup table and in the
/// warning the command prints and Python raises. A dataset without them shows none of it.
#[test]
fn identical_pairs_are_named_in_the_results_findings_and_report() {
    let model_dir = repo().join("tests/fixtures/models/llama");
    let mut pairs = reward_lens_report::datasets::read_pairs(&repo().join("tests/fixtures/pairs.jsonl")).unwrap();
    pairs.truncate(6);
    for i in [1, 4] {
        pairs[i].rejected = pairs[i].chosen.clone();
    }
    let inputs = AuditInputs {
        model_name: "llama fixture".into(),
        model_dir,
        pairs: PairSource::Inline { name: "six pairs".into(), pairs: pairs.clone() },
        probes: Vec::new(),
        concepts: Vec::new(),
        options: AuditOptions { batch_size: 4, permutations: 20, ..Default::default() },
        answer_key: None,
        tail_subsets: vec!["tail".into()],
    };
    let res = run_audit(&inputs, &mut |_: usize, _: usize, _: &str| {}).unwrap();
    let want: Vec<String> = [1, 4].iter().map(|&i| pairs[i].location()).collect();
    assert_eq!(res.inputs.identical_pairs, want);
    assert!(want[0].contains("pairs.jsonl:"), "{want:?}");
    for s in &res.scores {
        let same = pairs.iter().any(|p| p.id == s.id && p.chosen == p.rejected);
        assert_eq!(s.margin == 0.0, same, "{:?}", s.id);
    }
    let finding = res.findings.iter().find(|f| f.title == "Pairs without a difference").expect("a finding");
    assert!(matches!(finding.severity, reward_lens_report::audit::Severity::Warning));
    assert!(finding.text.starts_with("2 of the 6 audited pairs"), "{}", finding.text);
    assert_eq!(finding.evidence[0].value, Some(2.0 / 6.0));
    let warning = res.identical_pairs_warning().unwrap();
    assert!(
        warning.starts_with(&format!("2 of 6 pairs have the same chosen and rejected text ({}, {})", want[0], want[1]))
    );
    let html = reward_lens_report::audit::html::render(&res);
    assert!(html.contains("same chosen and rejected text"), "setup row");

    // Without such pairs: no field in results.json (the golden above is unchanged), no finding.
    let inputs =
        AuditInputs { pairs: PairSource::Inline { name: "two pairs".into(), pairs: pairs[2..4].to_vec() }, ..inputs };
    let res = run_audit(&inputs, &mut |_: usize, _: usize, _: &str| {}).unwrap();
    assert!(res.identical_pairs_warning().is_none());
    assert!(res.findings.iter().all(|f| f.title != "Pairs without a difference"));
    assert!(serde_json::to_value(&res).unwrap()["inputs"].get("identical_pairs").is_none());
}
