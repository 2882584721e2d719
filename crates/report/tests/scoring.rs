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
    let mut seen = Vec::new();
    let n = span.len();
    let emit = |ls: Vec<ScoreLine>| {
        out.extend(ls.iter().map(|l| serde_json::to_string(l).unwrap()));
        Ok::<_, Box<ReportError>>(())
    };
    score_in_file_batches(model, &pairs, span, opts, Truncation::Error, emit, &mut |k| seen.push(k)).unwrap();
    // Progress counts the span's pairs, never backwards, and ends at all of them.
    assert!(seen.windows(2).all(|w| w[0] <= w[1]) && seen.iter().all(|&k| k <= n), "{seen:?}");
    assert_eq!(seen.last().copied().unwrap_or(0), n);
    out
}

#[test]
fn any_span_gets_the_whole_runs_lines_and_they_are_the_engines_rewards() {
    let model = RewardModel::load(&fixtures().join("models/llama"), &LoadOptions::default()).unwrap();
    // 3 pairs per batch (one block of 24 pairs); 1 pair per batch (blocks of 8 pairs, sorted by
    // length inside): spans start and end inside batches and blocks.
    for (batch_size, padding) in [(6, PaddingSide::Right), (6, PaddingSide::Left), (2, PaddingSide::Right)] {
        let opts = ScoreOptions { batch_size, padding };
        let whole = lines(&model, 0..20, &opts);
        assert_eq!(whole.len(), 20);
        for span in [0..1, 1..5, 4..13, 13..20, 15..17, 16..20, 19..20, 7..7] {
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
    // Chunks of 8 rows (blocks of 32 sequences sorted by length): three chunks.
    let opts = ScoreOptions { batch_size: 4, padding: PaddingSide::Right };
    let run = |span: std::ops::Range<usize>| {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let n = span.len();
        let emit = |kept: &[_], scores: Vec<_>| {
            assert_eq!(kept.len(), scores.len());
            out.extend(kept.iter().zip(&scores).map(|(r, s)| serde_json::to_string(&RowScoreLine::new(r, s)).unwrap()));
            Ok::<_, Box<ReportError>>(())
        };
        score_rows_in_file_chunks(&model, &rows, span, &opts, Truncation::Error, emit, &mut |k| seen.push(k)).unwrap();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]) && seen.last() == Some(&n), "{seen:?}");
        out
    };
    let n = rows.len();
    let whole = run(0..n);
    assert_eq!(whole.len(), n);
    for span in [0..1, 1..n / 2, n / 2 - 1..n, n - 1..n] {
        assert_eq!(run(span.clone()), whole[span.clone()], "{span:?}");
    }
}
