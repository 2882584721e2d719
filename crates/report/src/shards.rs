//! Population runs split over processes or machines: `--shard K/N` takes the K-th of N
//! contiguous ranges of the input in file order (pairs [⌊K·M/N⌋, ⌊(K+1)·M/N⌋) of M), so shard
//! outputs concatenate in index order; `merge` checks that a set of shards is complete and came
//! from one run (model, options, input, N), and says which shards are done, partial or missing.
//!
//! Batches: the instruments batch sequences in input order and a batch's composition changes a
//! float's last bits. A shard therefore computes on its range widened to the batch boundaries
//! of the whole run ([`Shard::window`]) and keeps only its own pairs: every pair it writes went
//! through exactly the batch it goes through in one run.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fingerprint::{sidecar, Fingerprint};
use crate::ReportError;
use reward_lens_engine::LENGTH_BLOCK_BATCHES;

/// The K-th (0-based) of N shards: `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT` and
/// Kubernetes' `$JOB_COMPLETION_INDEX` mean the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected K/N with 0 ≤ K < N (0-based: 0/4, 1/4, 2/4, 3/4)");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) =
            (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        if count > MAX_SHARDS {
            return Err(format!(
                "`{s}`: at most {MAX_SHARDS} shards (`status` and `merge` account for every one of the N; more shards \
                 than pairs are empty anyway)"
            ));
        }
        Ok(Shard { index, count })
    }
}

/// The largest N of `--shard K/N`.
pub const MAX_SHARDS: usize = 100_000;

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// This shard's pairs out of `total`: [⌊K·M/N⌋, ⌊(K+1)·M/N⌋). A shard may be empty (N > M).
    pub fn range(&self, total: usize) -> Range<usize> {
        let at = |k: usize| (k as u128 * total as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// The pairs to compute so that every pair of [`range`](Self::range) sees the batch it sees
    /// in one run, when one run batches `align` pairs at a time from the first pair.
    pub fn window(&self, total: usize, align: usize) -> Range<usize> {
        let r = self.range(total);
        let align = align.max(1);
        if r.is_empty() {
            return r;
        }
        (r.start / align * align)..r.end.div_ceil(align).saturating_mul(align).min(total)
    }

    /// What a shard's output records beside it.
    pub fn record(&self, total: usize) -> ShardRecord {
        let r = self.range(total);
        ShardRecord { index: self.index, count: self.count, first: r.start, end: r.end, total }
    }
}

/// Pairs per block when `batch_size` sequences (two per pair) go in a batch and sequences are
/// sorted by length within blocks of [`LENGTH_BLOCK_BATCHES`] batches: the pairs whose sequences
/// fill one block (a block holds an even number of sequences).
pub fn pairs_per_trace_block(batch_size: usize) -> usize {
    batch_size.max(1) * LENGTH_BLOCK_BATCHES / 2
}

/// A shard's place in its run, kept in `<out>.meta.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub index: usize,
    pub count: usize,
    /// Its pairs, [first, end) of `total`, 0-based in file order.
    pub first: usize,
    pub end: usize,
    pub total: usize,
}

impl ShardRecord {
    pub fn name(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }
    pub fn len(&self) -> usize {
        self.end - self.first
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.first
    }
}

/// One shard's output on disk and what made it.
#[derive(Debug, Clone)]
pub struct ShardFile {
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
    pub shard: ShardRecord,
}

/// How far a shard got, from what is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Done,
    /// Started (its fingerprint is written): `done` of its pairs are in the output so far —
    /// still running, or stopped (rerun it alone with `--resume`).
    Partial {
        done: usize,
    },
}

/// Where an audit shard keeps its part, inside its output directory.
pub const AUDIT_PART: &str = "audit-part.json";

/// How a command's shard output is laid out: one line per pair, or one file written at the end.
pub fn lines_per_pair(command: &str) -> bool {
    matches!(command, "score" | "eval" | "patch" | "atp" | "path-patch" | "faithfulness")
}

