//! Long per-pair runs: one JSON line per pair, written and flushed as each pair finishes, so an
//! interruption loses nothing; resuming keeps the complete lines whose ids match the input in
//! order and continues after them.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use reward_lens_engine::PairText;

use crate::ReportError;

/// An output file being filled, one line per pair.
pub struct PerPairFile {
    path: PathBuf,
    writer: BufWriter<File>,
    lines: Vec<Value>,
    resumed: bool,
}

impl PerPairFile {
    /// Opens `out`: with `resume`, keeps its complete lines whose ids match `pairs` in order
    /// (cutting off the rest); else starts it empty.
    pub fn open(out: &Path, resume: bool, pairs: &[PairText]) -> Result<Self, ReportError> {
        let io = |what: &'static str| {
            let path = out.to_path_buf();
            move |source| ReportError::Io { path, what, source }
        };
        let mut lines: Vec<Value> = Vec::new();
        let resumed = resume && out.exists();
        if resumed {
            let text = std::fs::read_to_string(out).map_err(io("cannot read"))?;
            let mut keep = 0usize;
            for line in text.split_inclusive('\n') {
                if !line.ends_with('\n') {
                    break;
                }
                let Ok(v) = serde_json::from_str::<Value>(line) else { break };
                let Some(p) = pairs.get(lines.len()) else {
                    return Err(ReportError::Invalid(format!(
                        "{}: has more results than there are pairs",
                        out.display()
                    )));
                };
                if v.get("id") != Some(&p.id) {
                    return Err(ReportError::Invalid(format!(
                        "{}: line {} has id {} but the input's pair {} has id {}",
                        out.display(),
                        lines.len() + 1,
                        v.get("id").unwrap_or(&Value::Null),
                        lines.len() + 1,
                        p.id
                    )));
                }
                keep += line.len();
                lines.push(v);
            }
            OpenOptions::new()
                .write(true)
                .open(out)
                .and_then(|f| f.set_len(keep as u64))
                .map_err(io("cannot truncate"))?;
        }
        let file = if resume { OpenOptions::new().create(true).append(true).open(out) } else { File::create(out) }
            .map_err(io("cannot write"))?;
        Ok(Self { path: out.to_path_buf(), writer: BufWriter::new(file), lines, resumed })
    }

    /// Whether an existing file was resumed.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Lines already in the file: the pairs to skip.
    pub fn done(&self) -> usize {
        self.lines.len()
    }

    /// Appends `v` (an object gets `id` and `subset` of `p` first) and flushes.
    pub fn push(&mut self, p: &PairText, mut v: Value) -> Result<(), ReportError> {
        if let Value::Object(m) = &mut v {
            let mut head = serde_json::Map::new();
            head.insert("id".into(), p.id.clone());
            head.insert("subset".into(), p.subset.clone().map_or(Value::Null, Value::String));
            head.extend(std::mem::take(m));
            *m = head;
        }
        let path = &self.path;
        let io = |source| ReportError::Io { path: path.clone(), what: "cannot write", source };
        serde_json::to_writer(&mut self.writer, &v).map_err(|e| io(e.into()))?;
        self.writer.write_all(b"\n").map_err(io)?;
        self.writer.flush().map_err(io)?;
        self.lines.push(v);
        Ok(())
    }

    /// Every line, old and new.
    pub fn into_lines(self) -> Vec<Value> {
        self.lines
    }
}

/// A named numeric map from each line (`{"field": {"name": value, …}}`), in line order.
pub fn column(lines: &[Value], field: &str, name: &str) -> Vec<f64> {
    lines.iter().filter_map(|l| l.get(field)?.get(name)?.as_f64()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_keeps_matching_complete_lines_and_rejects_other_inputs() {
        let dir = std::env::temp_dir().join(format!("rl-perpair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.jsonl");
        let pairs: Vec<PairText> = (0..3).map(|i| PairText::new("p", "c", "r").with_id(i)).collect();
        let mut f = PerPairFile::open(&out, false, &pairs).unwrap();
        for p in &pairs[..2] {
            f.push(p, serde_json::json!({"x": {"a": 1.5}})).unwrap();
        }
        let lines = f.into_lines();
        assert_eq!(lines[0].to_string(), r#"{"id":0,"subset":null,"x":{"a":1.5}}"#);
        assert_eq!(column(&lines, "x", "a"), [1.5, 1.5]);
        // A partial third line is dropped on resume.
        let mut text = std::fs::read_to_string(&out).unwrap();
        text.push_str("{\"id\":2,");
        std::fs::write(&out, &text).unwrap();
        let f = PerPairFile::open(&out, true, &pairs).unwrap();
        assert!(f.resumed());
        assert_eq!(f.done(), 2);
        drop(f);
        assert!(std::fs::read_to_string(&out).unwrap().ends_with("}\n"));
        let other: Vec<PairText> = (5..8).map(|i| PairText::new("p", "c", "r").with_id(i)).collect();
        let e = PerPairFile::open(&out, true, &other).err().unwrap().to_string();
        assert!(e.contains("line 1 has id 0 but the input's pair 1 has id 5"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
