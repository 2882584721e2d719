//! `reward-lens`: look inside reward models. A thin layer over the engine: parse arguments,
//! read and write files, show progress; the maths lives in the library crates. A library too,
//! so that the Python package runs the same command lines in-process (`reward_lens_rs.cli`, what
//! the Ray driver's workers call) with no binary to install on every machine.

mod args;
mod attribute;
mod audit;
mod bench;
mod cache;
mod cart;
mod compare;
mod concepts;
mod conflict;
mod diagnose;
mod eval;
mod faithfulness;
mod info;
mod lens;
mod memory;
mod merge;
mod organism;
mod output;
mod patch;
mod path_patch;
mod probe;
mod progress;
mod sae;
mod score;
mod train;

use clap::{Parser, Subcommand};

pub use args::{keep_models, DtypeArg, ModelArgs};

#[derive(Parser)]
#[command(
    name = "reward-lens",
    version,
    about = "Look inside reward models: why they prefer one answer, which components cause it, where they are hackable.",
    long_about = "Look inside reward models.\n\n\
A reward model reads (prompt, response) and returns one number. reward-lens loads HuggingFace reward \
models (Llama, Mistral, Qwen2, Qwen3, Gemma-2, GPT-2, ArmoRM) from a local directory, scores preference \
pairs, and exports activations at TransformerLens-named sites.\n\n\
Every command that reads a model takes --model DIR; without it, a small example model embedded in the binary is \
used (audit: the `default` model organism, trained on first use and cached).\n\n\
Large populations: score, eval, lens, attribute, patch, atp, path-patch, faithfulness and audit take --shard K/N (the K-th of N \
contiguous ranges of the pairs file); `reward-lens merge` turns the N outputs into exactly what one run writes, \
`reward-lens status` says which shards are done.",
    after_help = "Examples:\n  reward-lens score --pairs examples/pairs.jsonl\n  reward-lens info --model path/to/Skywork-Reward-Llama-3.1-8B\n  reward-lens cache --prompt 'Hi' --response 'Hello!' --sites 'blocks.*.hook_resid_post' --out acts.safetensors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: run every instrument on a model; write results.json and a self-contained report.html.
    Audit(audit::AuditArgs),
    /// Describe a model: architecture, layers, widths, heads, parameters, dtype, head type.
    Info(info::InfoArgs),
    /// Score preference pairs (JSONL with prompt/chosen/rejected) and report accuracy.
    Score(score::ScoreArgs),
    /// Accuracy per subset with CIs (and RewardBench section scores), several models side by side.
    Eval(eval::EvalArgs),
    /// Run one conversation and save activations at the chosen sites to a .safetensors file.
    Cache(cache::CacheArgs),
    /// The reward at every depth of the residual stream (reward lens), chosen vs rejected.
    Lens(lens::LensArgs),
    /// Split each reward exactly over embeddings, attention (per head) and MLPs.
    Attribute(attribute::AttributeArgs),
    /// Concept vectors (sycophancy, verbosity, …): alignment with the reward, steering curves.
    Concepts(concepts::ConceptsArgs),
    /// Reward-term conflicts: one direction per group of pairs, their cosines and classification.
    Conflict(conflict::ConflictArgs),
    /// Compare two or more models on the same pairs.
    Compare(compare::CompareArgs),
    /// Reward-hacking probes: what the model pays for padding, flattery, emoji, … (with statistics).
    Probe(probe::ProbeArgs),
    /// Diagnostic set: coverage and distortion per dimension, cascades across dimensions.
    Diagnose(diagnose::DiagnoseArgs),
    /// Sparse autoencoders: collect activations, train TopK SAEs, latent alignment, decomposition.
    Sae(sae::SaeArgs),
    /// Activation patching: how much of the margin each component's output carries (per pair, JSONL).
    Patch(patch::PatchArgs),
    /// Attribution patching: patch effects to first order for all components from one gradient pass.
    Atp(patch::PatchArgs),
    /// Path patching: how much of a head's effect flows directly into a later component.
    PathPatch(path_patch::PathPatchArgs),
    /// Does linear attribution predict patching? Spearman ρ of DLA/AtP vs patching, with CIs.
    Faithfulness(faithfulness::FaithfulnessArgs),
    /// Build a model organism: a tiny reward model with planted, known rules and its answer key.
    Organism(organism::OrganismArgs),
    /// Train a reward model on preference pairs (Bradley–Terry): fine-tune a loaded one or a small Llama from scratch.
    Train(train::TrainArgs),
    /// CART: circuits that rare (tail) inputs run through, their fragility, and circuit-aware training.
    Cart(cart::CartArgs),
    /// Combine the outputs of `--shard K/N` runs into exactly what one run writes (aggregates recomputed).
    Merge(merge::MergeArgs),
    /// Which shards of a sharded run are done, partial (running or stopped) or missing, from what is on disk.
    Status(merge::StatusArgs),
    /// Measure scoring throughput (tokens/s, GFLOP/s vs the machine's matmul rate) and peak memory.
    Bench(bench::BenchArgs),
}

