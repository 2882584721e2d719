//! The file an instrument's report is written as (`--out FILE.json`), and what the Python
//! package returns for it: the instrument, the model, the `id` and `subset` of each input (in the
//! order of `report.pairs`, so a notebook joins the numbers back to the dataset) and the report.

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use reward_lens_engine::PairText;

use crate::{ReportError, Result};

#[derive(Serialize)]
pub struct Envelope<'a, T: Serialize> {
    pub instrument: &'a str,
    pub model: String,
    pub inputs: Vec<Value>,
    pub report: &'a T,
}

impl<'a, T: Serialize> Envelope<'a, T> {
    /// The envelope of a report computed on `pairs`.
    pub fn of_pairs(instrument: &'a str, model: &str, pairs: &[PairText], report: &'a T) -> Self {
        let inputs = pairs.iter().map(|p| json!({"id": p.id, "subset": p.subset})).collect();
        Envelope { instrument, model: model.to_string(), inputs, report }
    }

    /// Writes the envelope as pretty JSON to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).map_err(|source| ReportError::Io {
            path: path.to_path_buf(),
            what: "cannot write",
            source,
        })
    }
}
