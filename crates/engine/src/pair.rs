//! Preference pairs: the one text type ([`PairText`]), the one encoded type ([`EncodedPair`]),
//! the one positions type ([`Positions`]), and the encode/score path every instrument, the
//! audit, CART and the organisms share.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::batch::{batches_by_length, PaddingSide};
use crate::error::{EngineError, Result};
use crate::head::RewardHead;
use crate::model::RewardModel;
use crate::text::Truncation;

/// One preference pair as text, with RewardBench's field names. Serialises as one JSONL line:
/// `id`, `prompt`, `chosen`, `rejected`, `subset` (when set), then every other field the
/// source line carried (in name order), so a pair read and written back keeps what it had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairText {
    /// The source's `id` (any JSON value); the 0-based index in the file when it has none.
    #[serde(default)]
    pub id: Value,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Every other field of the source line (for grouping by any field, and written back).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// Where the pair came from, for error messages; not serialised.
    #[serde(skip)]
    pub origin: Option<Origin>,
}

/// A file and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<Path>,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

impl PairText {
    pub fn new(prompt: impl Into<String>, chosen: impl Into<String>, rejected: impl Into<String>) -> Self {
        Self {
            id: Value::Null,
            prompt: prompt.into(),
            chosen: chosen.into(),
            rejected: rejected.into(),
            subset: None,
            extra: Map::new(),
            origin: None,
        }
    }
    pub fn with_id(mut self, id: impl Into<Value>) -> Self {
        self.id = id.into();
        self
    }
    pub fn with_subset(mut self, subset: impl Into<String>) -> Self {
        self.subset = Some(subset.into());
        self
    }
    /// 1-based line in the source file (0 when not from a file).
    pub fn line(&self) -> usize {
        self.origin.as_ref().map_or(0, |o| o.line)
    }
    /// `file:line` when read from a file, else `pair <id>`: how errors name the pair.
    pub fn location(&self) -> String {
        match &self.origin {
            Some(o) => o.to_string(),
            None if self.id.is_null() => "command-line pair".into(),
            None => format!("pair {}", self.id),
        }
    }
    /// A field by name, known or extra (`subset` absent → None).
    pub fn field(&self, name: &str) -> Option<Value> {
        match name {
            "id" => Some(self.id.clone()),
            "prompt" => Some(Value::String(self.prompt.clone())),
            "chosen" => Some(Value::String(self.chosen.clone())),
            "rejected" => Some(Value::String(self.rejected.clone())),
            "subset" => self.subset.clone().map(Value::String),
            other => self.extra.get(other).cloned(),
        }
    }
    /// The subset, or `""` when the pair has none.
    pub fn subset_str(&self) -> &str {
        self.subset.as_deref().unwrap_or("")
    }
}

/// Parses a unit enum from the name it has in JSON (its serde name), so flags, Python strings
/// and JSON files spell every option the same way; `what` names the option in the error.
pub fn from_name<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> std::result::Result<T, String> {
    serde_json::from_value(Value::String(s.to_string())).map_err(|_| format!("unknown {what} `{s}`"))
}

/// Which token positions an instrument reads, patches or steers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// Every real token.
    #[default]
    All,
    /// The pooled token, where the reward is read.
    Pooled,
    /// The response's tokens, from its first token to the pooled one.
    Response,
}

impl Positions {
    pub const NAMES: [&'static str; 3] = ["all", "pooled", "response"];
    pub fn name(self) -> &'static str {
        match self {
            Positions::All => "all",
            Positions::Pooled => "pooled",
            Positions::Response => "response",
        }
    }
}

impl std::fmt::Display for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Positions {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "all" => Ok(Positions::All),
            "pooled" => Ok(Positions::Pooled),
            "response" => Ok(Positions::Response),
            _ => Err(format!("unknown positions `{s}`: expected all, pooled or response")),
        }
    }
}

/// A pair's two conversations as token ids, with where each response starts and where each
/// reward is read when the sequence runs alone (unpadded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncodedPair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    /// First response token of (chosen, rejected).
    pub response_start: (usize, usize),
    /// The pooled token of (chosen, rejected), unpadded.
    pub pooled: (usize, usize),
}