/// The binary's `main`: parses the process's arguments, runs the command, exits 1 with the
/// error on failure.
pub fn main() {
    reward_lens_engine::runtime::tune_allocator();
    let cli = Cli::parse();
    let result = outputs_are_not_inputs(&std::env::args().skip(1).collect::<Vec<_>>()).and_then(|()| dispatch(cli));
    // Lets `bench` read a child's own peak memory (RUSAGE_CHILDREN only gives the max so far).
    if std::env::var_os(memory::REPORT_ENV).is_some() {
        eprintln!("{} {}", memory::REPORT_TAG, memory::peak_rss().unwrap_or(0));
    }
    if let Err(e) = result {
        eprintln!("error: {}", message(&e));
        std::process::exit(1);
    }
}

/// Runs one command line in this process (`args` without the program name), as the binary does;
/// `--help` prints and succeeds. The error is the message the binary prints after `error: `.
/// `bench` runs the binary as child processes and is refused here.
pub fn run_args(args: &[String]) -> Result<(), String> {
    let argv = std::iter::once("reward-lens".to_string()).chain(args.iter().cloned());
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            print!("{e}");
            return Ok(());
        }
        Err(e) => return Err(e.to_string().trim_start_matches("error: ").trim_end().to_string()),
    };
    if matches!(cli.command, Command::Bench(_)) {
        return Err("`bench` runs the binary as child processes: run it from the command line".into());
    }
    outputs_are_not_inputs(args).and_then(|()| dispatch(cli)).map_err(|e| message(&e))
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Audit(a) => audit::run(a),
        Command::Info(a) => info::run(a),
        Command::Score(a) => score::run(a),
        Command::Cache(a) => cache::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Lens(a) => lens::run(a),
        Command::Attribute(a) => attribute::run(a),
        Command::Concepts(a) => concepts::run(a),
        Command::Conflict(a) => conflict::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Probe(a) => probe::run(a),
        Command::Diagnose(a) => diagnose::run(a),
        Command::Sae(a) => sae::run(a),
        Command::Patch(a) => patch::run(a),
        Command::Atp(a) => patch::run_atp(a),
        Command::PathPatch(a) => path_patch::run(a),
        Command::Faithfulness(a) => faithfulness::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(a),
        Command::Organism(a) => organism::run(a),
        Command::Cart(a) => cart::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Status(a) => merge::status(a),
    }
}

/// Flags whose value is a path the command writes.
const OUTPUT_FLAGS: &[&str] = &["--out", "--summary", "--markdown"];

/// Refuses, before any work, an output path that is also one of the command's inputs (any other
/// path on the command line, or a file of a model folder named there): writing it would destroy
/// what is being read. One rule for every command, so no command can forget it.
fn outputs_are_not_inputs(args: &[String]) -> anyhow::Result<()> {
    let mut outs: Vec<(&str, std::path::PathBuf)> = Vec::new();
    let mut others: Vec<std::path::PathBuf> = Vec::new();
    // The command's own words (`sae train`) are not paths, even beside a folder of that name
    // (`--out sae/` the second time).
    let mut i = command_words(args);
    while i < args.len() {
        let (flag, value, step) = match args[i].split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string()), 1),
            _ => (args[i].as_str(), args.get(i + 1).cloned(), 2),
        };
        if OUTPUT_FLAGS.contains(&flag) {
            if let Some(v) = value {
                outs.push((flag, v.into()));
            }
            i += step;
            continue;
        }
        if !args[i].starts_with("--") || step == 1 {
            let v = if step == 1 { value.unwrap_or_default() } else { args[i].clone() };
            let p = std::path::PathBuf::from(v);
            if p.exists() {
                if p.join("config.json").is_file() {
                    // Every file of a model folder (weight shards included), not only the usual names.
                    if let Ok(entries) = std::fs::read_dir(&p) {
                        others.extend(entries.flatten().map(|e| e.path()));
                    }
                }
                others.push(p);
            }
        }
        i += 1;
    }
    let inputs: Vec<(&str, &std::path::Path)> = others.iter().map(|p| ("input", p.as_path())).collect();
    for (flag, o) in &outs {
        reward_lens_report::fingerprint::not_an_input(flag, o, &inputs)?;
    }
    let outs: Vec<(&str, &std::path::Path)> = outs.iter().map(|(f, o)| (*f, o.as_path())).collect();
    reward_lens_report::fingerprint::distinct_outputs(&outs)?;
    Ok(())
}

/// How many leading arguments name the command and its subcommands: 2 for `sae train …`.
fn command_words(args: &[String]) -> usize {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut n = 0;
    while let Some(sub) = args.get(n).and_then(|w| cmd.find_subcommand(w)).cloned() {
        cmd = sub;
        n += 1;
    }
    n
}

/// The error and its causes, `outer: inner`, each said once: library errors that quote their
/// source in their own message (`file:line: chosen: …`) would otherwise repeat it.
fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    for (i, s) in causes.iter().enumerate() {
        // A context that a deeper cause already states (`pairs.jsonl:3` before
        // `pairs.jsonl:3: chosen: …`) is said by that cause.
        if causes[i + 1..].iter().any(|later| later.starts_with(s.as_str())) {
            continue;
        }
        if !msg.contains(s.as_str()) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(s);
        }
    }
    msg
}