impl ShardFile {
    /// Reads `out`'s fingerprint; an error unless it was written with `--shard`.
    pub fn open(out: &Path) -> Result<Self, ReportError> {
        let meta = sidecar(out);
        let text = std::fs::read_to_string(&meta).map_err(|source| ReportError::Io {
            path: meta.clone(),
            what: "cannot read the shard's fingerprint",
            source,
        })?;
        let fingerprint: Fingerprint = serde_json::from_str(&text)
            .map_err(|e| ReportError::Invalid(format!("{}: not a reward-lens fingerprint: {e}", meta.display())))?;
        let shard = fingerprint.shard.ok_or_else(|| {
            ReportError::Invalid(format!("{}: not a shard (written without --shard K/N)", out.display()))
        })?;
        Ok(Self { path: out.to_path_buf(), fingerprint, shard })
    }

    /// Done when every pair is in the output (a per-pair file's complete lines; else the file,
    /// which a command writes whole at its end).
    pub fn state(&self) -> State {
        let n = self.shard.len();
        if lines_per_pair(&self.fingerprint.command) {
            let done = match std::fs::read(&self.path) {
                Ok(bytes) => bytes.iter().filter(|&&b| b == b'\n').count(),
                Err(_) => 0,
            };
            if done == n {
                State::Done
            } else {
                State::Partial { done }
            }
        } else if self.path.join(AUDIT_PART).is_file() || (self.path.is_file() && self.fingerprint.command != "audit") {
            State::Done
        } else {
            State::Partial { done: 0 }
        }
    }
}

/// The shards named: output files, or directories holding them (every `*.meta.json` there that
/// records a shard). Order: by shard index.
pub fn find(paths: &[PathBuf]) -> Result<Vec<ShardFile>, ReportError> {
    if paths.is_empty() {
        return Err(ReportError::Invalid("no shards given: name shard outputs or a directory holding them".into()));
    }
    let mut out = Vec::new();
    for p in paths {
        if !p.exists() {
            return Err(ReportError::Invalid(format!("{}: no such file or directory", p.display())));
        }
        let meta_of_dir = p.is_dir() && !sidecar(p).is_file();
        if meta_of_dir {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|source| ReportError::Io { path: p.clone(), what: "cannot list", source })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| e.to_string_lossy().ends_with(".meta.json"))
                .collect();
            entries.sort();
            let before = out.len();
            for m in entries {
                let s = m.to_string_lossy();
                let output = PathBuf::from(&s[..s.len() - ".meta.json".len()]);
                // A merged output (no shard record) may live beside its shards.
                if let Ok(f) = ShardFile::open(&output) {
                    out.push(f);
                }
            }
            if out.len() == before {
                return Err(ReportError::Invalid(format!(
                    "{}: no shard outputs here (none of its *.meta.json records a --shard)",
                    p.display()
                )));
            }
        } else {
            out.push(ShardFile::open(p)?);
        }
    }
    if let Some(f) = out.iter().find(|f| f.shard.count > MAX_SHARDS || f.shard.index >= f.shard.count) {
        return Err(ReportError::Invalid(format!(
            "{}: records shard {}, which is not K/N with 0 ≤ K < N ≤ {MAX_SHARDS}; rerun it with a shard this \
             version accepts",
            f.path.display(),
            f.shard.name()
        )));
    }
    out.sort_by_key(|f| f.shard.index);
    Ok(out)
}

/// The shard files by their index K (several where one is given twice).
pub fn by_index<'a>(
    files: impl IntoIterator<Item = &'a ShardFile>,
) -> std::collections::HashMap<usize, Vec<&'a ShardFile>> {
    let mut m: std::collections::HashMap<usize, Vec<&'a ShardFile>> = std::collections::HashMap::new();
    for f in files {
        m.entry(f.shard.index).or_default().push(f);
    }
    m
}

/// Whether `f` is a shard of the run `first` is one of: the same command, model, options, input,
/// N and number of pairs.
pub fn same_run(f: &ShardFile, first: &ShardFile) -> bool {
    let (a, b) = (&f.fingerprint, &first.fingerprint);
    a.command == b.command
        && a.model == b.model
        && a.options == b.options
        && a.aggregate == b.aggregate
        && a.input == b.input
        && f.shard.count == first.shard.count
        && f.shard.total == first.shard.total
}