/// How many leading tokens `a` and `b` share. Under causal attention those positions hold the
/// same activations in both sequences (the prompt of a chosen/rejected pair).
pub fn shared_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl EncodedPair {
    /// From bare ids (no template boundary known): the response starts at token 0.
    pub fn from_ids(chosen: Vec<u32>, rejected: Vec<u32>) -> Self {
        Self::new(chosen, rejected, (0, 0))
    }
    /// From ids and response starts, pooling at each sequence's last token. For ids that may
    /// end in pad tokens (pad = eos) use [`RewardModel::encode_pair`] or set `pooled` from
    /// [`RewardModel::pooled_alone`].
    pub fn new(chosen: Vec<u32>, rejected: Vec<u32>, response_start: (usize, usize)) -> Self {
        let pooled = (chosen.len().saturating_sub(1), rejected.len().saturating_sub(1));
        Self { chosen, rejected, response_start, pooled }
    }
    /// Leading tokens chosen and rejected share (see [`shared_prefix`]).
    pub fn shared_prefix(&self) -> usize {
        shared_prefix(&self.chosen, &self.rejected)
    }
    /// `[chosen, rejected]`: the order a pair's rows take in every batch.
    pub fn sides(&self) -> [&Vec<u32>; 2] {
        [&self.chosen, &self.rejected]
    }
}

/// Chosen and rejected rewards of one pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairScore {
    pub chosen: f32,
    pub rejected: f32,
    /// ArmoRM only: per-objective rewards and gating weights of each side, by objective name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objectives: Option<[SideObjectives; 2]>,
}

impl PairScore {
    /// `chosen − rejected`.
    pub fn margin(&self) -> f32 {
        self.chosen - self.rejected
    }
}

/// One side's ArmoRM objectives, by name, in the head's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideObjectives {
    pub rewards: Vec<(String, f32)>,
    pub gating: Vec<(String, f32)>,
}

/// How [`RewardModel::score_pairs`] batches.
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// Sequences per forward pass; a pair's two sides always share a batch.
    pub batch_size: usize,
    pub padding: PaddingSide,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self { batch_size: 16, padding: PaddingSide::Right }
    }
}

