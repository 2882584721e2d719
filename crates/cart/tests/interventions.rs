//! CART's interventions on a tiny synthetic Llama (1 layer, d_model 32): the regulariser is
//! differentiable, reads what discovery reads and lowers `Div` when trained alone; the
//! curriculum follows its schedule; runs are reproducible to the bit; ensembles report their
//! disagreement.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use reward_lens_cart::discover::{extract, patch_inputs, PairReadout, Result, Unit};
use reward_lens_cart::interventions::{
    batch_divergence, circuit_readouts, curriculum_tail_count, regulariser_terms, train_cart, Augmentation, CartInputs,
    CartRun, CartTrainOptions, CircuitTargets, Curriculum, Ensemble, Regulariser, TailSource,
};
use reward_lens_engine::synth::{LlamaShape, Rng};
use reward_lens_engine::Positions;
use reward_lens_engine::{LoadOptions, MapSource, ModelConfig, RewardModel};
use reward_lens_train::{TokenizedPair, TrainOptions};

const TAIL_TOKEN: u32 = 60;

fn shape() -> LlamaShape {
    LlamaShape { n_layers: 1, d_model: 32, n_heads: 4, n_kv_heads: 2, d_mlp: 64, vocab_size: 64, max_positions: 64 }
}

fn weights(seed: u64) -> HashMap<String, Tensor> {
    shape().random_weights(seed, &Device::Cpu).unwrap()
}

fn model_from(tensors: HashMap<String, Tensor>) -> RewardModel {
    let config = ModelConfig::from_value(&shape().config_json(), Path::new("(test)")).unwrap();
    RewardModel::from_source(config, &MapSource { tensors, dtype: DType::F32 }, &LoadOptions::default()).unwrap()
}

/// Head pairs: the chosen response ends in 10, the rejected in 11. Tail pairs start with the
/// rare token and the rule flips.
fn pair(rng: &mut Rng, tail: bool) -> TokenizedPair {
    let len = 5 + (rng.next_u64() % 4) as usize;
    let body: Vec<u32> = (0..len).map(|_| 4 + (rng.next_u64() % 36) as u32).collect();
    let mut start = vec![1u32];
    if tail {
        start.push(TAIL_TOKEN);
    }
    let (win, lose) = if tail { (11, 10) } else { (10, 11) };
    let seq = |end: u32| [start.clone(), body.clone(), vec![end, 2]].concat();
    TokenizedPair { chosen: seq(win), rejected: seq(lose), subset: if tail { "tail" } else { "head" }.into() }
}

fn pairs(n: usize, n_tail: usize, seed: u64) -> Vec<TokenizedPair> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| pair(&mut rng, i % (n / n_tail) == 0 && i / (n / n_tail) < n_tail)).collect()
}

/// A label-preserving perturbation: one body token replaced (the label hangs on the last token).
fn perturbed(p: &TokenizedPair, seed: u64) -> TokenizedPair {
    let mut rng = Rng::new(seed);
    let at = 2 + (rng.next_u64() % 3) as usize;
    let tok = 4 + (rng.next_u64() % 36) as u32;
    let mut c = p.chosen.clone();
    let mut r = p.rejected.clone();
    c[at] = tok;
    r[at] = tok;
    TokenizedPair { chosen: c, rejected: r, subset: p.subset.clone() }
}

fn units() -> (Vec<Unit>, Vec<Unit>) {
    let tail = (0..12).map(|i| Unit::mlp(0, i)).chain([Unit::head(0, 1)]).collect();
    let head = vec![Unit::mlp(0, 40), Unit::head(0, 3)];
    (tail, head)
}

fn base(seed: u64, epochs: usize) -> TrainOptions {
    TrainOptions { epochs, batch_size: 8, lr: 1e-2, warmup_steps: 2, seed, ..Default::default() }
}

/// Fresh tail pairs from a seed (an organism's sampler in miniature).
struct Fresh;

impl TailSource for Fresh {
    fn draw(&mut self, n: usize, seed: u64) -> Result<Vec<TokenizedPair>> {
        let mut rng = Rng::new(seed);
        Ok((0..n).map(|_| pair(&mut rng, true)).collect())
    }
    fn describe(&self) -> String {
        "fresh tail pairs".into()
    }
}

