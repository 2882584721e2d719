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

/// Batches in one block of [`batches_by_length`].
pub const LENGTH_BLOCK_BATCHES: usize = 8;

/// Indices `0..lengths.len()` grouped into batches of at most `batch_size` (≥ 1): within each
/// block of `batch_size × LENGTH_BLOCK_BATCHES` consecutive items, counted from the first, longest
/// first, equal lengths in input order. A batch costs its longest sequence times its rows: on a
/// RewardBench-like spread of lengths, batches taken in input order are more than half padding,
/// batches of like length within a block about a third.
///
/// A reward depends on its batch-mates in the last bits (padding, matmul blocking). Sorting
/// within fixed blocks, not the whole input, keeps that dependence local: a shard or a resumed
/// run that starts at a block boundary forms exactly the batches one run forms.
pub fn batches_by_length(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let b = batch_size.max(1);
    let mut out = Vec::with_capacity(lengths.len().div_ceil(b));
    for start in (0..lengths.len()).step_by(b * LENGTH_BLOCK_BATCHES) {
        let mut block: Vec<usize> = (start..(start + b * LENGTH_BLOCK_BATCHES).min(lengths.len())).collect();
        // Stable: ties keep input order.
        block.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        out.extend(block.chunks(b).map(<[usize]>::to_vec));
    }
    out
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

#[cfg(test)]
mod length_tests {
    use super::batches_by_length;

    #[test]
    fn batches_by_length_are_longest_first_with_ties_in_input_order() {
        let b = batches_by_length(&[3, 9, 3, 5, 9, 1, 5], 3);
        assert_eq!(b, vec![vec![1, 4, 3], vec![6, 0, 2], vec![5]]);
        assert_eq!(batches_by_length(&[], 4), Vec::<Vec<usize>>::new());
        // A batch size of 0 is read as 1, never a panic.
        assert_eq!(batches_by_length(&[2, 1], 0), vec![vec![0], vec![1]]);
        // Sorting stays inside blocks of 8 batches: the 17th item opens a new block.
        let lengths: Vec<usize> = (0..20).collect();
        let b = batches_by_length(&lengths, 2);
        assert_eq!(b[0], vec![15, 14]);
        assert_eq!(b[7], vec![1, 0]);
        assert_eq!(b[8], vec![19, 18]);
        assert_eq!(b.len(), 10);
    }
}
