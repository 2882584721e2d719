//! Head/tail splits: which preference pairs are "common" (head) and which are "rare" (tail),
//! `p = α·p_head + (1 − α)·p_tail` (CART §2). The paper defines the split only distributionally,
//! so every split records the rule that made it ([`SplitRule`]) and every result carries it.
//!
//! Rules (reference §8, all [RECON]):
//! * **by field value** ([`split_by_field`], [`split_by_subset`]): the items whose field (e.g. the
//!   RewardBench subset) is one of the listed values are the tail.
//! * **by scenario frequency** ([`split_by_scenario`]): k-means (k-means++ initialisation from a
//!   seeded generator, then Lloyd iterations) on pooled representations
//!   ([`scenario_representations`]: `ln_final.hook_normalized` at the pooled token, or
//!   `blocks.{l}.hook_resid_post`); the clusters are sorted by size (smallest first, ties by
//!   index) and the tail is the largest run of smallest clusters whose total mass does not exceed
//!   `(1 − α)·N`. With `k ≥ 1/(1 − α)` the smallest cluster always fits, so the tail is never empty.
//!   `k` must be below N, and a clustering whose clusters all have one size is refused: then no
//!   cluster is rarer than another, and which of them form the tail is the seed's choice.
//! * **by token rarity** ([`split_by_token_rarity`]): an item's rarity is the mean of
//!   `ln(count(t)/total)` over its tokens, counts taken over the whole dataset; the
//!   `round((1 − α)·N)` items with the lowest score are the tail (ties by index).
//! * **random** ([`split_random`]): a seeded random split, the null for calibration.
//!
//! Every split needs at least one head and one tail item; an empty side is an error.

use std::collections::HashMap;

use candle_core::DType;
use reward_lens_engine::synth::Rng;
use reward_lens_engine::EncodedPair;
use reward_lens_engine::{Hooks, PaddingSide, RewardModel, Site};
use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result};
use reward_lens_train::TokenizedPair;

/// How a split was made; serialised with every result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum SplitRule {
    /// Items whose `field` takes one of `tail_values` are the tail.
    Field { field: String, tail_values: Vec<String> },
    /// The smallest k-means clusters holding at most `1 − alpha` of the mass are the tail.
    ScenarioFrequency {
        alpha: f64,
        /// Clusters actually used (`min(k, N)`).
        k: usize,
        /// The site the representations were read at.
        representation: String,
        view: ScenarioView,
        seed: u64,
        /// Lloyd iterations run.
        iterations: usize,
        /// Items per cluster.
        cluster_sizes: Vec<usize>,
        /// The clusters labelled tail.
        tail_clusters: Vec<usize>,
    },
    /// The items with the lowest mean token log-frequency are the tail.
    TokenRarity {
        alpha: f64,
        /// How an item's score is made.
        statistic: String,
        /// The largest tail score (items scoring at most this, by rank, are tail).
        threshold: f64,
    },
    /// A seeded uniformly random split with `n_tail` tail items.
    Random { n_tail: usize, seed: u64 },
    /// Labels given by the caller.
    Labels { description: String },
}

/// A head/tail split of N items (indices into the caller's list), with its rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadTailSplit {
    pub rule: SplitRule,
    pub head: Vec<usize>,
    pub tail: Vec<usize>,
    pub n_head: usize,
    pub n_tail: usize,
}

fn invalid(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::Invalid(msg.into())
}

impl HeadTailSplit {
    /// From one label per item (`true` = tail). Errors when either side is empty.
    pub fn from_labels(is_tail: &[bool], rule: SplitRule) -> Result<Self> {
        let tail: Vec<usize> = (0..is_tail.len()).filter(|&i| is_tail[i]).collect();
        let head: Vec<usize> = (0..is_tail.len()).filter(|&i| !is_tail[i]).collect();
        if tail.is_empty() {
            let rule = crate::text::describe_rule(&rule);
            return Err(invalid(format!("head/tail split ({rule}): the tail is empty ({} items)", is_tail.len())));
        }
        if head.is_empty() {
            let rule = crate::text::describe_rule(&rule);
            return Err(invalid(format!(
                "head/tail split ({rule}): the head is empty (all {} items are tail)",
                is_tail.len()
            )));
        }
        Ok(Self { rule, n_head: head.len(), n_tail: tail.len(), head, tail })
    }