#[test]
fn readouts_match_discovery_and_the_terms_have_gradients() {
    let train = pairs(40, 10, 1);
    let (tail_u, head_u) = units();
    let all: Vec<Unit> = tail_u.iter().chain(&head_u).cloned().collect();
    // Read-outs equal discovery's (|a| of neurons, ‖z‖ of heads at the pooled token).
    let model = model_from(weights(3));
    let seqs: Vec<Vec<u32>> = train.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
    let v: Vec<Vec<f32>> = circuit_readouts(&model, &seqs, &all).unwrap().to_vec2().unwrap();
    let acts = extract(&model, &patch_inputs(&train), &all, Positions::Pooled, None, 8).unwrap();
    let (c, r) = (acts.values(PairReadout::Chosen), acts.values(PairReadout::Rejected));
    for (p, (cv, rv)) in c.iter().zip(&r).enumerate() {
        for u in 0..all.len() {
            assert!((v[2 * p][u] as f64 - cv[u]).abs() < 1e-4, "pair {p} unit {u}: {} vs {}", v[2 * p][u], cv[u]);
            assert!((v[2 * p + 1][u] as f64 - rv[u]).abs() < 1e-4);
        }
    }
    // On a model built from Vars, Div + Stab back-propagates into the weights.
    let vars: HashMap<String, Var> = weights(3).into_iter().map(|(k, t)| (k, Var::from_tensor(&t).unwrap())).collect();
    let m = model_from(vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect());
    let tail: Vec<&TokenizedPair> = train.iter().filter(|p| p.subset == "tail").collect();
    let head: Vec<&TokenizedPair> = train.iter().filter(|p| p.subset == "head").take(10).collect();
    let copies: Vec<TokenizedPair> = tail.iter().enumerate().map(|(i, p)| perturbed(p, i as u64)).collect();
    let pert: Vec<(usize, &TokenizedPair)> = copies.iter().enumerate().collect();
    let terms = regulariser_terms(&m, &tail, &head, &pert, &all, &tail_u).unwrap();
    let (div, stab) = (terms.div.unwrap(), terms.stab.unwrap());
    let (d, s) = (div.to_scalar::<f32>().unwrap(), stab.to_scalar::<f32>().unwrap());
    assert!(d.is_finite() && d > 0.0 && s.is_finite() && s > 0.0, "div {d} stab {s}");
    let grads = (div + stab).unwrap().backward().unwrap();
    for name in
        ["model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.v_proj.weight", "model.embed_tokens.weight"]
    {
        let g = grads.get(vars[name].as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm.is_finite() && norm > 0.0, "{name}: |g|² = {norm}");
    }
    // Undefined with fewer than two pairs a side, or no perturbed copy.
    let none = regulariser_terms(&m, &tail[..1], &head, &[], &all, &tail_u).unwrap();
    assert!(none.div.is_none() && none.stab.is_none());
    // Identical sides: Div is exactly 0.
    let same = batch_divergence(&model, &train[..10], &train[..10], &all).unwrap().unwrap();
    assert!(same.abs() < 1e-9, "{same}");
}

#[test]
fn training_on_the_regulariser_alone_lowers_div() {
    let train = pairs(48, 12, 2);
    let (tail_u, head_u) = units();
    let all: Vec<Unit> = tail_u.iter().chain(&head_u).cloned().collect();
    let tail: Vec<TokenizedPair> = train.iter().filter(|p| p.subset == "tail").cloned().collect();
    let head: Vec<TokenizedPair> = train.iter().filter(|p| p.subset == "head").cloned().collect();
    let before = batch_divergence(&model_from(weights(5)), &tail, &head, &all).unwrap().unwrap();
    let targets = CircuitTargets::from_units(tail_u, head_u);
    let run = |lambda: f64, bt: f64| {
        let opts = CartTrainOptions {
            base: base(5, 4),
            regulariser: Some(Regulariser { lambda_div: lambda, lambda_stab: 0.0, pairs_per_side: 8 }),
            bt_weight: bt,
            ..Default::default()
        };
        let inputs = CartInputs { train: &train, held_out: &train, targets: Some(&targets), ..Default::default() };
        let out = train_cart(&shape().config_json(), &|_| Ok(weights(5)), &inputs, &opts, None, |_| {}).unwrap();
        let after = batch_divergence(&out.members[0].model().unwrap(), &tail, &head, &all).unwrap().unwrap();
        (out.report, after)
    };
    let (report, after) = run(1.0, 0.0);
    eprintln!("Div {before} → {after}");
    assert!(after < 0.5 * before, "Div {before} → {after}");
    let m = &report.members[0];
    assert!(m.div_first.is_some() && m.div_last.is_some(), "{m:?}");
    assert!(m.stab_first.is_none(), "λ_stab = 0: no stability term");
    assert_eq!(m.div_units.len(), 15);
    // Plain BT training does not do that.
    let (_, plain) = run(0.0, 1.0);
    eprintln!("plain BT: Div {plain}");
    assert!(after < plain, "regularised {after} vs plain {plain}");
}

