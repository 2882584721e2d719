//! Activation patching against reward-lens 1.0 (three modes), the sweep against the naive loop,
//! and the consistency of head and sublayer patches.

mod common;
use common::*;

use reward_lens_engine::{EncodedPair, PairText, Positions, RewardModel, Truncation};
use reward_lens_instruments::patching::{patch, Align, Granularity, PatchMode, PatchOptions};
use serde_json::Value;

fn inputs(model: &RewardModel) -> Vec<EncodedPair> {
    std::fs::read_to_string(fixtures().join("pairs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let p = PairText::new(
                v["prompt"].as_str().unwrap(),
                v["chosen"].as_str().unwrap(),
                v["rejected"].as_str().unwrap(),
            );
            model.encode_pair(&p, Truncation::Error).unwrap()
        })
        .collect()
}

#[test]
fn v1_modes_match_the_peer() {
    for name in ["llama", "mistral"] {
        let model = load(name);
        let pairs = inputs(&model);
        for (mode, file) in
            [(PatchMode::Noising, "noising"), (PatchMode::Denoising, "denoising"), (PatchMode::Zero, "zero")]
        {
            let peer = json(fixtures().join(format!("expected/{name}/peer/patching_{file}.json")));
            let rep = patch(&model, &pairs, &PatchOptions { mode, v1_compat: true, ..Default::default() }).unwrap();
            let names: Vec<&str> = rep.components.iter().map(|c| c.name.as_str()).collect();
            for (p, e) in rep.pairs.iter().zip(peer["result"]["pairs"].as_array().unwrap()) {
                let want_names: Vec<&str> =
                    e["component_names"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
                assert_eq!(names, want_names);
                assert!((p.original_margin - e["original_differential"].as_f64().unwrap()).abs() < 1e-5);
                let d =
                    p.effects.iter().zip(&f64s(&e["patch_effects"])).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(d < 1e-4, "{name} {file} pair {}: effects differ by {d}", p.pair);
                // Normalised effects divide by the margin: they inherit its relative error (the
                // fixtures have a margin of 0.0025, where normalised effects reach 288).
                let inv = 1.0 / p.original_margin.abs();
                for (a, b) in p.normalized.iter().zip(&f64s(&e["normalized_effects"])) {
                    assert!(
                        (a - b).abs() <= 1e-4 * inv + 1e-3 * b.abs(),
                        "{name} {file} pair {}: normalised {a} vs {b}",
                        p.pair
                    );
                }
            }
        }
    }
}

#[test]
fn sweep_equals_the_naive_loop() {
    for name in ["llama", "gemma2", "gpt2", "armorm"] {
        let model = load(name);
        let pairs = inputs(&model)[..4].to_vec();
        for (mode, granularity, positions) in [
            (PatchMode::Noising, Granularity::Sublayer, Positions::All),
            (PatchMode::Denoising, Granularity::Head, Positions::Response),
            (PatchMode::Zero, Granularity::Sublayer, Positions::Pooled),
        ] {
            let opts = PatchOptions { mode, granularity, positions, batch_size: 3, ..Default::default() };
            let fast = patch(&model, &pairs, &opts).unwrap();
            let slow = patch(&model, &pairs, &PatchOptions { naive: true, ..opts.clone() }).unwrap();
            for (a, b) in fast.pairs.iter().zip(&slow.pairs) {
                let d = a.effects.iter().zip(&b.effects).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                assert!(d < 1e-5, "{name} {mode:?} {granularity:?}: sweep vs naive {d}");
            }
            assert!(
                fast.forward_equivalents_per_pair < slow.forward_equivalents_per_pair,
                "{name}: the sweep computes less"
            );
            // The naive loop runs both clean runs and every patch in full; the report's figure is
            // the pairs' mean, which is what lets shards merge exactly.
            let n = (2 + slow.components.len()) as f64;
            assert!(slow.pairs.iter().all(|p| p.forward_equivalents == n), "{name}: naive costs {n} per pair");
            let mean = fast.pairs.iter().map(|p| p.forward_equivalents).sum::<f64>() / pairs.len() as f64;
            assert_eq!(fast.forward_equivalents_per_pair, mean);
            let one = patch(&model, &pairs[1..2], &opts).unwrap();
            assert_eq!(
                one.pairs[0].forward_equivalents, fast.pairs[1].forward_equivalents,
                "{name}: a pair's cost is its own"
            );
        }
    }
}

#[test]
fn anchored_alignment_patches_the_pooled_token() {
    let model = load("llama");
    let pairs = inputs(&model);
    let v1 = patch(&model, &pairs, &PatchOptions { v1_compat: true, ..Default::default() }).unwrap();
    let ours = patch(&model, &pairs, &PatchOptions::default()).unwrap();
    let last_mlp = v1.components.len() - 1;
    // Where chosen is longer, v1's prefix rule never reaches the pooled token: the last MLP's
    // effect is 0 (to float rounding); anchored alignment moves it.
    let mut zeros = 0;
    for (p, (a, b)) in pairs.iter().zip(v1.pairs.iter().zip(&ours.pairs)) {
        if p.chosen.len() > p.rejected.len() {
            assert!(a.effects[last_mlp].abs() < 1e-6);
            assert!(b.effects[last_mlp].abs() > 1e-6);
            zeros += 1;
        }
    }
    assert!(zeros > 5);
    assert_eq!(ours.align, Align::Anchored);
}

#[test]
fn pooled_only_patch_at_the_last_mlp_is_linear_through_the_head() {
    // Patching only the pooled token of the last MLP changes nothing upstream: for a linear head
    // the effect is the head's reading of the new residual, so zero-patching it at the pooled
    // token equals its frozen-free contribution change — here checked as: zero-patch effect =
    // r_chosen − r(with mlp.L zeroed at pooled), computed independently with an intervention.
    let model = load("qwen3");
    let pairs = inputs(&model)[..3].to_vec();
    let rep = patch(
        &model,
        &pairs,
        &PatchOptions { mode: PatchMode::Zero, positions: Positions::Pooled, ..Default::default() },
    )
    .unwrap();
    let l = model.config.n_layers - 1;
    let k = rep.components.iter().position(|c| c.name == format!("mlp.{l}")).unwrap();
    for (p, pin) in rep.pairs.iter().zip(&pairs) {
        let batch = model.batch(std::slice::from_ref(&pin.chosen), reward_lens_engine::PaddingSide::Right).unwrap();
        let base = model.score(&batch).unwrap();
        let pooled = base.pooled_index[0];
        let hooks = reward_lens_engine::Hooks::none().with(
            reward_lens_engine::Intervention::new(
                reward_lens_engine::Site::MlpOut(l),
                reward_lens_engine::Action::Zero,
            )
            .positions(vec![pooled]),
        );
        let zeroed = model.forward(&batch, &hooks).unwrap().output.scores[0] as f64;
        assert!((p.effects[k] - (base.scores[0] as f64 - zeroed)).abs() < 1e-5);
    }
}

#[test]
fn head_patches_sum_to_the_sublayer_where_linear() {
    // Two responses one character apart, patched at the last layer's pooled token: only the final
    // norm lies downstream, every patch is small, and attention is linear in the heads' z, so the
    // heads' effects add up to their sublayer's effect to first order. (Earlier layers' heads
    // interact through later MLPs, and Gemma-2's post-attention norm divides by the norm of the
    // heads' sum, so neither is linear in one head.)
    for name in ["llama", "qwen3", "gpt2"] {
        let model = load(name);
        let p = PairText::new("What colour is the sky on a clear day?", "It is blue.", "It is blue!");
        let pairs = vec![model.encode_pair(&p, Truncation::Error).unwrap()];
        let opts = PatchOptions { positions: Positions::Pooled, ..Default::default() };
        let heads = patch(&model, &pairs, &PatchOptions { granularity: Granularity::Head, ..opts.clone() }).unwrap();
        let sub = patch(&model, &pairs, &opts).unwrap();
        {
            let l = model.config.n_layers - 1;
            let attn = sub.components.iter().position(|c| c.name == format!("attn.{l}")).unwrap();
            let whole = sub.pairs[0].effects[attn];
            let sum: f64 = heads
                .components
                .iter()
                .zip(&heads.pairs[0].effects)
                .filter(|(c, _)| c.layer == l)
                .map(|(_, e)| e)
                .sum();
            assert!(
                (sum - whole).abs() <= 0.1 * whole.abs() + 1e-4,
                "{name} layer {l}: heads {sum} vs sublayer {whole}"
            );
        }
    }
}

#[test]
fn attribution_patching_is_first_order_patching() {
    use reward_lens_instruments::patching::atp;
    // A tiny perturbation: two responses one character apart, patched at the last layer's pooled
    // token, where the change is small and first order holds. (Gemma-2 is left out: its sandwich
    // norms re-normalise the patched output, so even this patch is not first order there.)
    for name in ["llama", "qwen3", "gpt2", "armorm"] {
        let model = load(name);
        let p = PairText::new("What colour is the sky on a clear day?", "It is blue.", "It is blue!");
        let pairs = vec![model.encode_pair(&p, Truncation::Error).unwrap()];
        for mode in [PatchMode::Noising, PatchMode::Denoising] {
            let opts = PatchOptions { mode, positions: Positions::Pooled, ..Default::default() };
            let exact = patch(&model, &pairs, &opts).unwrap();
            let approx = atp(&model, &pairs, &opts).unwrap();
            assert_eq!(exact.components.len(), approx.components.len());
            assert!((exact.pairs[0].original_margin - approx.pairs[0].original_margin).abs() < 1e-5);
            let l = model.config.n_layers - 1;
            for (k, comp) in exact.components.iter().enumerate().filter(|(_, c)| c.layer == l) {
                let (x, a) = (exact.pairs[0].effects[k], approx.pairs[0].effects[k]);
                assert!((x - a).abs() <= 0.15 * x.abs() + 2e-4, "{name} {mode:?} {}: patch {x} vs AtP {a}", comp.name);
            }
        }
        // Zero mode: the first-order estimate of removing a component, for heads too.
        let opts = PatchOptions { mode: PatchMode::Zero, granularity: Granularity::Head, ..Default::default() };
        let a = atp(&model, &pairs, &opts).unwrap();
        assert_eq!(a.components.len(), model.config.n_layers * model.config.n_heads);
        assert!(a.pairs[0].effects.iter().all(|e| e.is_finite()));
        assert!(a.forward_equivalents_per_pair < 6.0);
    }
}

#[test]
fn verified_attribution_patching_is_exact_where_it_verifies() {
    use reward_lens_instruments::patching::atp;
    for name in ["llama", "gemma2", "gpt2"] {
        let model = load(name);
        let pairs = inputs(&model)[..3].to_vec();
        for (mode, granularity) in
            [(PatchMode::Noising, Granularity::Sublayer), (PatchMode::Denoising, Granularity::Head)]
        {
            let opts = PatchOptions { mode, granularity, batch_size: 3, ..Default::default() };
            let exact = patch(&model, &pairs, &opts).unwrap();
            let estimate = atp(&model, &pairs, &opts).unwrap();
            let k = 3;
            let verified = atp(&model, &pairs, &PatchOptions { verify_top: k, ..opts.clone() }).unwrap();
            for ((x, e), v) in exact.pairs.iter().zip(&estimate.pairs).zip(&verified.pairs) {
                assert!(x.exact.is_empty() && e.exact.is_empty(), "only verification lists exact effects");
                // The k largest estimates, in component order.
                let mut by_size: Vec<usize> = (0..e.effects.len()).collect();
                by_size.sort_by(|&a, &b| e.effects[b].abs().total_cmp(&e.effects[a].abs()));
                let mut top = by_size[..k].to_vec();
                top.sort();
                assert_eq!(v.exact, top, "{name} {mode:?}: the largest estimates are verified");
                for c in 0..e.effects.len() {
                    if v.exact.contains(&c) {
                        let d = (v.effects[c] - x.effects[c]).abs();
                        assert!(d < 1e-5 * (1.0 + x.effects[c].abs()), "{name} {mode:?} {c}: verified vs patch {d}");
                        assert!(v.normalized[c] == v.effects[c] / v.original_margin || v.original_margin.abs() < 1e-8);
                    } else {
                        assert_eq!(v.effects[c], e.effects[c], "{name} {mode:?} {c}: unverified stays the estimate");
                    }
                }
                assert!(v.forward_equivalents > e.forward_equivalents, "verification costs something");
                assert!(v.forward_equivalents < x.forward_equivalents + 1.0, "{name}: k of the sweep's patches");
            }
        }
        // `patch` computes every effect exactly and refuses the option; so does faithfulness.
        let opts = PatchOptions { verify_top: 2, ..Default::default() };
        let err = patch(&model, &pairs, &opts).unwrap_err().to_string();
        assert!(err.contains("verify_top") && err.contains("atp"), "{err}");
        let err = reward_lens_instruments::faithfulness::faithfulness(&model, &pairs, &[None, None, None], &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("verify_top"), "{err}");
    }
}

#[test]
fn faithfulness_ranks_the_same_components_three_ways() {
    use reward_lens_instruments::faithfulness::faithfulness;
    use reward_lens_instruments::stats::spearman;
    let model = load("mistral");
    let pairs = inputs(&model);
    let subsets: Vec<Option<String>> = std::fs::read_to_string(fixtures().join("pairs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["subset"].as_str().map(str::to_string))
        .collect();
    // Residual positions have no attribution to rank against: refused, never a panic.
    let residual = PatchOptions { granularity: Granularity::Residual, ..Default::default() };
    let e = faithfulness(&model, &pairs[..2], &subsets[..2], &residual).unwrap_err().to_string();
    assert!(e.contains("granularity residual has no DLA to compare; use sublayer or head"), "{e}");
    let rep = faithfulness(&model, &pairs, &subsets, &PatchOptions::default()).unwrap();
    assert_eq!(rep.components.len(), 2 * model.config.n_layers);
    assert_eq!(rep.subsets.len(), 8);
    // Each per-pair ρ is the Spearman of the report's own columns.
    for (i, r) in rep.pairs.iter().enumerate() {
        let want = spearman(&rep.dla[i], &rep.patching.pairs[i].effects);
        assert_eq!(r.dla_vs_patch, want);
        if let Some(x) = r.atp_vs_patch {
            assert!((-1.0..=1.0).contains(&x));
        }
    }
    let m = &rep.overall.dla_vs_patch;
    assert_eq!(m.n, 20);
    assert!(m.ci_low.unwrap() <= m.mean.unwrap() && m.mean.unwrap() <= m.ci_high.unwrap());
    assert!(rep.dla.iter().flatten().all(|x| x.is_finite()));
}

#[test]
fn divergence_distances_differ_across_components_when_n_is_below_d() {
    use reward_lens_instruments::divergence::{check, DivergenceClass, Reference};
    let model = load("llama");
    let all = inputs(&model);
    // 10 reference texts in d_model = 64: n < d.
    let texts: Vec<Vec<u32>> = all[10..].iter().map(|p| p.chosen.clone()).collect();
    let pairs = all[..5].to_vec();
    let rep = patch(&model, &pairs, &PatchOptions::default()).unwrap();
    let names: Vec<String> = rep.components.iter().map(|c| c.name.clone()).collect();
    let reference = Reference::fit(&model, &names, &texts).unwrap();
    let div = check(&model, &rep, &pairs, &reference, false).unwrap();
    assert_eq!(div.n_reference, 10);
    for p in &div.pairs {
        let d: Vec<f64> = p.components.iter().map(|c| c.distance).collect();
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
        assert!(sd > 0.05 * mean, "distances should differ across components: {d:?}");
        assert!((0.0..=1.0).contains(&p.reliability));
        for c in &p.components {
            assert_eq!(c.class == DivergenceClass::InDistribution, c.distance <= c.threshold);
        }
    }
    assert!(div.shrinkage.iter().all(|s| (0.0..=1.0).contains(s)));
    // v1's fixed threshold of 2.0 in 64 dimensions: every component is "divergent".
    let v1 = check(&model, &rep, &pairs, &reference, true).unwrap();
    assert!(v1.pairs.iter().flat_map(|p| &p.components).all(|c| c.class != DivergenceClass::InDistribution));
}

#[test]
fn residual_stream_patching_per_layer_and_position() {
    use reward_lens_instruments::patching::atp;
    for name in ["llama", "gpt2", "armorm"] {
        let model = load(name);
        let pairs = inputs(&model)[..2].to_vec();
        let opts =
            PatchOptions { granularity: Granularity::Residual, positions: Positions::Response, ..Default::default() };
        let fast = patch(&model, &pairs, &opts).unwrap();
        let slow = patch(&model, &pairs, &PatchOptions { naive: true, ..opts.clone() }).unwrap();
        let n = model.config.n_layers;
        assert_eq!(fast.components.len() % n, 0);
        let window = fast.components.len() / n;
        assert!(window >= 2);
        assert_eq!(fast.components[1].name, "resid.0.1");
        for (a, b) in fast.pairs.iter().zip(&slow.pairs) {
            let d = a.effects.iter().zip(&b.effects).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(d < 1e-5, "{name}: residual sweep vs naive {d}");
        }
        // Patching the whole residual at the pooled token of layer 0 vs the last layer: the
        // last-layer pooled patch replaces everything the head reads there.
        let r = patch(
            &model,
            &pairs,
            &PatchOptions { granularity: Granularity::Residual, positions: Positions::Pooled, ..Default::default() },
        )
        .unwrap();
        assert_eq!(r.components.len(), n);
        let a = atp(
            &model,
            &pairs,
            &PatchOptions { granularity: Granularity::Residual, positions: Positions::Pooled, ..Default::default() },
        )
        .unwrap();
        assert_eq!(a.components.len(), n);
    }
}

#[test]
fn path_patching_downstream_equals_the_head_patch() {
    use reward_lens_instruments::path::{path_patch, Receiver};
    for name in ["llama", "gemma2", "gpt2"] {
        let model = load(name);
        let pairs = inputs(&model)[..3].to_vec();
        for mode in [PatchMode::Noising, PatchMode::Denoising] {
            let heads =
                patch(&model, &pairs, &PatchOptions { mode, granularity: Granularity::Head, ..Default::default() })
                    .unwrap();
            let (ls, hs) = (0, 1);
            let receivers = Receiver::all_after(&model, ls);
            let rep = path_patch(&model, &pairs, (ls, hs), &receivers, mode, Align::Anchored).unwrap();
            let k = heads.components.iter().position(|c| c.name == format!("head.{ls}.{hs}")).unwrap();
            for (p, h) in rep.pairs.iter().zip(&heads.pairs) {
                let total = p.paths.last().unwrap();
                assert_eq!(total.receiver, "downstream");
                assert!(
                    (total.effect - h.effects[k]).abs() < 1e-5,
                    "{name} {mode:?}: downstream {} vs head patch {}",
                    total.effect,
                    h.effects[k]
                );
                assert!(p.paths.iter().all(|e| e.effect.is_finite()));
                assert_eq!(p.paths.len(), receivers.len());
            }
        }
        // Identical texts: the sender changes nothing, every path is 0.
        let same = EncodedPair::from_ids(pairs[0].chosen.clone(), pairs[0].chosen.clone());
        let rep =
            path_patch(&model, &[same], (0, 0), &Receiver::all_after(&model, 0), PatchMode::Noising, Align::Anchored)
                .unwrap();
        assert!(rep.pairs[0].paths.iter().all(|e| e.effect.abs() < 1e-6));
        // A receiver before the sender reads nothing from it; one the model lacks is named.
        let c = &model.config;
        let (n, h) = (c.n_layers, c.n_heads);
        let cases = [
            ((1, 0), Receiver::Attn { layer: 0 }, "receiver attn.0 does not read head.1.0's output".to_string()),
            ((1, 0), Receiver::Head { layer: 1, head: 0 }, "receiver head.1.0 does not read".into()),
            ((0, 0), Receiver::Head { layer: 1, head: h }, format!("receiver head.1.{h} does not exist")),
            ((0, 0), Receiver::Mlp { layer: n }, format!("receiver mlp.{n} does not exist")),
            ((0, h), Receiver::Downstream, format!("sender head.0.{h} does not exist")),
        ];
        for (sender, r, want) in cases {
            let e = path_patch(&model, &pairs[..1], sender, &[r], PatchMode::Noising, Align::Anchored)
                .expect_err("refused")
                .to_string();
            assert!(e.contains(&want) && !e.contains("pair"), "{name}: {e}");
        }
    }
}