    /// Checks the split against a list of `n` items: indices in range, no item twice, the counts
    /// right, both sides non-empty.
    pub fn validate(&self, n: usize) -> Result<()> {
        let mut seen = vec![false; n];
        for (side, idx) in [("head", &self.head), ("tail", &self.tail)] {
            for &i in idx {
                if i >= n {
                    return Err(invalid(format!("head/tail split: {side} index {i} is out of range ({n} items)")));
                }
                if std::mem::replace(&mut seen[i], true) {
                    return Err(invalid(format!("head/tail split: item {i} appears twice")));
                }
            }
        }
        if self.n_head != self.head.len() || self.n_tail != self.tail.len() {
            return Err(invalid("head/tail split: n_head/n_tail do not match the index lists"));
        }
        if self.tail.is_empty() {
            return Err(invalid("head/tail split: the tail is empty"));
        }
        if self.head.is_empty() {
            return Err(invalid("head/tail split: the head is empty"));
        }
        Ok(())
    }

    /// One label per item of a list of `n` (`true` = tail; items in neither list are `false`).
    pub fn labels(&self, n: usize) -> Vec<bool> {
        let mut v = vec![false; n];
        for &i in &self.tail {
            if i < n {
                v[i] = true;
            }
        }
        v
    }
}

/// Tail = the items whose `field` value is one of `tail_values`.
pub fn split_by_field(values: &[&str], field: &str, tail_values: &[&str]) -> Result<HeadTailSplit> {
    let labels: Vec<bool> = values.iter().map(|v| tail_values.contains(v)).collect();
    let rule =
        SplitRule::Field { field: field.to_string(), tail_values: tail_values.iter().map(|s| s.to_string()).collect() };
    HeadTailSplit::from_labels(&labels, rule)
}

/// Tail = the pairs whose `subset` is one of `tail_subsets`.
pub fn split_by_subset(pairs: &[TokenizedPair], tail_subsets: &[&str]) -> Result<HeadTailSplit> {
    let values: Vec<&str> = pairs.iter().map(|p| p.subset.as_str()).collect();
    split_by_field(&values, "subset", tail_subsets)
}

/// A seeded uniformly random split with `n_tail` of `n` items in the tail (partial Fisher–Yates).
pub fn split_random(n: usize, n_tail: usize, seed: u64) -> Result<HeadTailSplit> {
    if n_tail == 0 || n_tail >= n {
        return Err(invalid(format!("random split: need 0 < n_tail < n, got n_tail {n_tail} of {n}")));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    rng.partial_shuffle(&mut idx, n_tail);
    let mut labels = vec![false; n];
    for &i in &idx[..n_tail] {
        labels[i] = true;
    }
    HeadTailSplit::from_labels(&labels, SplitRule::Random { n_tail, seed })
}

/// `round((1 − α)·n)`, checked to leave both sides non-empty (`what` names the split in errors).
pub fn tail_count(alpha: f64, n: usize, what: &str) -> Result<usize> {
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(invalid(format!("{what}: alpha (the head mass) must lie in (0, 1), got {alpha}")));
    }
    let k = ((1.0 - alpha) * n as f64).round() as usize;
    if k == 0 || k >= n {
        return Err(invalid(format!(
            "{what}: (1 − α)·N = {:.2} leaves an empty side with N = {n}; use more items or another α",
            (1.0 - alpha) * n as f64
        )));
    }
    Ok(k)
}

