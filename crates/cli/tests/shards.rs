//! `--shard K/N`, `merge` and `status`: for every sharded command and N ∈ {1, 2, 3, 7}, the
//! merged shards are byte for byte what one run writes; sets of shards that are not one run's
//! are refused with the shards named; a stopped shard resumes alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixtures, run, tmp};

fn exe() -> Command {
    let mut c = common::exe();
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn llama() -> PathBuf {
    fixtures().join("models/llama")
}

fn pairs() -> PathBuf {
    fixtures().join("pairs.jsonl")
}

/// A command line of `cmd` on the fixtures, writing `out`.
fn cmd(args: &[&str], out: &Path) -> Command {
    let mut c = exe();
    c.args(args).arg("--model").arg(llama()).arg("--pairs").arg(pairs()).arg("--out").arg(out);
    c
}

fn fails(c: &mut Command) -> String {
    let o: Output = c.output().unwrap();
    assert!(!o.status.success(), "expected a failure: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs `args` whole and as N shards, merges, and compares the bytes.
fn check_merge(name: &str, args: &[&str], ext: &str) {
    let d = tmp(&format!("merge-{name}"));
    let single = d.join(format!("single.{ext}"));
    run(&mut cmd(args, &single));
    for n in [1usize, 2, 3, 7] {
        let dir = d.join(format!("n{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..n {
            run(cmd(args, &dir.join(format!("part.{k}.{ext}"))).args(["--shard", &format!("{k}/{n}")]));
        }
        let merged = d.join(format!("merged{n}.{ext}"));
        run(exe().arg("merge").arg("--out").arg(&merged).arg(&dir));
        assert!(
            bytes(&single) == bytes(&merged),
            "{name}: {n} shards merged differ from one run ({})",
            merged.display()
        );
    }
}

#[test]
fn score_shards_merge_into_one_runs_bytes_and_summary() {
    let d = tmp("merge-score-summary");
    let single = d.join("single.jsonl");
    run(cmd(&["score"], &single).arg("--summary").arg(d.join("single.json")));
    for n in [1usize, 2, 3, 7] {
        let dir = d.join(format!("n{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..n {
            run(cmd(&["score"], &dir.join(format!("s.{k}.jsonl"))).args(["--shard", &format!("{k}/{n}")]));
        }
        let (merged, summary) = (d.join(format!("m{n}.jsonl")), d.join(format!("m{n}.json")));
        run(exe().arg("merge").arg("--out").arg(&merged).arg("--summary").arg(&summary).arg(&dir));
        assert!(bytes(&single) == bytes(&merged), "{n} shards");
        assert!(bytes(&d.join("single.json")) == bytes(&summary), "summary of {n} shards");
    }
    // Shard ranges are ⌊k·M/N⌋: 20 pairs in 7 shards hold 2, 3, 3, 3, 3, 3, 3 pairs.
    let counts: Vec<usize> = (0..7).map(|k| common::lines(&d.join(format!("n7/s.{k}.jsonl"))).len()).collect();
    assert_eq!(counts, [2, 3, 3, 3, 3, 3, 3]);
    let first = common::lines(&d.join("n7/s.1.jsonl"));
    assert_eq!(first[0]["id"], common::lines(&single)[2]["id"]);
}

#[test]
fn rewardbench2_score_shards_merge_into_one_runs_bytes_and_subset_scores() {
    let d = tmp("merge-rb2");
    let rows = fixtures().join("rewardbench2/rows.jsonl");
    // 3 rows a chunk at --batch-size 12: shard edges fall inside chunks.
    let score = |out: &Path| {
        let mut c = exe();
        c.args(["score", "--batch-size", "12", "--model"]).arg(llama()).arg("--pairs").arg(&rows).arg("--out").arg(out);
        c
    };
    run(score(&d.join("single.jsonl")).arg("--summary").arg(d.join("single.json")));
    for n in [2usize, 3, 7] {
        let dir = d.join(format!("n{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..n {
            run(score(&dir.join(format!("s.{k}.jsonl"))).args(["--shard", &format!("{k}/{n}")]));
        }
        let (merged, summary) = (d.join(format!("m{n}.jsonl")), d.join(format!("m{n}.json")));
        run(exe().arg("merge").arg("--out").arg(&merged).arg("--summary").arg(&summary).arg(&dir));
        assert!(bytes(&d.join("single.jsonl")) == bytes(&merged), "{n} shards");
        assert!(bytes(&d.join("single.json")) == bytes(&summary), "subset scores of {n} shards");
    }
    assert!(std::fs::read_to_string(d.join("single.json")).unwrap().contains("\"format\": \"rewardbench2\""));
}

#[test]
fn score_shards_with_odd_batches_merge_exactly() {
    // 3 pairs a batch: shard edges (6, 13 of 20) fall inside batches, which shards recompute.
    check_merge("score-b7", &["score", "--batch-size", "7"], "jsonl");
}

#[test]
fn eval_shards_merge_into_one_runs_bytes() {
    let d = tmp("merge-eval");
    let args = |c: &mut Command| {
        c.args(["eval", "--model"]).arg(llama()).arg("--model").arg(fixtures().join("models/qwen2"));
        c.arg("--pairs").arg(pairs());
    };
    let single = d.join("single.json");
    let mut c = exe();
    args(&mut c);
    run(c.arg("--out").arg(&single));
    for n in [1usize, 2, 3, 7] {
        let dir = d.join(format!("n{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..n {
            let mut c = exe();
            args(&mut c);
            run(c.arg("--out").arg(dir.join(format!("e.{k}.jsonl"))).args(["--shard", &format!("{k}/{n}")]));
        }
        let merged = d.join(format!("m{n}.json"));
        run(exe().arg("merge").arg("--out").arg(&merged).arg(&dir));
        assert!(bytes(&single) == bytes(&merged), "{n} shards");
    }
}

#[test]
fn lens_shards_merge_into_one_runs_bytes() {
    check_merge("lens", &["lens", "--seed", "5"], "json");
    // An odd batch (5 sequences) splits pairs across batches: shards align to 5 pairs.
    check_merge("lens-b5", &["lens", "--kind", "frozen", "--batch-size", "5"], "json");
}

#[test]
fn attribute_shards_merge_into_one_runs_bytes() {
    check_merge("attribute", &["attribute", "--heads"], "json");
}

#[test]
fn patch_atp_faithfulness_and_path_patch_shards_merge_into_one_runs_bytes() {
    check_merge("patch", &["patch", "--granularity", "head"], "jsonl");
    check_merge("atp", &["atp"], "jsonl");
    check_merge("faithfulness", &["faithfulness"], "jsonl");
    check_merge("path-patch", &["path-patch", "--sender", "1.0"], "jsonl");
}

#[test]
fn shards_of_other_runs_are_refused_by_name() {
    let d = tmp("merge-refusals");
    let shard = |dir: &str, k: usize, n: usize, extra: &[&str]| -> PathBuf {
        let out = d.join(dir).join(format!("s.{k}.jsonl"));
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        run(cmd(&["score"], &out).args(["--shard", &format!("{k}/{n}")]).args(extra));
        out
    };
    let (a0, a1, a2) = (shard("a", 0, 3, &[]), shard("a", 1, 3, &[]), shard("a", 2, 3, &[]));
    let merge = |paths: &[&PathBuf]| {
        let mut c = exe();
        c.arg("merge").arg("--out").arg(d.join("merged.jsonl")).args(paths);
        fails(&mut c)
    };
    let e = merge(&[&a0, &a2]);
    assert!(e.contains("missing shard 1/3"), "{e}");
    let e = merge(&[&a0, &a1, &a1, &a2]);
    assert!(e.contains("shard 1/3 is given more than once"), "{e}");
    let other_options = shard("b", 1, 3, &["--batch-size", "4"]);
    let e = merge(&[&a0, &other_options, &a2]);
    assert!(e.contains(&format!("{} (shard 1/3): other options", other_options.display())), "{e}");
    let other_n = shard("c", 1, 2, &[]);
    let e = merge(&[&a0, &other_n, &a2]);
    assert!(e.contains("another shard count (N = 2, not 3)"), "{e}");
    let qwen = d.join("q").join("s.1.jsonl");
    std::fs::create_dir_all(qwen.parent().unwrap()).unwrap();
    let mut c = exe();
    c.args(["score", "--model"]).arg(fixtures().join("models/qwen2")).arg("--pairs").arg(pairs());
    run(c.arg("--out").arg(&qwen).args(["--shard", "1/3"]));
    let e = merge(&[&a0, &qwen, &a2]);
    assert!(e.contains(&format!("{} (shard 1/3): another model", qwen.display())), "{e}");
    // Another input: the same pairs file, one pair dropped.
    let fewer = d.join("fewer.jsonl");
    let text = std::fs::read_to_string(pairs()).unwrap();
    std::fs::write(&fewer, text.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let other_input = d.join("i").join("s.1.jsonl");
    std::fs::create_dir_all(other_input.parent().unwrap()).unwrap();
    let mut c = exe();
    c.args(["score", "--model"]).arg(llama()).arg("--pairs").arg(&fewer);
    run(c.arg("--out").arg(&other_input).args(["--shard", "1/3"]));
    let e = merge(&[&a0, &other_input, &a2]);
    assert!(e.contains("another input"), "{e}");
    // Not a shard at all.
    let whole = d.join("whole.jsonl");
    run(&mut cmd(&["score"], &whole));
    let e = merge(&[&whole]);
    assert!(e.contains("not a shard (written without --shard K/N)"), "{e}");
    // Bad K/N.
    let e = fails(cmd(&["score"], &d.join("x.jsonl")).args(["--shard", "3/3"]));
    assert!(e.contains("0 ≤ K < N"), "{e}");
    // status and merge account for every shard: N is bounded.
    let e = fails(cmd(&["score"], &d.join("x.jsonl")).args(["--shard", "0/100001"]));
    assert!(e.contains("at most 100000 shards"), "{e}");
    // status counts only the first shard's run: another run's shard 1/3 is warned about and missing.
    let dir = d.join("mixed");
    std::fs::create_dir_all(&dir).unwrap();
    for (f, name) in [(&a0, "s.0.jsonl"), (&other_options, "s.1.jsonl")] {
        std::fs::copy(f, dir.join(name)).unwrap();
        std::fs::copy(
            d.join(f.parent().unwrap()).join(format!("{}.meta.json", f.file_name().unwrap().to_string_lossy())),
            dir.join(format!("{name}.meta.json")),
        )
        .unwrap();
    }
    let s = String::from_utf8_lossy(&run(exe().arg("status").arg(&dir)).stdout).into_owned();
    assert!(s.contains("(shard 1/3): other options") && s.contains("1 done, 0 partial, 2 missing"), "{s}");
    assert!(s.contains("1/3  missing"), "{s}");
    let e = fails(
        exe()
            .args(["lens", "--prompt", "a", "--chosen", "b", "--rejected", "c", "--shard", "0/2", "--out"])
            .arg(d.join("l.json")),
    );
    assert!(e.contains("shards split a --pairs file"), "{e}");
    let e = fails(&mut cmd(&["attribute", "--neurons", "3", "--shard", "0/2"], &d.join("a.json")));
    assert!(e.contains("--shard with --neurons"), "{e}");
}

#[test]
fn a_stopped_shard_shows_as_partial_and_resumes_alone() {
    let d = tmp("merge-resume");
    let single = d.join("single.jsonl");
    run(&mut cmd(&["patch"], &single));
    let dir = d.join("shards");
    std::fs::create_dir_all(&dir).unwrap();
    let part = |k: usize| dir.join(format!("p.{k}.jsonl"));
    for k in [0, 2] {
        run(cmd(&["patch"], &part(k)).args(["--shard", &format!("{k}/3")]));
    }
    // Shard 1 stopped after 2 of its 7 pairs, in the middle of its third line.
    run(cmd(&["patch"], &part(1)).args(["--shard", "1/3"]));
    let text = std::fs::read_to_string(part(1)).unwrap();
    let cut: usize = text.split_inclusive('\n').take(2).map(str::len).sum::<usize>() + 10;
    std::fs::write(part(1), &text[..cut]).unwrap();
    std::fs::remove_file(part(2)).unwrap();
    std::fs::remove_file(dir.join("p.2.jsonl.meta.json")).unwrap();
    let status = run(exe().arg("status").arg(&dir));
    let s = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(s.contains("`patch` over 20 pairs in 3 shards: 1 done, 1 partial, 1 missing"), "{s}");
    assert!(s.contains("1/3  partial  pairs [6, 13), 2 of 7 written"), "{s}");
    assert!(s.contains("2/3  missing"), "{s}");
    let e = fails(exe().arg("merge").arg("--out").arg(d.join("m.jsonl")).arg(&dir));
    assert!(e.contains("missing shard 2/3"), "{e}");
    run(cmd(&["patch"], &part(2)).args(["--shard", "2/3"]));
    let e = fails(exe().arg("merge").arg("--out").arg(d.join("m.jsonl")).arg(&dir));
    assert!(e.contains(&format!("unfinished shard: {} (shard 1/3: 2 of 7 pairs)", part(1).display())), "{e}");
    // Resuming with another shard is refused; with its own, it finishes.
    let e = fails(cmd(&["patch", "--resume"], &part(1)).args(["--shard", "2/3"]));
    assert!(e.contains("the shard differs (1/3 then, 2/3 now)"), "{e}");
    let o = run(cmd(&["patch", "--resume"], &part(1)).args(["--shard", "1/3"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming: 2 of 7 pairs already done"));
    let s = String::from_utf8_lossy(&run(exe().arg("status").arg(&dir)).stdout).into_owned();
    assert!(s.contains("3 done, 0 partial, 0 missing"), "{s}");
    run(exe().arg("merge").arg("--out").arg(d.join("m.jsonl")).arg(&dir));
    assert!(bytes(&single) == bytes(&d.join("m.jsonl")));
}

#[test]
fn a_resumed_score_shard_equals_an_uninterrupted_one() {
    let d = tmp("merge-score-resume");
    let whole = d.join("whole.jsonl");
    run(cmd(&["score"], &whole).args(["--shard", "1/3"]));
    let out = d.join("cut.jsonl");
    run(cmd(&["score"], &out).args(["--shard", "1/3"]));
    // Two lines and a half kept: the shard resumes after its second pair, mid-batch.
    let text = std::fs::read_to_string(&out).unwrap();
    let cut: usize = text.split_inclusive('\n').take(2).map(str::len).sum::<usize>() + 7;
    std::fs::write(&out, &text[..cut]).unwrap();
    run(cmd(&["score", "--resume"], &out).args(["--shard", "1/3"]));
    assert!(bytes(&whole) == bytes(&out));
}

/// Drops wall-clock fields anywhere in the tree.
fn without_timings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|k, _| !matches!(k.as_str(), "timings" | "seconds" | "total_seconds" | "created"));
            m.values_mut().for_each(without_timings);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(without_timings),
        _ => {}
    }
}

/// results.json without timings, as text; report.html with its seconds blanked.
fn audit_files(dir: &Path) -> (String, String) {
    let mut v = common::json(&dir.join("results.json"));
    without_timings(&mut v);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let mut blank = String::new();
    // "1.23 s" → "# s": the stage table and the header's total.
    let mut rest = html.as_str();
    while let Some(i) = rest.find(" s<") {
        let head = &rest[..i];
        let cut = head.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.').len();
        blank.push_str(&head[..cut]);
        blank.push_str("# s<");
        rest = &rest[i + 3..];
    }
    blank.push_str(rest);
    (serde_json::to_string_pretty(&v).unwrap(), blank)
}

#[test]
fn audit_shards_merge_into_one_runs_results_and_report() {
    let d = tmp("merge-audit");
    let audit = |out: &Path| {
        let mut c = exe();
        c.args(["audit", "--model"]).arg(llama()).arg("--pairs").arg(pairs()).arg("--out").arg(out);
        c.args(["--batch-size", "6"]);
        c
    };
    let single = d.join("single");
    run(&mut audit(&single));
    let (results, html) = audit_files(&single);
    assert!(results.contains("\"pairs_used\": 20"));
    for n in [1usize, 2, 3, 7] {
        let dir = d.join(format!("n{n}"));
        for k in 0..n {
            run(audit(&dir.join(format!("a{k}"))).args(["--shard", &format!("{k}/{n}")]));
        }
        let merged = d.join(format!("merged{n}"));
        let o = run(exe().arg("merge").arg("--out").arg(&merged).arg(&dir));
        assert!(String::from_utf8_lossy(&o.stdout).contains("audited"), "merge prints the audit's summary");
        let (r, h) = audit_files(&merged);
        assert!(r == results, "audit: results.json of {n} merged shards differs from one run's");
        assert!(h == html, "audit: report.html of {n} merged shards differs from one run's");
    }
    // Shard 0 holds the stages over whole sets; without it there is nothing to merge.
    let e = fails(exe().arg("merge").arg("--out").arg(d.join("m")).arg(d.join("n3/a1")).arg(d.join("n3/a2")));
    assert!(e.contains("missing shard 0/3"), "{e}");
}

#[test]
fn more_shards_than_pairs_leave_some_empty_and_still_merge_exactly() {
    // 5 audited pairs in 7 shards: shards 0 and 3 hold none (shard 0 still runs the whole-set stages).
    let d = tmp("merge-empty-shards");
    let audit = |out: &Path| {
        let mut c = exe();
        c.args(["audit", "--max-pairs", "5", "--model"]).arg(llama()).arg("--pairs").arg(pairs()).arg("--out").arg(out);
        c
    };
    run(&mut audit(&d.join("single")));
    for k in 0..7 {
        run(audit(&d.join(format!("shards/a{k}"))).args(["--shard", &format!("{k}/7")]));
    }
    let s = String::from_utf8_lossy(&run(exe().arg("status").arg(d.join("shards"))).stdout).into_owned();
    assert!(s.contains("`audit` over 5 pairs in 7 shards: 7 done") && s.contains("0/7  done     pairs [0, 0)"), "{s}");
    run(exe().arg("merge").arg("--out").arg(d.join("merged")).arg(d.join("shards")));
    assert!(audit_files(&d.join("single")).0 == audit_files(&d.join("merged")).0);
}
