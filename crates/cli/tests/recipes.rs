//! The SLURM and Kubernetes recipes in examples/ run as written: each array task / indexed pod's
//! script with the variables the scheduler sets (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT,
//! JOB_COMPLETION_INDEX), then the merge's, on the fixtures; the result is one run's bytes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, repo, run, tmp};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_reward-lens"))
}

/// `PATH` with the binary's folder first (the recipes call `reward-lens`).
fn path_with_bin() -> String {
    format!("{}:{}", bin().parent().unwrap().display(), std::env::var("PATH").unwrap_or_default())
}

fn env(c: &mut Command, work: &Path) {
    c.env("REWARD_LENS", bin())
        .env("REWARD_LENS_CACHE", common::tmp_root().join("cache"))
        .env("MODEL", fixtures().join("models/llama"))
        .env("PAIRS", fixtures().join("pairs.jsonl"))
        .env("WORK", work)
        .env("PATH", path_with_bin())
        .env("RAYON_NUM_THREADS", "1");
}

/// One run's scores and summary, to compare the recipes' with.
fn single(d: &Path) -> (Vec<u8>, Vec<u8>) {
    let (out, summary) = (d.join("single.jsonl"), d.join("single.json"));
    run(common::exe()
        .env("RAYON_NUM_THREADS", "1")
        .args(["score", "--model"])
        .arg(fixtures().join("models/llama"))
        .arg("--pairs")
        .arg(fixtures().join("pairs.jsonl"))
        .arg("--out")
        .arg(&out)
        .arg("--summary")
        .arg(&summary));
    (std::fs::read(out).unwrap(), std::fs::read(summary).unwrap())
}

fn slurm(name: &str) -> PathBuf {
    repo().join("examples/slurm").join(name)
}

/// N from the array line (`#SBATCH --array=0-7`).
fn array_size() -> usize {
    let text = std::fs::read_to_string(slurm("shard.sbatch")).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("#SBATCH --array=0-")).expect("an --array=0-M line");
    line.trim().parse::<usize>().unwrap() + 1
}

fn slurm_task(work: &Path, k: usize, n: usize) -> Command {
    let mut c = Command::new("bash");
    c.arg(slurm("shard.sbatch"));
    env(&mut c, work);
    c.env("SLURM_ARRAY_TASK_ID", k.to_string()).env("SLURM_ARRAY_TASK_COUNT", n.to_string());
    c.env("SLURM_ARRAY_TASK_MIN", "0").env("SLURM_ARRAY_TASK_MAX", (n - 1).to_string());
    c.env("SLURM_CPUS_PER_TASK", "1");
    c
}

/// What SLURM sets for `sbatch --array=K`: an array of one task.
fn slurm_rerun(work: &Path, k: usize) -> Command {
    let mut c = Command::new("bash");
    c.arg(slurm("shard.sbatch"));
    env(&mut c, work);
    c.env("SLURM_ARRAY_TASK_ID", k.to_string()).env("SLURM_ARRAY_TASK_COUNT", "1");
    c.env("SLURM_ARRAY_TASK_MIN", k.to_string()).env("SLURM_ARRAY_TASK_MAX", k.to_string());
    c.env("SLURM_CPUS_PER_TASK", "1");
    c
}

#[test]
fn the_slurm_array_and_its_merge_give_one_runs_bytes() {
    let d = tmp("slurm");
    let work = d.join("work");
    let n = array_size();
    assert_eq!(n, 8);
    for k in 0..n {
        run(&mut slurm_task(&work, k, n));
    }
    // A task that was pre-empted mid-write reruns alone and continues.
    let part = work.join("shards/scores.5.jsonl");
    let text = std::fs::read_to_string(&part).unwrap();
    std::fs::write(&part, &text[..text.find('\n').unwrap() + 9]).unwrap();
    // `sbatch --array=5` alone: an array of one, so N must be named (SHARDS), not taken from it.
    let o = slurm_rerun(&work, 5).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("set SHARDS") && err.contains("--array=5"), "{err}");
    let o = run(slurm_rerun(&work, 5).env("SHARDS", n.to_string()));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming: 1 of 3 pairs already scored"));
    let mut merge = Command::new("bash");
    merge.arg(slurm("merge.sbatch"));
    env(&mut merge, &work);
    let o = run(&mut merge);
    assert!(String::from_utf8_lossy(&o.stdout).contains("8 done, 0 partial, 0 missing"));
    let (scores, summary) = single(&d);
    assert!(std::fs::read(work.join("scores.jsonl")).unwrap() == scores);
    assert!(std::fs::read(work.join("summary.json")).unwrap() == summary);
}