/// Token rarity: each item's score is the mean of `ln(count(t)/total)` over its tokens, counts
/// over all items; the `round((1 − α)·N)` lowest-scoring items are the tail.
/// `items[i]` holds every token of item i (for a pair: chosen and rejected together).
pub fn split_by_token_rarity(items: &[Vec<u32>], alpha: f64) -> Result<HeadTailSplit> {
    let n = items.len();
    let k = tail_count(alpha, n, "token-rarity split")?;
    if let Some(i) = items.iter().position(|t| t.is_empty()) {
        return Err(invalid(format!("token-rarity split: item {i} has no tokens")));
    }
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for t in items.iter().flatten() {
        *counts.entry(*t).or_default() += 1;
    }
    let total = items.iter().map(Vec::len).sum::<usize>() as f64;
    let scores: Vec<f64> =
        items.iter().map(|t| t.iter().map(|x| (counts[x] as f64 / total).ln()).sum::<f64>() / t.len() as f64).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut labels = vec![false; n];
    for &i in &order[..k] {
        labels[i] = true;
    }
    let rule = SplitRule::TokenRarity {
        alpha,
        statistic: "mean over the item's tokens of ln(count/total), counts over the dataset".into(),
        threshold: scores[order[k - 1]],
    };
    HeadTailSplit::from_labels(&labels, rule)
}

/// [`split_by_token_rarity`] on pairs: each pair's tokens are its chosen and rejected sequences.
pub fn split_pairs_by_token_rarity(pairs: &[TokenizedPair], alpha: f64) -> Result<HeadTailSplit> {
    let items: Vec<Vec<u32>> = pairs.iter().map(|p| [p.chosen.as_slice(), p.rejected.as_slice()].concat()).collect();
    split_by_token_rarity(&items, alpha)
}

/// Which representation the scenario clustering reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Representation {
    /// `ln_final.hook_normalized` (what the reward head reads).
    #[default]
    FinalNorm,
    /// `blocks.{l}.hook_resid_post`.
    ResidPost(usize),
}

impl Representation {
    pub fn site(&self) -> Site {
        match *self {
            Representation::FinalNorm => Site::FinalNormalized,
            Representation::ResidPost(l) => Site::ResidPost(l),
        }
    }
}

/// What a pair's scenario representation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioView {
    /// Mean of the chosen and rejected representations at their pooled tokens.
    #[default]
    Pair,
    /// The prompt alone: the chosen sequence read at its last prompt token
    /// (`response_start.0 − 1`); causal attention makes that the prompt's own representation.
    Prompt,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioOptions {
    /// Head mass α; the tail holds at most `1 − α` of the items.
    pub alpha: f64,
    /// Clusters; fewer than the items (k ≥ N is refused, not capped).
    pub k: usize,
    pub representation: Representation,
    pub view: ScenarioView,
    pub seed: u64,
    pub max_iterations: usize,
    pub batch_size: usize,
}

impl Default for ScenarioOptions {
    fn default() -> Self {
        Self {
            alpha: 0.8,
            k: 20,
            representation: Representation::FinalNorm,
            view: ScenarioView::Pair,
            seed: 0,
            max_iterations: 100,
            batch_size: 16,
        }
    }
}

/// One representation per pair (f32, `d_model` wide), as `opts.view` and `opts.representation` say.
pub fn scenario_representations(
    model: &RewardModel,
    pairs: &[EncodedPair],
    opts: &ScenarioOptions,
) -> Result<Vec<Vec<f32>>> {
    if pairs.is_empty() {
        return Err(invalid("scenario representations: no pairs"));
    }
    let site = opts.representation.site();
    if let Some(l) = site.layer() {
        if l >= model.config.n_layers {
            return Err(invalid(format!(
                "scenario representations: layer {l} (the model has {})",
                model.config.n_layers
            )));
        }
    }
    // (sequence, read position or None for the pooled token)
    let mut seqs: Vec<(&[u32], Option<usize>)> = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        match opts.view {
            ScenarioView::Pair => {
                seqs.push((&p.chosen, None));
                seqs.push((&p.rejected, None));
            }
            ScenarioView::Prompt => {
                let rs = p.response_start.0;
                if rs == 0 || rs > p.chosen.len() {
                    return Err(invalid(format!(
                        "scenario representations: pair {i}: the prompt view needs 0 < response_start ≤ {} (got {rs})",
                        p.chosen.len()
                    )));
                }
                seqs.push((&p.chosen, Some(rs - 1)));
            }
        }
    }
    let name = site.name();
    let mut reps: Vec<Vec<f32>> = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(opts.batch_size.max(1)) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|(s, _)| s.to_vec()).collect();
        let batch = model.batch(&ids, PaddingSide::Right)?;
        let fwd = model.forward(&batch, &Hooks::cache(&[name.as_str()]))?;
        let t = fwd.cache.require(&name)?;
        for (b, (_, at)) in chunk.iter().enumerate() {
            let pos = at.unwrap_or(fwd.output.pooled_index[b]);
            reps.push(t.get(b)?.get(pos)?.to_dtype(DType::F32)?.to_vec1()?);
        }
    }
    Ok(match opts.view {
        ScenarioView::Prompt => reps,
        ScenarioView::Pair => {
            reps.chunks(2).map(|c| c[0].iter().zip(&c[1]).map(|(a, b)| 0.5 * (a + b)).collect()).collect()
        }
    })
}

