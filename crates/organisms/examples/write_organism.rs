//! Writes an organism's data files: `cargo run -p reward-lens-organisms --example write_organism -- PRESET DIR`.

use std::process::ExitCode;

use reward_lens_organisms::{generate, write_files, OrganismSpec};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [preset, dir] = args.as_slice() else {
        eprintln!("usage: write_organism PRESET DIR   (presets: {})", OrganismSpec::presets().join(", "));
        return ExitCode::FAILURE;
    };
    let spec = match OrganismSpec::try_preset(preset) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let ds = generate(&spec);
    if let Err(e) = write_files(dir.as_ref(), &ds) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let k = &ds.key;
    println!(
        "{}: {} train ({} tail), {} test ({} tail), {} probes, {} concept pairs, vocab_size {}",
        k.organism,
        k.counts.n_train,
        k.counts.n_train_tail,
        k.counts.n_test,
        k.counts.n_test_tail,
        k.counts.n_probes,
        k.counts.n_concept_pairs,
        k.counts.vocab_size
    );
    ExitCode::SUCCESS
}
