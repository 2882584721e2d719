//! Padding several token sequences into one batch. Position ids follow the attention mask, so a
//! left-padded row sees the same positions as it would alone.

use serde::Serialize;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingSide {
    #[default]
    Right,
    Left,
}

impl std::str::FromStr for PaddingSide {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        crate::pair::from_name(s, "padding side (expected right or left)")
    }
}

#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B][T]`, padded with `pad_id`.
    pub ids: Vec<Vec<u32>>,
    /// `[B][T]`, 1 on real tokens.
    pub mask: Vec<Vec<u8>>,
    /// `[B][T]`: 0, 1, 2, … over real tokens; pads get 0.
    pub positions: Vec<Vec<u32>>,
    pub lengths: Vec<usize>,
    pub side: PaddingSide,
    pub pad_id: u32,
}

impl Batch {
    pub fn new(seqs: &[Vec<u32>], pad_id: u32, side: PaddingSide) -> Result<Self> {
        if seqs.is_empty() {
            return Err(EngineError::Invalid("empty batch: no sequences to run".into()));
        }
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(EngineError::Invalid(format!("sequence {i} of the batch has no tokens")));
        }
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len());
        let mut mask = Vec::with_capacity(seqs.len());
        let mut positions = Vec::with_capacity(seqs.len());
        for s in seqs {
            let pad = t - s.len();
            let (mut row, mut m, mut p) = (Vec::with_capacity(t), Vec::with_capacity(t), Vec::with_capacity(t));
            if side == PaddingSide::Left {
                row.extend(std::iter::repeat_n(pad_id, pad));
                m.extend(std::iter::repeat_n(0u8, pad));
                p.extend(std::iter::repeat_n(0u32, pad));
            }
            row.extend_from_slice(s);
            m.extend(std::iter::repeat_n(1u8, s.len()));
            p.extend(0..s.len() as u32);
            if side == PaddingSide::Right {
                row.extend(std::iter::repeat_n(pad_id, pad));
                m.extend(std::iter::repeat_n(0u8, pad));
                p.extend(std::iter::repeat_n(0u32, pad));
            }
            ids.push(row);
            mask.push(m);
            positions.push(p);
        }
        Ok(Self { ids, mask, positions, lengths: seqs.iter().map(Vec::len).collect(), side, pad_id })
    }

    pub fn single(ids: Vec<u32>) -> Result<Self> {
        Self::new(&[ids], 0, PaddingSide::Right)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn seq_len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }
    /// Index of row `b`'s first real token.
    pub fn offset(&self, b: usize) -> usize {
        match self.side {
            PaddingSide::Right => 0,
            PaddingSide::Left => self.seq_len() - self.lengths[b],
        }
    }
    /// Row `b`'s tokens without padding.
    pub fn real_ids(&self, b: usize) -> &[u32] {
        let o = self.offset(b);
        &self.ids[b][o..o + self.lengths[b]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_and_right_padding() {
        let b = Batch::new(&[vec![5, 6, 7], vec![8]], 0, PaddingSide::Left).unwrap();
        assert_eq!(b.ids, vec![vec![5, 6, 7], vec![0, 0, 8]]);
        assert_eq!(b.positions[1], vec![0, 0, 0]);
        assert_eq!(b.mask[1], vec![0, 0, 1]);
        assert_eq!(b.real_ids(1), &[8]);
        let b = Batch::new(&[vec![5, 6, 7], vec![8, 9]], 0, PaddingSide::Right).unwrap();
        assert_eq!(b.ids[1], vec![8, 9, 0]);
        assert_eq!(b.positions[1], vec![0, 1, 0]);
        assert!(Batch::new(&[vec![]], 0, PaddingSide::Right).is_err());
    }
}