#[test]
fn submit_queues_the_merge_after_every_array_task() {
    let d = tmp("slurm-submit");
    // A stand-in sbatch: logs its arguments and, with --parsable, answers a job id.
    let fake = d.join("bin");
    std::fs::create_dir_all(&fake).unwrap();
    let log = d.join("sbatch.log");
    std::fs::write(
        fake.join("sbatch"),
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\ncase \" $* \" in *' --parsable '*) echo '4242;cluster';; *) echo 'Submitted batch job 4243';; esac\n",
            log.display()
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(fake.join("sbatch")));
    let mut c = Command::new("bash");
    c.arg(slurm("submit.sh"));
    env(&mut c, &d.join("work"));
    c.env("PATH", format!("{}:{}", fake.display(), path_with_bin()));
    run(&mut c);
    let calls: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].contains("--parsable") && calls[0].ends_with("shard.sbatch"), "{}", calls[0]);
    // The array's size and SHARDS (what a rerun of one task needs) come from shard.sbatch's line.
    assert!(calls[0].contains("--array=0-7 "), "{}", calls[0]);
    assert!(calls[1].contains("--dependency=afterok:4242 ") && calls[1].ends_with("merge.sbatch"), "{}", calls[1]);
    assert!(d.join("work/logs").is_dir());
}

/// The shell script of a Job's container (`args: - |` block) and its env values.
fn container(yaml: &str) -> (String, Vec<(String, String)>) {
    let lines: Vec<&str> = yaml.lines().collect();
    let at = lines.iter().position(|l| l.trim() == "- |").expect("an args block");
    let indent = lines[at + 1].len() - lines[at + 1].trim_start().len();
    let script: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect();
    let env = lines
        .iter()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("- {name: ")?.strip_suffix('}')?;
            let (name, value) = l.split_once(", value: ")?;
            Some((name.to_string(), value.trim_matches('"').to_string()))
        })
        .collect();
    (script.join("\n"), env)
}

#[test]
fn the_kubernetes_indexed_job_and_its_merge_give_one_runs_bytes() {
    let d = tmp("kubernetes");
    let work = d.join("work");
    let yaml = std::fs::read_to_string(repo().join("examples/kubernetes/shards.yaml")).unwrap();
    let completions: usize =
        yaml.lines().find_map(|l| l.trim().strip_prefix("completions: ")).expect("completions").parse().unwrap();
    assert!(yaml.contains("completionMode: Indexed"));
    let (script, vars) = container(&yaml);
    let n_var = vars.iter().find(|(k, _)| k == "N").expect("an N variable").1.parse::<usize>().unwrap();
    assert_eq!(n_var, completions, "N must equal completions");
    for k in 0..completions {
        let mut c = Command::new("sh");
        c.arg("-c").arg(&script);
        for (name, value) in &vars {
            c.env(name, value);
        }
        env(&mut c, &work); // MODEL, PAIRS, WORK: the fixtures and a scratch volume
        c.env("JOB_COMPLETION_INDEX", k.to_string());
        run(&mut c);
    }
    let (merge_script, _) = container(&std::fs::read_to_string(repo().join("examples/kubernetes/merge.yaml")).unwrap());
    let mut c = Command::new("sh");
    c.arg("-c").arg(&merge_script);
    env(&mut c, &work);
    let o = run(&mut c);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{completions} done, 0 partial, 0 missing")));
    let (scores, summary) = single(&d);
    assert!(std::fs::read(work.join("scores.jsonl")).unwrap() == scores);
    assert!(std::fs::read(work.join("summary.json")).unwrap() == summary);
}