/// Every problem with a set of shards that one run would not have: other commands, models,
/// options, inputs, shard counts or totals than the first; duplicated indices; missing ones.
/// Each names the shard files concerned.
pub fn mismatches(files: &[ShardFile]) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(first) = files.first() else { return vec!["no shards given".into()] };
    let (f0, s0) = (&first.fingerprint, &first.shard);
    for f in &files[1..] {
        let (fp, s) = (&f.fingerprint, &f.shard);
        let at =
            |what: String| format!("{} (shard {}): {what} than {}", f.path.display(), s.name(), first.path.display());
        if fp.command != f0.command {
            problems.push(at(format!("another command (`{}`, not `{}`)", fp.command, f0.command)));
            continue;
        }
        if fp.model != f0.model {
            problems.push(at("another model (its config, tokenizer or weights)".into()));
        }
        if fp.options != f0.options || fp.aggregate != f0.aggregate {
            let diff = crate::fingerprint::options_diff_as(&f0.options, &fp.options, ["there", "here"]);
            problems.push(at(format!("other options ({diff})")));
        }
        if fp.input != f0.input {
            problems.push(at("another input (the pairs file's contents differ)".into()));
        }
        if s.count != s0.count {
            problems.push(at(format!("another shard count (N = {}, not {})", s.count, s0.count)));
        }
        if s.total != s0.total {
            problems.push(at(format!("another number of pairs ({}, not {})", s.total, s0.total)));
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    let n = s0.count;
    let by_index = by_index(files.iter());
    for k in 0..n {
        let with_k: &[&ShardFile] = by_index.get(&k).map_or(&[], Vec::as_slice);
        if with_k.len() > 1 {
            let names: Vec<String> = with_k.iter().map(|f| f.path.display().to_string()).collect();
            problems.push(format!("shard {k}/{n} is given more than once: {}", names.join(", ")));
        }
        let expect = Shard { index: k, count: n }.record(s0.total);
        if let Some(f) = with_k.iter().find(|f| f.shard != expect) {
            problems.push(format!(
                "{}: shard {k}/{n} records pairs [{}, {}), not [{}, {})",
                f.path.display(),
                f.shard.first,
                f.shard.end,
                expect.first,
                expect.end
            ));
        }
    }
    let missing: Vec<String> = (0..n).filter(|k| !by_index.contains_key(k)).map(|k| format!("{k}/{n}")).collect();
    if !missing.is_empty() {
        problems.push(format!("missing shard{} {}", if missing.len() > 1 { "s" } else { "" }, missing.join(", ")));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_input_in_order() {
        for total in [0usize, 1, 5, 20, 21] {
            for n in [1usize, 2, 3, 7, 25] {
                let mut next = 0;
                for k in 0..n {
                    let r = Shard { index: k, count: n }.range(total);
                    assert_eq!(r.start, next);
                    assert_eq!(r.start, k * total / n);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
        assert_eq!(Shard { index: 1, count: 3 }.range(20), 6..13);
    }

    #[test]
    fn windows_widen_to_batch_boundaries() {
        let s = Shard { index: 1, count: 3 };
        assert_eq!(s.window(20, 8), 0..16);
        assert_eq!(s.window(20, 1), 6..13);
        assert_eq!(Shard { index: 2, count: 3 }.window(20, 8), 8..20);
        assert_eq!(Shard { index: 2, count: 3 }.window(20, 3), 12..20);
        assert_eq!(pairs_per_trace_block(16), 64);
        assert_eq!(pairs_per_trace_block(5), 20);
        assert_eq!(pairs_per_trace_block(0), 4);
    }

    #[test]
    fn shard_syntax() {
        assert_eq!("2/7".parse::<Shard>(), Ok(Shard { index: 2, count: 7 }));
        for bad in ["7/7", "1/0", "3", "a/2", "-1/2"] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("0 ≤ K < N"), "{bad}: {e}");
        }
    }

    #[test]
    fn finding_no_shards_is_an_error_not_an_empty_set() {
        let e = find(&[]).unwrap_err().to_string();
        assert!(e.contains("no shards given"), "{e}");
        let dir = std::env::temp_dir().join(format!("rl-shards-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = find(std::slice::from_ref(&dir)).unwrap_err().to_string();
        assert!(e.contains("no shard outputs here"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
