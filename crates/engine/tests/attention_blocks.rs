//! Attention's query blocks: where attention forms its scores as tensors (gradient runs and hooked
//! runs here, every run on a GPU), a budget on the scores' bytes splits the queries into blocks. Blocks of one
//! query row must give the numbers one whole block gives, on every architecture (sliding
//! windows, soft-capping, GQA, biases, learned positions), under left and right padding.

mod common;
use common::*;

use reward_lens_engine::{DType, Hooks, PaddingSide, RewardModel, SiteFilter, Tensor, DEFAULT_ATTENTION_BUDGET};

fn batch_of(model: &RewardModel, side: PaddingSide) -> reward_lens_engine::Batch {
    let seqs: Vec<Vec<u32>> = (0..3).flat_map(|i| [ids(model, i, "chosen"), ids(model, i, "rejected")]).collect();
    assert!(seqs.iter().any(|s| s.len() != seqs[0].len()), "rows of different lengths: padding matters");
    model.batch(&seqs, side).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Largest difference relative to the largest magnitude of `a`.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    max_abs_diff(a, b) / scale
}

#[test]
fn query_blocks_equal_one_block_in_gradient_runs() {
    for name in MODELS {
        let mut model = load(name);
        for side in [PaddingSide::Right, PaddingSide::Left] {
            let batch = batch_of(&model, side);
            let weights: Vec<f32> = (0..batch.len()).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
            let sites = SiteFilter::new(&["blocks.0.hook_resid_pre", "blocks.*.attn.hook_z"]);
            let run = |m: &RewardModel| {
                let scores = values(&m.differentiable_scores(&batch).unwrap());
                let g = m.gradients(&batch, &sites, &weights, &Hooks::none()).unwrap();
                let grad = values(g.grads.site(reward_lens_engine::Site::ResidPre(0)).unwrap());
                let z = values(g.values.site(reward_lens_engine::Site::Z(1)).unwrap());
                (scores, grad, z)
            };
            model.set_attention_budget(DEFAULT_ATTENTION_BUDGET);
            let whole = run(&model);
            model.set_attention_budget(1); // one query row per block: other gemm kernels, so rounding differs
            let rows = run(&model);
            assert!(rel(&whole.0, &rows.0) < 1e-5, "{name} {side:?}: scores {} vs {}", whole.0[0], rows.0[0]);
            assert!(rel(&whole.1, &rows.1) < 1e-4, "{name} {side:?}: gradient at resid_pre.0");
            assert!(rel(&whole.2, &rows.2) < 1e-5, "{name} {side:?}: z of layer 1");
        }
    }
}

#[test]
fn hooks_on_scores_or_patterns_see_them_whole_whatever_the_budget() {
    for name in MODELS {
        let mut model = load(name);
        let batch = batch_of(&model, PaddingSide::Left);
        let plain = model.score(&batch).unwrap().scores;
        model.set_attention_budget(1);
        let t = batch.seq_len();
        for site in ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_attn_scores"] {
            let f = model.forward(&batch, &Hooks::cache(&[site])).unwrap();
            let (_, cached) = f.cache.iter().next().unwrap();
            assert_eq!(cached.dims(), &[batch.len(), model.config.n_heads, t, t], "{name} {site}");
            assert!(rel(&plain, &f.output.scores) < 1e-5, "{name} {site}: {plain:?} vs {:?}", f.output.scores);
        }
    }
}