#[test]
fn the_curriculum_follows_its_schedule() {
    let train = pairs(48, 12, 3);
    let c = Curriculum { start_tail_share: 0.0, end_tail_share: 1.0, warm_fraction: 1.0 };
    let opts = CartTrainOptions { base: base(1, 2), curriculum: Some(c.clone()), ..Default::default() };
    let inputs = CartInputs { train: &train, held_out: &train, ..Default::default() };
    let mut seen = Vec::new();
    let out =
        train_cart(&shape().config_json(), &|_| Ok(weights(1)), &inputs, &opts, None, |s| seen.push(s.tail_in_batch))
            .unwrap();
    let steps = out.report.steps;
    assert_eq!(steps, 12);
    let want: Vec<usize> = (0..steps).map(|t| curriculum_tail_count(&c, t, steps, 8)).collect();
    assert_eq!(out.report.members[0].tail_per_batch, want);
    assert_eq!(seen, want);
    assert_eq!((want[0], want[steps - 1]), (0, 8));
    assert!(want.windows(2).all(|w| w[0] <= w[1]));
    // Without a curriculum, batches follow the natural share (12 of 48 → 24 tail draws in 96).
    let plain = CartTrainOptions { base: base(1, 2), ..Default::default() };
    let out = train_cart(&shape().config_json(), &|_| Ok(weights(1)), &inputs, &plain, None, |_| {}).unwrap();
    assert_eq!(out.report.members[0].tail_per_batch.iter().sum::<usize>(), 24);
}

fn everything(seed: u64) -> (CartRun, HashMap<String, Tensor>) {
    let train = pairs(40, 10, 4);
    let held = pairs(20, 5, 40);
    let copies: Vec<Option<TokenizedPair>> =
        train.iter().enumerate().map(|(i, p)| (p.subset == "tail").then(|| perturbed(p, i as u64))).collect();
    let (tail_u, head_u) = units();
    let targets = CircuitTargets::from_units(tail_u, head_u);
    let reference = model_from(weights(9));
    let opts = CartTrainOptions {
        base: base(seed, 2),
        augmentation: Some(Augmentation { per_tail_pair: 2, oversample: 2 }),
        regulariser: Some(Regulariser { lambda_div: 0.1, lambda_stab: 0.1, pairs_per_side: 4 }),
        curriculum: Some(Curriculum { start_tail_share: 0.25, end_tail_share: 0.5, warm_fraction: 1.0 }),
        ..Default::default()
    };
    let inputs = CartInputs {
        train: &train,
        held_out: &held,
        perturbed: Some(&copies),
        reference: Some(&reference),
        targets: Some(&targets),
        ..Default::default()
    };
    let mut src = Fresh;
    let out = train_cart(&shape().config_json(), &|s| Ok(weights(s)), &inputs, &opts, Some(&mut src), |_| {}).unwrap();
    (out.report, out.members[0].weights())
}

#[test]
fn same_seed_same_weights() {
    let (r1, w1) = everything(7);
    let (r2, w2) = everything(7);
    let (_, w3) = everything(8);
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut differs = false;
    for (k, t) in &w1 {
        assert_eq!(flat(t), flat(&w2[k]), "{k}");
        differs |= flat(t) != flat(&w3[k]);
    }
    assert!(differs, "another seed gives other weights");
    assert_eq!(serde_json::to_string(&r1).unwrap(), serde_json::to_string(&r2).unwrap());
    let aug = r1.augmentation.as_ref().unwrap();
    assert_eq!((aug.n_requested, aug.n_candidates, aug.n_added), (20, 40, 20));
    assert!(aug.circuit_guided);
    // The kept candidates are the ones that drive the circuit most.
    assert!(aug.mean_norm_added.unwrap() > aug.mean_norm_candidates.unwrap());
    let m = &r1.members[0];
    assert!(m.div_first.is_some() && m.stab_first.is_some(), "{m:?}");
}