/// A k-means clustering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeans {
    pub assignment: Vec<usize>,
    pub sizes: Vec<usize>,
    pub centroids: Vec<Vec<f64>>,
    /// Sum of squared distances to the assigned centroid.
    pub inertia: f64,
    pub iterations: usize,
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Deterministic k-means: k-means++ seeding from `Rng::new(seed)`, Lloyd iterations until no
/// assignment changes (or `max_iterations`); an emptied cluster is re-seeded with the point
/// farthest from its centroid (lowest index on ties). Ties in assignment go to the lower cluster.
pub fn kmeans(points: &[Vec<f64>], k: usize, seed: u64, max_iterations: usize) -> Result<KMeans> {
    let n = points.len();
    if n == 0 || k == 0 {
        return Err(invalid(format!("k-means: need points and k ≥ 1 (got {n} points, k = {k})")));
    }
    let d = points[0].len();
    if let Some(i) = points.iter().position(|p| p.len() != d) {
        return Err(invalid(format!("k-means: point {i} has {} dimensions, point 0 has {d}", points[i].len())));
    }
    if points.iter().flatten().any(|x| !x.is_finite()) {
        return Err(invalid("k-means: a representation is not finite"));
    }
    // Capping k at n would answer a different question than the one asked, silently.
    if k > n {
        return Err(invalid(format!("k-means: k = {k} clusters for {n} points; k must not exceed the points")));
    }
    let mut rng = Rng::new(seed);
    let mut centroids: Vec<Vec<f64>> = vec![points[rng.below(n)].clone()];
    let mut best: Vec<f64> = points.iter().map(|p| sq_dist(p, &centroids[0])).collect();
    while centroids.len() < k {
        let total: f64 = best.iter().sum();
        let next = if total <= 0.0 {
            // Every point sits on a centroid: take the first point not yet chosen.
            (0..n).find(|&i| !centroids.iter().any(|c| c == &points[i])).unwrap_or(0)
        } else {
            let mut u = rng.uniform() * total;
            let mut pick = n - 1;
            for (i, &w) in best.iter().enumerate() {
                if u < w {
                    pick = i;
                    break;
                }
                u -= w;
            }
            pick
        };
        centroids.push(points[next].clone());
        for (b, p) in best.iter_mut().zip(points) {
            *b = b.min(sq_dist(p, &centroids[centroids.len() - 1]));
        }
    }
    let mut assignment = vec![usize::MAX; n];
    let mut iterations = 0;
    for _ in 0..max_iterations.max(1) {
        iterations += 1;
        let mut changed = false;
        for (i, p) in points.iter().enumerate() {
            let mut arg = 0;
            let mut dmin = f64::INFINITY;
            for (c, cent) in centroids.iter().enumerate() {
                let dd = sq_dist(p, cent);
                if dd < dmin {
                    dmin = dd;
                    arg = c;
                }
            }
            if assignment[i] != arg {
                assignment[i] = arg;
                changed = true;
            }
        }
        // Re-seed empty clusters.
        for c in 0..k {
            if !assignment.contains(&c) {
                let far = (0..n)
                    .max_by(|&a, &b| {
                        let da = sq_dist(&points[a], &centroids[assignment[a]]);
                        let db = sq_dist(&points[b], &centroids[assignment[b]]);
                        da.total_cmp(&db).then(b.cmp(&a))
                    })
                    .unwrap_or(0);
                assignment[far] = c;
                changed = true;
            }
        }
        for (c, cent) in centroids.iter_mut().enumerate() {
            let members: Vec<&Vec<f64>> =
                points.iter().zip(&assignment).filter(|(_, &a)| a == c).map(|(p, _)| p).collect();
            if members.is_empty() {
                continue;
            }
            for (j, x) in cent.iter_mut().enumerate() {
                *x = members.iter().map(|m| m[j]).sum::<f64>() / members.len() as f64;
            }
        }
        if !changed {
            break;
        }
    }
    let mut sizes = vec![0; k];
    for &a in &assignment {
        sizes[a] += 1;
    }
    let inertia = points.iter().zip(&assignment).map(|(p, &a)| sq_dist(p, &centroids[a])).sum();
    Ok(KMeans { assignment, sizes, centroids, inertia, iterations })
}

