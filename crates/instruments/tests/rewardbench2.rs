//! RewardBench 2 rows built from the fixture pairs, scored in batches with the llama fixture, and
//! checked against scoring every completion one by one.
//!
//! `tests/fixtures/rewardbench2/rows.jsonl` is what `build_rows` makes; set
//! `RB2_WRITE_FIXTURE=1` to rewrite it after changing `build_rows`.

mod common;

use reward_lens_engine::{PaddingSide, PairText, Truncation};
use reward_lens_instruments::rewardbench2::{parse_rows, row_correct, score_rows, summarise, Rb2Row};
use serde_json::{json, Map};

const SUBSETS: [&str; 5] = ["Factuality", "Precise IF", "Math", "Safety", "Focus"];

fn pairs() -> Vec<PairText> {
    let text = std::fs::read_to_string(common::fixtures().join("pairs.jsonl")).unwrap();
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn row(id: &str, subset: &str, pair: usize, p: &[PairText], chosen: Vec<String>, rejected: Vec<String>) -> Rb2Row {
    let mut extra = Map::new();
    extra.insert("num_correct".into(), json!(chosen.len()));
    extra.insert("num_incorrect".into(), json!(rejected.len()));
    extra.insert("total_completions".into(), json!(chosen.len() + rejected.len()));
    extra.insert("additional_metadata".into(), json!({"pair": pair, "dimension": p[pair].subset_str()}));
    Rb2Row { id: json!(id), prompt: p[pair].prompt.clone(), chosen, rejected, subset: subset.into(), extra }
}

/// 15 best-of-4 rows (pairs 0-14: the pair's chosen against its rejected and two off-prompt
/// responses) over five subsets, and two ref/tied Ties groups from pairs 15-19.
fn build_rows() -> Vec<Rb2Row> {
    let p = pairs();
    assert_eq!(p.len(), 20);
    let mut rows = Vec::new();
    for i in 0..15 {
        let rejected = vec![p[i].rejected.clone(), p[(i + 7) % 20].rejected.clone(), p[(i + 13) % 20].chosen.clone()];
        rows.push(row(&format!("{i}"), SUBSETS[i % 5], i, &p, vec![p[i].chosen.clone()], rejected));
    }
    let c = |i: usize| p[i].chosen.clone();
    let r = |i: usize| p[i].rejected.clone();
    rows.push(row("ref:0", "Ties", 15, &p, vec![c(15)], vec![r(15), r(16)]));
    rows.push(row("tied:0", "Ties", 15, &p, vec![c(15), c(16)], vec![r(15), r(16)]));
    rows.push(row("ref:1", "Ties", 17, &p, vec![c(17)], vec![r(17), r(18), r(19)]));
    rows.push(row("tied:1", "Ties", 17, &p, vec![c(17), c(18), c(19)], vec![r(17)]));
    rows
}

fn fixture_rows() -> Vec<Rb2Row> {
    let built = build_rows();
    let path = common::fixtures().join("rewardbench2/rows.jsonl");
    let text: String = built.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    if std::env::var_os("RB2_WRITE_FIXTURE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let stored = std::fs::read_to_string(&path).unwrap();
    assert_eq!(stored, text, "{} is stale: rerun with RB2_WRITE_FIXTURE=1", path.display());
    let rows = parse_rows(&stored, "rows.jsonl").unwrap();
    assert_eq!(rows, built);
    rows
}

#[test]
fn batched_scores_match_one_by_one() {
    let rows = fixture_rows();
    let model = common::load("llama");
    let mut seen = Vec::new();
    let scores = score_rows(&model, &rows, Truncation::Error, 7, PaddingSide::Left, &mut |n| seen.push(n)).unwrap();
    assert_eq!(scores.len(), rows.len());
    // 15 rows of 4 and Ties rows of 3, 4, 4 and 4 completions, in batches of 7.
    assert_eq!(seen.last(), Some(&75));
    assert_eq!(seen.len(), 11);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let one = |prompt: &str, response: &str| -> f64 {
        let enc = model.encode(prompt, response, Truncation::Error).unwrap();
        f64::from(model.score(&model.batch(&[enc.ids], PaddingSide::Right).unwrap()).unwrap().scores[0])
    };
    let (mut n_right, mut n_wrong) = (0, 0);
    for (r, s) in rows.iter().zip(&scores) {
        assert_eq!((s.chosen.len(), s.rejected.len()), (r.chosen.len(), r.rejected.len()));
        let chosen: Vec<f64> = r.chosen.iter().map(|c| one(&r.prompt, c)).collect();
        let rejected: Vec<f64> = r.rejected.iter().map(|x| one(&r.prompt, x)).collect();
        for (a, b) in s.chosen.iter().zip(&chosen).chain(s.rejected.iter().zip(&rejected)) {
            assert!((a - b).abs() < 1e-4, "row {}: batched {a} vs one-by-one {b}", r.id);
        }
        // Correct when every (chosen, rejected) pair, scored one by one, has chosen ahead.
        let mut pairwise = true;
        for c in &chosen {
            for x in &rejected {
                assert!((c - x).abs() > 1e-4, "row {}: a near tie makes the check meaningless", r.id);
                pairwise &= c > x;
            }
        }
        assert_eq!(row_correct(s), pairwise, "row {}", r.id);
        if pairwise {
            n_right += 1
        } else {
            n_wrong += 1
        }
    }
    assert_eq!(n_right + n_wrong, rows.len());

    // Another batch size and padding side give the same numbers.
    let again = score_rows(&model, &rows, Truncation::Error, 32, PaddingSide::Right, &mut |_| {}).unwrap();
    for (a, b) in scores.iter().zip(&again) {
        for (x, y) in a.chosen.iter().zip(&b.chosen).chain(a.rejected.iter().zip(&b.rejected)) {
            assert!((x - y).abs() < 1e-4);
        }
    }

    let report = summarise(&rows, &scores).unwrap();
    let names: Vec<&str> = report.subsets.iter().map(|s| s.subset.as_str()).collect();
    assert_eq!(names, ["Factuality", "Focus", "Math", "Precise IF", "Safety", "Ties"]);
    assert_eq!(report.subsets.iter().map(|s| s.n).sum::<usize>(), rows.len());
    assert_eq!(report.subsets.iter().map(|s| s.n_correct).sum::<usize>(), n_right);
    let ties = report.subsets[5].ties.as_ref().unwrap();
    assert_eq!((ties.n_ref, ties.n_tied, ties.n_paired), (2, 2, 2));
    let mean = report.subsets.iter().map(|s| s.score.unwrap()).sum::<f64>() / 6.0;
    assert!((report.mean.unwrap() - mean).abs() < 1e-12);
}

#[test]
fn encoding_errors_name_the_row_and_response() {
    let mut rows = fixture_rows();
    // A response far longer than the fixture model's context cannot be encoded without truncation.
    rows[2].rejected[1] = "word ".repeat(2_000);
    let model = common::load("llama");
    let err = score_rows(&model, &rows, Truncation::Error, 8, PaddingSide::Right, &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("row 2 (id 2)") && msg.contains("rejected[1]"), "{msg}");
}