#[test]
fn ensemble_disagreement_is_reported_and_serialises() {
    let train = pairs(40, 10, 6);
    let held = pairs(30, 10, 60);
    let val = pairs(20, 10, 61).into_iter().filter(|p| p.subset == "tail").collect::<Vec<_>>();
    let (tail_u, head_u) = units();
    let targets = CircuitTargets::from_units(tail_u, head_u);
    let opts = CartTrainOptions {
        base: base(2, 2),
        ensemble: Some(Ensemble {
            members: 3,
            member_regulariser: Some(Regulariser { lambda_div: 0.1, lambda_stab: 0.0, pairs_per_side: 4 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let inputs = CartInputs {
        train: &train,
        held_out: &held,
        validation: Some(&val),
        targets: Some(&targets),
        ..Default::default()
    };
    let out = train_cart(&shape().config_json(), &|s| Ok(weights(s)), &inputs, &opts, None, |_| {}).unwrap();
    let r = &out.report;
    assert_eq!((out.members.len(), r.members.len()), (3, 3));
    let seeds: Vec<u64> = r.members.iter().map(|m| m.seed).collect();
    assert!(seeds[0] == 2 && seeds[1] != seeds[0] && seeds[2] != seeds[1]);
    assert!(r.members.iter().all(|m| m.init_seed == 2), "members share the reference's initial weights");
    // Each member is regularised on its own share of the tail units.
    assert_ne!(r.members[0].stab_units, r.members[1].stab_units);
    let e = r.ensemble.as_ref().unwrap();
    assert!((e.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(!e.validation_in_sample && e.n_validation == val.len());
    let (dh, dt) = (e.disagreement_head.unwrap(), e.disagreement_tail.unwrap());
    assert!(dh.is_finite() && dh > 0.0 && dt.is_finite() && dt > 0.0);
    assert_eq!(e.tail_higher, Some(dt > dh));
    let auc = e.auroc_tail_vs_head.unwrap();
    assert!((0.0..=1.0).contains(&auc));
    assert_eq!((e.held_out.n_head, e.held_out.n_tail), (20, 10));
    assert_eq!(r.held_out, e.held_out);
    let text = serde_json::to_string(r).unwrap();
    let back: CartRun = serde_json::from_str(&text).unwrap();
    // (serde_json's float parsing may move the last bit: compare the rest exactly.)
    let be = back.ensemble.as_ref().unwrap();
    assert_eq!((be.members, be.tail_higher, be.weights.len()), (3, e.tail_higher, 3));
    assert!((be.disagreement_tail.unwrap() - dt).abs() < 1e-12 && (be.disagreement_head.unwrap() - dh).abs() < 1e-12);
    assert_eq!(
        back.members.iter().map(|m| &m.tail_per_batch).collect::<Vec<_>>(),
        r.members.iter().map(|m| &m.tail_per_batch).collect::<Vec<_>>()
    );
    assert_eq!(back.options, r.options);
    // The regulariser needs units; augmentation needs a source.
    let bad = CartTrainOptions { regulariser: Some(Regulariser::default()), ..Default::default() };
    let no_targets = CartInputs { train: &train, held_out: &held, ..Default::default() };
    let err = train_cart(&shape().config_json(), &|s| Ok(weights(s)), &no_targets, &bad, None, |_| {});
    assert!(err.err().unwrap().to_string().contains("circuit units"));
}

/// Weights that fail no step — a NaN λ (skipped as "not > 0"), a negative λ (rewarding the
/// divergence it should penalise), a NaN κ (every member weighted NaN) — and an empty ensemble
/// are refused before anything trains, naming the setting.
#[test]
fn nonsense_weights_are_refused_before_training() {
    let train = pairs(12, 4, 9);
    let (tail_u, head_u) = units();
    let targets = CircuitTargets::from_units(tail_u, head_u);
    let inputs = CartInputs { train: &train, held_out: &train, targets: Some(&targets), ..Default::default() };
    let refused = |opts: CartTrainOptions, want: &str| {
        let mut steps = 0;
        let e = train_cart(&shape().config_json(), &|s| Ok(weights(s)), &inputs, &opts, None, |_| steps += 1);
        let msg = e.err().expect("refused").to_string();
        assert!(msg.contains(want), "{msg}");
        assert_eq!(steps, 0, "refused before the first step");
    };
    let reg = |lambda_div: f64, lambda_stab: f64| Regulariser { lambda_div, lambda_stab, pairs_per_side: 2 };
    let with = |r: Regulariser| CartTrainOptions { base: base(1, 1), regulariser: Some(r), ..Default::default() };
    refused(with(reg(f64::NAN, 0.1)), "λ_div is NaN");
    refused(with(reg(0.1, -1.0)), "λ_stab is -1");
    let ens = |e: Ensemble| CartTrainOptions { base: base(1, 1), ensemble: Some(e), ..Default::default() };
    refused(ens(Ensemble { kappa: f64::NAN, ..Default::default() }), "κ is NaN");
    refused(ens(Ensemble { members: 0, ..Default::default() }), "at least 1 member");
    refused(ens(Ensemble { member_regulariser: Some(reg(f64::INFINITY, 0.0)), ..Default::default() }), "λ_div is inf");
    refused(CartTrainOptions { base: base(1, 1), bt_weight: -1.0, ..Default::default() }, "Bradley–Terry weight");
    let warm = Curriculum { warm_fraction: 0.0, ..Default::default() };
    refused(CartTrainOptions { base: base(1, 1), curriculum: Some(warm), ..Default::default() }, "warm fraction");
    // Zero weights are allowed (a term switched off).
    let ok = train_cart(&shape().config_json(), &|s| Ok(weights(s)), &inputs, &with(reg(0.0, 0.0)), None, |_| {});
    assert!(ok.is_ok(), "{:?}", ok.err());
}