/// Scenario frequency: k-means on `reps` (one per item); the smallest clusters whose total mass
/// is at most `(1 − α)·N` are the tail (sizes ascending, ties by cluster index).
pub fn split_by_scenario(reps: &[Vec<f32>], opts: &ScenarioOptions) -> Result<HeadTailSplit> {
    let n = reps.len();
    if !(opts.alpha > 0.0 && opts.alpha < 1.0) {
        return Err(invalid(format!("scenario split: alpha must lie in (0, 1), got {}", opts.alpha)));
    }
    if n < 2 {
        return Err(invalid(format!("scenario split: need at least 2 items, got {n}")));
    }
    // Worded for both `--clusters` and Python's `clusters=`.
    if opts.k >= n {
        return Err(invalid(format!(
            "scenario split: clusters (k) is {}, but there are {n} pairs: each cluster would hold one pair (at most), \
             so no cluster would be rarer than another; use fewer clusters than pairs",
            opts.k
        )));
    }
    let points: Vec<Vec<f64>> = reps.iter().map(|r| r.iter().map(|&x| x as f64).collect()).collect();
    let km = kmeans(&points, opts.k, opts.seed, opts.max_iterations)?;
    // Sizes all equal: "the smallest clusters" are then whichever the seed numbered first.
    // (One cluster is left to the budget check below, which says why it cannot be split.)
    if km.sizes.len() > 1 && km.sizes.iter().all(|&s| s == km.sizes[0]) {
        return Err(invalid(format!(
            "scenario split: all {} clusters (k) hold {} pairs each, so no cluster is rarer than another and a tail \
             of the smallest clusters would carry no frequency information (the seed would choose it); use another \
             number of clusters (k), or another split",
            km.sizes.len(),
            km.sizes[0]
        )));
    }
    let mut order: Vec<usize> = (0..km.sizes.len()).collect();
    order.sort_by_key(|&c| (km.sizes[c], c));
    let budget = (1.0 - opts.alpha) * n as f64;
    let (mut mass, mut tail_clusters) = (0usize, Vec::new());
    for c in order {
        if (mass + km.sizes[c]) as f64 > budget + 1e-9 {
            break;
        }
        mass += km.sizes[c];
        tail_clusters.push(c);
    }
    if tail_clusters.is_empty() {
        return Err(invalid(format!(
            "scenario split: even the smallest of {} clusters ({} items) holds more than (1 − α)·N = {budget:.1}; \
             raise k (k ≥ 1/(1 − α) always works)",
            km.sizes.len(),
            km.sizes.iter().min().copied().unwrap_or(0)
        )));
    }
    tail_clusters.sort();
    let labels: Vec<bool> = km.assignment.iter().map(|a| tail_clusters.contains(a)).collect();
    let rule = SplitRule::ScenarioFrequency {
        alpha: opts.alpha,
        k: km.sizes.len(),
        representation: opts.representation.site().name(),
        view: opts.view,
        seed: opts.seed,
        iterations: km.iterations,
        cluster_sizes: km.sizes.clone(),
        tail_clusters,
    };
    HeadTailSplit::from_labels(&labels, rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_and_random_splits() {
        let s = split_by_field(&["chat", "xstest", "chat", "hep-go"], "subset", &["xstest", "hep-go"]).unwrap();
        assert_eq!((s.head.clone(), s.tail.clone()), (vec![0, 2], vec![1, 3]));
        let e = split_by_field(&["chat", "math", "chat"], "subset", &["xstest"]).unwrap_err().to_string();
        assert_eq!(e, "head/tail split (`subset` ∈ {xstest}): the tail is empty (3 items)");
        let r = split_random(50, 10, 7).unwrap();
        assert_eq!((r.n_tail, r.n_head), (10, 40));
        assert_eq!(r, split_random(50, 10, 7).unwrap());
        assert_ne!(r.tail, split_random(50, 10, 8).unwrap().tail);
        r.validate(50).unwrap();
        assert!(r.validate(20).is_err());
        assert!(split_random(5, 0, 1).is_err());
    }

    #[test]
    fn token_rarity_picks_the_rare_items() {
        // Items 3 and 7 carry the rare token 99; everything else is made of common tokens.
        let items: Vec<Vec<u32>> =
            (0..10).map(|i| if i == 3 || i == 7 { vec![1, 2, 99, 99] } else { vec![1, 2, 1, 2] }).collect();
        let s = split_by_token_rarity(&items, 0.8).unwrap();
        assert_eq!(s.tail, vec![3, 7]);
        assert!(matches!(s.rule, SplitRule::TokenRarity { .. }));
        assert!(split_by_token_rarity(&items, 0.99).is_err());
        assert!(split_by_token_rarity(&items, 1.5).is_err());
    }

    #[test]
    fn scenario_split_takes_the_small_cluster() {
        // 16 points near (0, 0), 4 near (10, 10): with α = 0.8 the 4 are the tail.
        let mut rng = Rng::new(3);
        let mut reps = Vec::new();
        for i in 0..20 {
            let c = if i % 5 == 4 { 10.0 } else { 0.0 };
            reps.push(vec![c + 0.1 * rng.normal() as f32, c + 0.1 * rng.normal() as f32]);
        }
        let opts = ScenarioOptions { k: 2, seed: 1, ..Default::default() };
        let s = split_by_scenario(&reps, &opts).unwrap();
        assert_eq!(s.tail, vec![4, 9, 14, 19]);
        assert_eq!(s, split_by_scenario(&reps, &opts).unwrap());
        // One cluster cannot be split: the smallest (all 20) exceeds the budget.
        assert!(split_by_scenario(&reps, &ScenarioOptions { k: 1, ..opts }).is_err());
    }

    #[test]
    fn scenario_split_refuses_k_at_least_n_and_clusters_of_one_size() {
        let mut rng = Rng::new(5);
        let reps: Vec<Vec<f32>> = (0..30).map(|_| vec![rng.normal() as f32, rng.normal() as f32]).collect();
        // k ≥ N was capped to N: 30 singletons, a tail the seed picked. Now refused, k as asked.
        for k in [30, 50] {
            let e = split_by_scenario(&reps, &ScenarioOptions { k, ..Default::default() }).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "scenario split: clusters (k) is {k}, but there are 30 pairs: each cluster would hold one pair \
                     (at most), so no cluster would be rarer than another; use fewer clusters than pairs"
                )
            );
        }
        assert!(kmeans(&[vec![0.0], vec![1.0]], 3, 0, 10)
            .unwrap_err()
            .to_string()
            .contains("k = 3 clusters for 2 points"));
        // Three tight, well-separated groups of 4: k-means finds sizes 4, 4, 4, and α = 0.6 would
        // let one group be the tail. None is rarer than another: refused.
        let mut reps = Vec::new();
        for i in 0..12 {
            let c = 10.0 * (i % 3) as f32;
            reps.push(vec![c + 0.01 * rng.normal() as f32, c + 0.01 * rng.normal() as f32]);
        }
        let opts = ScenarioOptions { k: 3, alpha: 0.6, ..Default::default() };
        let e = split_by_scenario(&reps, &opts).unwrap_err().to_string();
        assert_eq!(
            e,
            "scenario split: all 3 clusters (k) hold 4 pairs each, so no cluster is rarer than another and a tail of \
             the smallest clusters would carry no frequency information (the seed would choose it); use another number \
             of clusters (k), or another split"
        );
        // Without the last item one group holds 3: it is rarer, and it is the tail.
        let s = split_by_scenario(&reps[..11], &ScenarioOptions { alpha: 0.7, ..opts }).unwrap();
        assert_eq!(s.tail, vec![2, 5, 8]);
    }
}
