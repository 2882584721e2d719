//! Runs the whole audit from Rust, as `reward-lens audit` does:
//!
//! ```sh
//! cargo run --release -p reward-lens-report --example audit -- MODEL_DIR PAIRS.jsonl OUT_DIR
//! ```
use std::path::PathBuf;

use reward_lens_report::{run_audit, write_files, AuditInputs, AuditOptions, PairSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [model, pairs, out] = args.as_slice() else {
        return Err("usage: audit MODEL_DIR PAIRS.jsonl OUT_DIR".into());
    };
    let inputs = AuditInputs {
        model_dir: model.clone(),
        model_name: model.display().to_string(),
        pairs: PairSource::File(pairs.clone()),
        probes: Vec::new(),   // the built-in reward-hacking probes
        concepts: Vec::new(), // the built-in concept sets
        options: AuditOptions { max_pairs: 64, ..AuditOptions::default() },
        answer_key: None,
        tail_subsets: vec!["tail".into()],
    };
    // Any FnMut(stage index, stage count, stage name) is a progress sink.
    let mut progress = |i: usize, n: usize, stage: &str| eprintln!("[{}/{n}] {stage}", i + 1);
    let results = run_audit(&inputs, &mut progress)?;
    println!("accuracy {:.3} on {} pairs", results.evaluation.accuracy, results.evaluation.n);
    for f in &results.findings {
        println!("- {}: {}", f.title, f.text);
    }
    let (json, html) = write_files(&results, out)?;
    println!("wrote {} and {}", json.display(), html.display());
    Ok(())
}
