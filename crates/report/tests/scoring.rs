//! `score`'s file batches: any span of the input (a shard, a resumed tail) gets exactly the lines
//! one run over the whole file writes for it, and that run's rewards are the engine's own.

use std::path::PathBuf;

use reward_lens_engine::{LoadOptions, PaddingSide, RewardModel, ScoreOptions, Truncation};
use reward_lens_report::datasets::{read_pairs, read_rewardbench2};
use reward_lens_report::scoring::{score_in_file_batches, score_rows_in_file_chunks, RowScoreLine, ScoreLine};
use reward_lens_report::ReportError;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn lines(model: &RewardModel, span: std::ops::Range<usize>, opts: &ScoreOptions) -> Vec<String> {
    let pairs = read_pairs(&fixtures().join("pairs.jsonl")).unwrap();
    let mut out = Vec::new();
    score_in_file_batches(model, &pairs, span, opts, Truncation::Error, |ls: Vec<ScoreLine>| {
        out.extend(ls.iter().map(|l| serde_json::to_string(l).unwrap()));
        Ok::<_, Box<ReportError>>(())
    })
    .unwrap();
    out
}

#[test]
fn any_span_gets_the_whole_runs_lines_and_they_are_the_engines_rewards() {
    let model = RewardModel::load(&fixtures().join("models/llama"), &LoadOptions::default()).unwrap();
    for padding in [PaddingSide::Right, PaddingSide::Left] {
        // 3 pairs per batch: spans start and end inside batches.
        let opts = ScoreOptions { batch_size: 6, padding };
        let whole = lines(&model, 0..20, &opts);
        assert_eq!(whole.len(), 20);
        for span in [0..1, 1..5, 4..13, 13..20, 19..20, 7..7] {
            assert_eq!(lines(&model, span.clone(), &opts), whole[span.clone()], "{span:?} {padding:?}");
        }
        let pairs = read_pairs(&fixtures().join("pairs.jsonl")).unwrap();
        let enc = model.encode_pairs(&pairs, Truncation::Error).unwrap();
        let engine = model.score_pair_texts(&pairs, &enc, &opts, &mut |_| {}).unwrap();
        for (line, s) in whole.iter().zip(&engine) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["chosen_score"].as_f64().unwrap() as f32, s.chosen);
            assert_eq!(v["rejected_score"].as_f64().unwrap() as f32, s.rejected);
            assert_eq!(v["margin"].as_f64().unwrap() as f32, s.chosen - s.rejected);
        }
    }
}

#[test]
fn any_span_of_rewardbench2_rows_gets_the_whole_runs_lines() {
    let model = RewardModel::load(&fixtures().join("models/llama"), &LoadOptions::default()).unwrap();
    let rows = read_rewardbench2(&fixtures().join("rewardbench2/rows.jsonl")).unwrap();
    let opts = ScoreOptions { batch_size: 8, padding: PaddingSide::Right };
    let run = |span: std::ops::Range<usize>| {
        let mut out = Vec::new();
        score_rows_in_file_chunks(&model, &rows, span, &opts, Truncation::Error, |kept, scores| {
            assert_eq!(kept.len(), scores.len());
            out.extend(kept.iter().zip(&scores).map(|(r, s)| serde_json::to_string(&RowScoreLine::new(r, s)).unwrap()));
            Ok::<_, Box<ReportError>>(())
        })
        .unwrap();
        out
    };
    let n = rows.len();
    let whole = run(0..n);
    assert_eq!(whole.len(), n);
    for span in [0..1, 1..n / 2, n / 2 - 1..n, n - 1..n] {
        assert_eq!(run(span.clone()), whole[span.clone()], "{span:?}");
    }
}