impl RewardModel {
    /// Renders and encodes one pair; an error names the pair (file and line) and the side.
    pub fn encode_pair(&self, pair: &PairText, truncation: Truncation) -> Result<EncodedPair> {
        let side = |response: &str, name: &'static str| {
            self.encode(&pair.prompt, response, truncation).map_err(|e| EngineError::Pair {
                at: pair.location(),
                side: name,
                source: Box::new(e),
            })
        };
        let c = side(&pair.chosen, "chosen")?;
        let r = side(&pair.rejected, "rejected")?;
        let pooled = (self.pooled_alone(&c.ids)?, self.pooled_alone(&r.ids)?);
        Ok(EncodedPair { chosen: c.ids, rejected: r.ids, response_start: (c.response_start, r.response_start), pooled })
    }

    /// [`encode_pair`](Self::encode_pair) for every pair, stopping at the first error.
    pub fn encode_pairs(&self, pairs: &[PairText], truncation: Truncation) -> Result<Vec<EncodedPair>> {
        pairs.iter().map(|p| self.encode_pair(p, truncation)).collect()
    }

    /// Where the reward of one unpadded sequence is read (transformers' pooling rule: with
    /// pad = eos, the rightmost token that is not the pad id, which need not be the last).
    pub fn pooled_alone(&self, ids: &[u32]) -> Result<usize> {
        if ids.is_empty() {
            return Err(EngineError::Invalid("a sequence with no tokens has no pooled token".into()));
        }
        Ok(self.pooled_in_row(ids, ids.len() - 1))
    }

    /// Chosen and rejected rewards of every pair, in input order, `opts.batch_size` sequences per
    /// forward pass. Pairs are batched by length ([`batches_by_length`] on each pair's longer side;
    /// a pair's two sides share a batch, rows chosen, rejected, chosen, …), so little of each pass
    /// is padding. `progress(done)` is called after each batch with the number of pairs scored so far.
    /// An error in one sequence (a non-finite reward, a missing gating pattern) names the pair by
    /// its index; [`score_pair_texts`](Self::score_pair_texts) names its file and line.
    pub fn score_pairs(
        &self,
        pairs: &[EncodedPair],
        opts: &ScoreOptions,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<PairScore>> {
        self.score_pairs_located(pairs, opts, progress, &|i| format!("pair {}", i + 1))
    }

    /// [`score_pairs`](Self::score_pairs) of `encoded`, encoded from `texts` (same order): an
    /// error in one sequence names its pair's file and line and the side.
    pub fn score_pair_texts(
        &self,
        texts: &[PairText],
        encoded: &[EncodedPair],
        opts: &ScoreOptions,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<PairScore>> {
        self.score_pairs_located(encoded, opts, progress, &|i| {
            texts.get(i).map_or_else(|| format!("pair {}", i + 1), PairText::location)
        })
    }

    fn score_pairs_located(
        &self,
        pairs: &[EncodedPair],
        opts: &ScoreOptions,
        progress: &mut dyn FnMut(usize),
        locate: &dyn Fn(usize) -> String,
    ) -> Result<Vec<PairScore>> {
        let per_batch = (opts.batch_size / 2).max(1);
        let longer: Vec<usize> = pairs.iter().map(|p| p.chosen.len().max(p.rejected.len())).collect();
        let mut out: Vec<Option<PairScore>> = (0..pairs.len()).map(|_| None).collect();
        let mut done = 0;
        for group in batches_by_length(&longer, per_batch) {
            let seqs: Vec<Vec<u32>> =
                group.iter().flat_map(|&i| [pairs[i].chosen.clone(), pairs[i].rejected.clone()]).collect();
            let res = self.score(&self.batch(&seqs, opts.padding)?).map_err(|e| {
                let row = match &e {
                    EngineError::NonFiniteReward { row, .. } | EngineError::GatingPatternMissing { row, .. } => *row,
                    _ => return e,
                };
                let side = if row % 2 == 0 { "chosen" } else { "rejected" };
                EngineError::Pair { at: locate(group[row / 2]), side, source: Box::new(e) }
            })?;
            let objectives = |row: usize| -> Option<SideObjectives> {
                let o = res.objectives.as_ref()?;
                let RewardHead::Gated(h) = &self.head else { return None };
                let named = |v: &[f32]| h.objective_names.iter().cloned().zip(v.iter().copied()).collect();
                Some(SideObjectives { rewards: named(&o.rewards[row]), gating: named(&o.gating[row]) })
            };
            for (k, &i) in group.iter().enumerate() {
                let objectives = match (objectives(2 * k), objectives(2 * k + 1)) {
                    (Some(c), Some(r)) => Some([c, r]),
                    _ => None,
                };
                out[i] = Some(PairScore { chosen: res.scores[2 * k], rejected: res.scores[2 * k + 1], objectives });
            }
            done += group.len();
            progress(done);
        }
        Ok(out.into_iter().map(|s| s.expect("every pair is in one batch")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_text_round_trips_with_extra_fields_in_order() {
        let line = r#"{"id":3,"prompt":"p","chosen":"c","rejected":"r","subset":"s","source":"x","n":2}"#;
        let p: PairText = serde_json::from_str(line).unwrap();
        assert_eq!(p.field("source"), Some(Value::from("x")));
        assert_eq!(p.subset_str(), "s");
        // Extra fields follow the known ones, in name order.
        let back = r#"{"id":3,"prompt":"p","chosen":"c","rejected":"r","subset":"s","n":2,"source":"x"}"#;
        assert_eq!(serde_json::to_string(&p).unwrap(), back);
        let bare = PairText::new("p", "c", "r").with_id(0usize).with_subset("head");
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"id":0,"prompt":"p","chosen":"c","rejected":"r","subset":"head"}"#
        );
        assert_eq!(bare.location(), "pair 0");
    }

    #[test]
    fn positions_parse_and_print() {
        for n in Positions::NAMES {
            assert_eq!(n.parse::<Positions>().unwrap().to_string(), n);
        }
        assert!("middle".parse::<Positions>().unwrap_err().contains("expected all, pooled or response"));
        assert_eq!(serde_json::to_string(&Positions::Response).unwrap(), "\"response\"");
    }
}
