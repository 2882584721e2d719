//! CART circuit discovery on a model whose tail rule is carried by known units.
//!
//! The planted model: a generated 2-layer Llama where one residual direction, `e₀` (coordinate 0),
//! belongs to a rare token R alone. R's embedding is `c·e₀`; every other embedding, every weight
//! that reads the residual (q, k, v, gate, up) and every weight that writes it (o_proj, down_proj,
//! the score head) has its `e₀` component set to zero, and the norms' γ are 1, so no unit can see
//! `e₀` — except four hand-set neurons of layer 1, whose gate and up rows get `β·e₀` and whose
//! down_proj columns write along the reward direction. Tail pairs end their chosen response with
//! R; head pairs never contain it. The ground truth is therefore exact: those four neurons are
//! the units whose activation carries the tail rule.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use reward_lens_cart::bound::{bound_report, BoundOptions};
use reward_lens_cart::discover::{
    discover, enumerate_units, extract, pair_margins, specialisation, Circuit, DiscoverOptions, DiscoveryReport,
    Layers, PairReadout, ScreeningOptions, Threshold, Unit, UnitKind, UnitOptions, ValidationOptions,
};
use reward_lens_cart::headtail::{split_random, HeadTailSplit, SplitRule};
use reward_lens_cart::vulnerability::perturb::PerturbKind;
use reward_lens_cart::vulnerability::{
    assess, model_encoder, perturbed_pairs, VulnerabilityInputs, VulnerabilityOptions,
};
use reward_lens_engine::synth::{LlamaShape, Rng};
use reward_lens_engine::EncodedPair;
use reward_lens_engine::Positions;
use reward_lens_engine::{LoadOptions, MapSource, ModelConfig, RewardModel};
use reward_lens_instruments::sae::{Architecture, Sae};

const RARE: u32 = 63;
const PLANTED: [usize; 4] = [5, 17, 33, 50];
const PLANTED_LAYER: usize = 1;

fn shape() -> LlamaShape {
    LlamaShape { n_layers: 2, d_model: 32, n_heads: 4, n_kv_heads: 2, d_mlp: 64, vocab_size: 64, max_positions: 64 }
}

fn edit(w: &mut HashMap<String, Tensor>, name: &str, f: impl Fn(&mut Vec<Vec<f32>>)) {
    let t = &w[name];
    let mut m: Vec<Vec<f32>> = t.to_vec2().unwrap();
    f(&mut m);
    let (r, c) = (m.len(), m[0].len());
    w.insert(name.to_string(), Tensor::from_vec(m.concat(), (r, c), &Device::Cpu).unwrap());
}

/// The planted model (see the module docs).
fn planted_model() -> RewardModel {
    let s = shape();
    let mut w = s.random_weights(11, &Device::Cpu).unwrap();
    let names: Vec<String> = w.keys().cloned().collect();
    for name in &names {
        if name.ends_with("norm.weight") {
            let n = w[name].dim(0).unwrap();
            w.insert(name.clone(), Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap());
            continue;
        }
        let reads = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"].iter().any(|k| name.contains(k));
        let writes = ["o_proj", "down_proj"].iter().any(|k| name.contains(k));
        if reads {
            edit(&mut w, name, |m| m.iter_mut().for_each(|r| r[0] = 0.0));
        } else if writes {
            edit(&mut w, name, |m| m[0].iter_mut().for_each(|x| *x = 0.0));
        }
    }
    edit(&mut w, "model.embed_tokens.weight", |m| {
        for (t, row) in m.iter_mut().enumerate() {
            if t as u32 == RARE {
                row.iter_mut().for_each(|x| *x = 0.0);
                row[0] = 0.15;
            } else {
                row[0] = 0.0;
            }
        }
    });
    // Unit-norm reward direction, blind to e₀.
    let mut wr: Vec<f32> = w["score.weight"].to_vec2::<f32>().unwrap()[0].clone();
    wr[0] = 0.0;
    let norm = wr.iter().map(|x| x * x).sum::<f32>().sqrt();
    wr.iter_mut().for_each(|x| *x /= norm);
    w.insert("score.weight".into(), Tensor::from_vec(wr.clone(), (1, 32), &Device::Cpu).unwrap());
    let p = format!("model.layers.{PLANTED_LAYER}.mlp");
    for (k, &u) in PLANTED.iter().enumerate() {
        let beta = 1.2 + 0.2 * k as f32;
        edit(&mut w, &format!("{p}.gate_proj.weight"), |m| m[u][0] = beta);
        edit(&mut w, &format!("{p}.up_proj.weight"), |m| m[u][0] = beta);
        edit(&mut w, &format!("{p}.down_proj.weight"), |m| {
            for (i, row) in m.iter_mut().enumerate() {
                row[u] = 0.004 * wr[i];
            }
        });
    }
    let config = ModelConfig::from_value(&s.config_json(), std::path::Path::new("planted")).unwrap();
    RewardModel::from_source(config, &MapSource { tensors: w, dtype: candle_core::DType::F32 }, &LoadOptions::default())
        .unwrap()
}

/// 120 pairs, every fourth one a tail pair (its chosen response ends with R).
fn planted_pairs(seed: u64) -> (Vec<EncodedPair>, HeadTailSplit) {
    let mut rng = Rng::new(seed);
    let tok = |rng: &mut Rng| 3 + (rng.next_u64() % 60) as u32;
    let mut pairs = Vec::new();
    let mut labels = Vec::new();
    for i in 0..120 {
        let tail = i % 4 == 3;
        let plen = 4 + (rng.next_u64() % 4) as usize;
        let prompt: Vec<u32> = std::iter::once(1).chain((0..plen).map(|_| tok(&mut rng))).collect();
        let resp = |rng: &mut Rng| -> Vec<u32> { (0..3 + (rng.next_u64() % 4) as usize).map(|_| tok(rng)).collect() };
        let (mut c, mut r) = (resp(&mut rng), resp(&mut rng));
        c.push(if tail { RARE } else { tok(&mut rng) });
        r.push(tok(&mut rng));
        let rs = prompt.len();
        pairs.push(EncodedPair::new([prompt.clone(), c].concat(), [prompt, r].concat(), (rs, rs)));
        labels.push(tail);
    }
    let split = HeadTailSplit::from_labels(
        &labels,
        SplitRule::Labels { description: "chosen ends with the rare token".into() },
    )
    .unwrap();
    (pairs, split)
}

fn unit_options() -> UnitOptions {
    UnitOptions {
        mlp: Layers::All,
        heads: Layers::All,
        position: Positions::Pooled,
        readout: PairReadout::Mean,
        edges: Layers::None,
    }
}

fn is_planted(u: &Unit) -> bool {
    u.kind == UnitKind::MlpNeuron && u.layer == Some(PLANTED_LAYER) && PLANTED.contains(&u.index)
}

fn full_options() -> DiscoverOptions {
    DiscoverOptions {
        units: unit_options(),
        threshold: Threshold::MaxT { permutations: 1000, family_alpha: 0.05 },
        validation: ValidationOptions { random_sets: 20, ..Default::default() },
        screening: ScreeningOptions { enabled: true, top: 8 },
        batch_size: 32,
        seed: 5,
        ..Default::default()
    }
}

/// Precision and recall of the tail-specialised set against the planted neurons.
fn precision_recall(r: &DiscoveryReport) -> (f64, f64, usize) {
    let found: Vec<&Unit> = r.specialisation.tail_units.iter().map(|&k| &r.specialisation.stats[k].unit).collect();
    let hits = found.iter().filter(|u| is_planted(u)).count();
    (hits as f64 / found.len().max(1) as f64, hits as f64 / PLANTED.len() as f64, found.len())
}

fn planted_circuit(r: &DiscoveryReport) -> &Circuit {
    r.circuits
        .iter()
        .find(|c| c.units.iter().any(|u| is_planted(&u.unit)))
        .expect("a circuit holds the planted neurons")
}

#[test]
fn planted_neurons_are_recovered_and_their_ablation_hurts_the_tail() {
    let model = planted_model();
    let (pairs, split) = planted_pairs(1);
    let r = discover(&model, &pairs, &split, &full_options(), None).unwrap();
    let (precision, recall, n_found) = precision_recall(&r);
    eprintln!(
        "planted: {n_found} tail-specialised of {} units, precision {precision:.3}, recall {recall:.3}, τ {:.3}, \
         {} head-specialised",
        r.n_units,
        r.specialisation.tau.unwrap(),
        r.specialisation.head_units.len()
    );
    assert!(precision >= 0.8 && recall >= 0.8, "precision {precision}, recall {recall}");
    assert_eq!(r.n_units, 2 * 64 + 2 * 4);
    assert_eq!(r.specialisation.n_undefined, 0);
    // The tail is what the planted neurons make it: every tail pair won.
    assert_eq!(r.clean_tail.accuracy, 1.0);

    // One coherent circuit holds all four planted neurons.
    let c = planted_circuit(&r);
    assert_eq!(c.units.iter().filter(|u| is_planted(&u.unit)).count(), PLANTED.len());
    assert!(!c.distributed && c.coherent, "{c:?}");
    let coh = c.coherence.unwrap();
    let null = c.coherence_null.as_ref().unwrap();
    eprintln!(
        "coherence {coh:.3} vs random groups {:.3} ± {:.3} (p {:.4}); PR {:.3} for {} units",
        null.mean,
        null.sd,
        c.coherence_p.unwrap(),
        c.participation_ratio.unwrap(),
        c.units.len()
    );
    assert!(coh > null.q95);

    // Ablating it hurts the tail margin more than the head margin, and more than random sets.
    let v = c.causal.as_ref().unwrap();
    let (tm, hm) = (v.tail.delta_margin.mean.unwrap(), v.head.delta_margin.mean.unwrap());
    eprintln!(
        "ablation: Δmargin tail {tm:.3} [{:.3}, {:.3}], head {hm:.4}; ΔBT tail − head {:.3} [{:.3}, {:.3}]; \
         Δacc tail {:.3}; random sets' tail Δmargin {:.4} ± {:.4}; percentiles loss {:?} margin {:?}",
        v.tail.delta_margin.ci_low.unwrap(),
        v.tail.delta_margin.ci_high.unwrap(),
        v.tail_minus_head_loss.mean.unwrap(),
        v.tail_minus_head_loss.ci_low.unwrap(),
        v.tail_minus_head_loss.ci_high.unwrap(),
        v.tail.delta_accuracy.mean.unwrap(),
        v.random_tail_margin.as_ref().unwrap().mean,
        v.random_tail_margin.as_ref().unwrap().sd,
        v.loss_percentile,
        v.margin_percentile,
    );
    assert!(tm < -1.0 && tm < hm - 1.0, "tail {tm} head {hm}");
    assert!(v.tail_minus_head_margin.ci_high.unwrap() < 0.0);
    assert!(v.tail_minus_head_loss.ci_low.unwrap() > 0.0);
    assert_eq!(v.random_sets.len(), 20);
    assert!(v
        .random_sets
        .iter()
        .all(|s| s.tail_delta_margin > tm && s.tail_delta_loss < v.tail.delta_loss.mean.unwrap()));
    assert_eq!((v.margin_percentile, v.loss_percentile), (Some(1.0), Some(1.0)));
    assert!(v.validated);

    // Screening: attribution patching ranks the planted neurons first, and agrees with exact ablation.
    let s = r.screening.as_ref().unwrap();
    eprintln!(
        "AtP screen: top {:?}, Spearman(AtP, exact) over {} units = {:?}",
        s.screened.iter().take(4).map(|u| u.unit.name()).collect::<Vec<_>>(),
        s.screened.len(),
        s.spearman
    );
    for &u in &PLANTED {
        let hit = s.screened.iter().find(|x| is_planted(&x.unit) && x.unit.index == u);
        assert!(hit.is_some_and(|x| x.exact < 0.0 && x.atp < 0.0), "mlp.1.{u} not screened: {s:?}");
    }
    assert!(s.spearman.unwrap() > 0.8);
}

#[test]
fn null_splits_keep_the_family_wise_error_near_nominal() {
    // Labels independent of everything: random head/tail splits of the same inputs.
    let model = planted_model();
    let (pairs, _) = planted_pairs(1);
    let units = enumerate_units(&model, &unit_options(), None).unwrap();
    let acts = extract(&model, &pairs, &units, Positions::Pooled, None, 32).unwrap();
    let threshold = Threshold::MaxT { permutations: 1000, family_alpha: 0.05 };
    let mut with_discovery = 0;
    let mut total_units = 0;
    for s in 0..20u64 {
        let split = split_random(pairs.len(), 30, 1000 + s).unwrap();
        let spec = specialisation(&acts, PairReadout::Mean, &split, &threshold, s).unwrap();
        let found = spec.tail_units.len() + spec.head_units.len();
        total_units += found;
        with_discovery += usize::from(found > 0);
    }
    eprintln!("null: {with_discovery} of 20 random splits had any discovery ({total_units} units in all); nominal 1");
    assert!(with_discovery <= 4, "{with_discovery} of 20");
}

#[test]
fn same_seed_gives_identical_reports() {
    let model = planted_model();
    let (pairs, split) = planted_pairs(2);
    let opts = DiscoverOptions {
        units: unit_options(),
        threshold: Threshold::MaxT { permutations: 200, family_alpha: 0.05 },
        validation: ValidationOptions { random_sets: 4, bootstrap: 300, ..Default::default() },
        screening: ScreeningOptions { enabled: true, top: 4 },
        batch_size: 16,
        seed: 9,
        ..Default::default()
    };
    let a = serde_json::to_string(&discover(&model, &pairs, &split, &opts, None).unwrap()).unwrap();
    let b = serde_json::to_string(&discover(&model, &pairs, &split, &opts, None).unwrap()).unwrap();
    assert_eq!(a, b);
    // It reads back (floats may differ in the last bit through JSON text, so compare fields).
    let back: DiscoveryReport = serde_json::from_str(&a).unwrap();
    assert_eq!(back.split, split);
    assert_eq!(back.specialisation.tail_units.len(), 4);
    assert_eq!(back.options.seed, 9);
    assert!(matches!(back.split.rule, SplitRule::Labels { .. }));
    let c =
        serde_json::to_string(&discover(&model, &pairs, &split, &DiscoverOptions { seed: 10, ..opts }, None).unwrap())
            .unwrap();
    assert_ne!(a, c, "another seed draws other permutations and random sets");
}

#[test]
fn sae_latents_and_response_reads_find_the_same_circuit() {
    // An identity ReLU SAE on layer 1's MLP activations: latent i is neuron i (where positive).
    let model = planted_model();
    let (pairs, split) = planted_pairs(1);
    let eye = Tensor::eye(64, candle_core::DType::F32, &Device::Cpu).unwrap();
    let zeros = Tensor::zeros(64, candle_core::DType::F32, &Device::Cpu).unwrap();
    let sae = Sae {
        w_enc: eye.clone(),
        w_dec: eye,
        b_enc: zeros.clone(),
        b_dec: zeros,
        architecture: Architecture::Relu,
        hook_name: format!("blocks.{PLANTED_LAYER}.mlp.hook_post"),
        d_in: 64,
        d_sae: 64,
        model: None,
        apply_b_dec_to_input: true,
    };
    let opts = DiscoverOptions {
        units: UnitOptions { mlp: Layers::None, heads: Layers::None, ..unit_options() },
        threshold: Threshold::MaxT { permutations: 500, family_alpha: 0.05 },
        validation: ValidationOptions { random_sets: 5, bootstrap: 500, ..Default::default() },
        screening: ScreeningOptions { enabled: true, top: 4 },
        batch_size: 32,
        seed: 1,
        ..Default::default()
    };
    let r = discover(&model, &pairs, &split, &opts, Some(&sae)).unwrap();
    let found: Vec<usize> = r.specialisation.tail_units.iter().map(|&k| r.specialisation.stats[k].unit.index).collect();
    let mut sorted = found.clone();
    sorted.sort();
    assert_eq!(sorted, PLANTED.to_vec(), "SAE latents found {found:?}");
    assert!(r.specialisation.stats.iter().all(|s| s.unit.kind == UnitKind::SaeLatent));
    // Ablating the latents (the SAE's error kept) equals ablating the neurons themselves.
    let c = r.circuits.iter().find(|c| c.units.len() == PLANTED.len()).expect("one circuit of the four latents");
    let latent_effect = c.causal.as_ref().unwrap().tail.delta_margin.mean.unwrap();
    let neurons: Vec<_> = c
        .units
        .iter()
        .map(|u| reward_lens_cart::discover::CircuitUnit { unit: Unit::mlp(PLANTED_LAYER, u.unit.index), ..u.clone() })
        .collect();
    let clean = pair_margins(&model, &pairs, &split.tail, &[], Positions::Pooled, None, 16).unwrap();
    let abl = pair_margins(&model, &pairs, &split.tail, &neurons, Positions::Pooled, None, 16).unwrap();
    let neuron_effect = abl.iter().zip(&clean).map(|(a, c)| a - c).sum::<f64>() / clean.len() as f64;
    assert!((latent_effect - neuron_effect).abs() < 1e-3 * neuron_effect.abs(), "{latent_effect} vs {neuron_effect}");
    let s = r.screening.as_ref().unwrap();
    assert!(s.screened.iter().all(|u| u.tail_specialised), "{s:?}");

    // Averaged over the response tokens the planted neurons still stand out (R is one of them).
    let opts = DiscoverOptions {
        units: UnitOptions { mlp: Layers::List(vec![PLANTED_LAYER]), position: Positions::Response, ..opts.units },
        validation: ValidationOptions { enabled: false, ..Default::default() },
        screening: ScreeningOptions { enabled: false, top: 0 },
        ..opts
    };
    let r = discover(&model, &pairs, &split, &opts, None).unwrap();
    let (precision, recall, _) = precision_recall(&r);
    eprintln!("response-mean read: precision {precision:.3} recall {recall:.3}");
    assert!(precision >= 0.8 && recall >= 0.8);
}

#[test]
fn vulnerability_and_bound_of_the_planted_circuit() {
    let model = planted_model();
    let (pairs, split) = planted_pairs(1);
    let opts = DiscoverOptions {
        units: UnitOptions { mlp: Layers::List(vec![PLANTED_LAYER]), heads: Layers::None, ..unit_options() },
        threshold: Threshold::MaxT { permutations: 200, family_alpha: 0.05 },
        validation: ValidationOptions { random_sets: 5, bootstrap: 300, ..Default::default() },
        screening: ScreeningOptions { enabled: false, top: 0 },
        batch_size: 32,
        seed: 3,
        ..Default::default()
    };
    let r = discover(&model, &pairs, &split, &opts, None).unwrap();
    assert_eq!(r.circuits.len(), 1);
    // Label-preserving perturbations at the token level: one prompt token swapped (R stays last).
    let tail: Vec<EncodedPair> = split.tail.iter().map(|&i| pairs[i].clone()).collect();
    let mut rng = Rng::new(4);
    let perturbed: Vec<Vec<EncodedPair>> = tail
        .iter()
        .map(|p| {
            (0..3)
                .map(|_| {
                    let mut q = p.clone();
                    let at = 1 + (rng.next_u64() % (p.response_start.0 as u64 - 1)) as usize;
                    let t = 3 + (rng.next_u64() % 60) as u32;
                    q.chosen[at] = t;
                    q.rejected[at] = t;
                    q
                })
                .collect()
        })
        .collect();
    let inputs = VulnerabilityInputs { tail: &tail, perturbed: &perturbed, train: &pairs, train_split: &split };
    let v = assess(&model, &r, &inputs, &VulnerabilityOptions::default(), None).unwrap();
    let c = &v.circuits[0];
    eprintln!(
        "vulnerability: consistency {:?} (W {:.4}, B {:.4}), cosine {:?}, sensitivity ablation {:.3} gradient {:.4} \
         perturbation {:?}, coverage {:.3} (> {:.4}), V {}",
        c.consistency,
        c.within_variance,
        c.between_variance,
        c.activation_cosine,
        c.sensitivity_ablation,
        c.sensitivity_gradient,
        c.sensitivity_perturbation,
        c.coverage,
        c.coverage_threshold,
        c.score
    );
    assert_eq!(v.n_perturbed, 3 * tail.len());
    // Every training tail pair drives the circuit past the head's 95th percentile.
    assert_eq!((c.coverage, c.covered, c.n_train_tail), (1.0, 30, 30));
    // The circuit carries the tail reward: ablating it removes most of the tail margin.
    assert!(c.mean_margin_contribution > 0.8 * r.clean_tail.mean_margin, "{c:?}");
    assert!(c.sensitivity_ablation > 1.0 && c.sensitivity_gradient > 0.0);
    assert!(c.activation_cosine.unwrap() > 0.95);
    assert!(c.consistency.unwrap() > 0.0 && c.consistency.unwrap() <= 1.0);
    assert!(c.vulnerable && c.score == 3.0, "one circuit: every rank is 1");
    // Shares and quantiles outside [0, 1] (NaN included) are refused, not clamped into a flag.
    for (q, s) in [(f64::NAN, 0.2), (0.95, f64::NAN), (0.95, 1.5)] {
        let o = VulnerabilityOptions { coverage_quantile: q, vulnerable_share: s, ..Default::default() };
        let e = assess(&model, &r, &inputs, &o, None).expect_err("refused").to_string();
        assert!(e.contains("must lie in [0, 1]"), "{e}");
    }

    let b = bound_report(&model, &r, &pairs, &split, &pairs, &split, &BoundOptions::default(), None).unwrap();
    eprintln!(
        "bound: |C_tail| {} (validated {:?}), N_tail {}, N_head {}, complexity {:.4} (sqrt form {:.4}), \
         L_tail − L_head {:.4}, Div smd {:?} mmd² {:?} 1−CKA {:?}",
        b.c_tail,
        b.c_tail_validated,
        b.n_tail,
        b.n_head,
        b.complexity_term,
        b.complexity_term_sqrt_form,
        b.l_gap,
        b.divergence.standardised_mean_distance,
        b.divergence.linear_mmd2,
        b.divergence.one_minus_cka
    );
    assert_eq!((b.c_tail, b.n_tail, b.n_head), (1, 30, 90));
    assert!((b.complexity_term - 20f64.ln() / 30f64.sqrt()).abs() < 1e-12);
    assert!((b.l_tail - r.clean_tail.mean_loss).abs() < 1e-4 && (b.l_head - r.clean_head.mean_loss).abs() < 1e-4);
    assert!(b.l_gap < 0.0, "the planted tail is easy for this model");
    assert!(b.divergence.standardised_mean_distance.unwrap() > 10.0);
    assert!(b.divergence.linear_mmd2.unwrap() > 0.0);
}

#[test]
fn perturbed_text_pairs_keep_the_label() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama");
    let model = RewardModel::load(&dir, &LoadOptions::default()).unwrap();
    let kinds = [PerturbKind::Whitespace, PerturbKind::Casing, PerturbKind::Markdown, PerturbKind::Synonym];
    let out = perturbed_pairs(
        "Give me a simple answer.",
        "It is a simple plan.",
        "It is hard.",
        &kinds,
        5,
        model_encoder(&model),
    )
    .unwrap();
    // Synonym changes only the chosen response (nothing to swap in "It is hard."), the rest both.
    assert_eq!(out.len(), 4);
    let plain = model.encode("Give me a simple answer.", "It is a simple plan.", Default::default()).unwrap();
    for p in &out {
        assert_eq!(&p.chosen[..plain.response_start], &plain.ids[..plain.response_start], "same prompt");
        assert_ne!(p.chosen, plain.ids);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let model = planted_model();
    let (pairs, split) = planted_pairs(1);
    let none = HeadTailSplit::from_labels(&[false; 4], SplitRule::Labels { description: "x".into() });
    assert!(none.unwrap_err().to_string().contains("tail is empty"));
    let wide = split_random(200, 30, 1).unwrap();
    let e = discover(&model, &pairs, &wide, &full_options(), None).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    let e = extract(&model, &pairs, &[Unit::mlp(5, 0)], Positions::Pooled, None, 8).unwrap_err().to_string();
    assert!(e.contains("mlp.5.0"), "{e}");
    let e = extract(&model, &pairs, &[Unit::sae("blocks.0.hook_resid_post", 0)], Positions::Pooled, None, 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no SAE"), "{e}");
    let mut late = pairs.clone();
    late[3].response_start = (99, 99);
    let e = extract(&model, &late, &[Unit::mlp(0, 0)], Positions::Response, None, 8).unwrap_err().to_string();
    assert!(e.contains("response_start 99"), "{e}");
    let few = DiscoverOptions { threshold: Threshold::MaxT { permutations: 5, family_alpha: 0.05 }, ..full_options() };
    let e = discover(&model, &pairs, &split, &few, None).unwrap_err().to_string();
    assert!(e.contains("at least 19 permutations"), "{e}");
    let opts = DiscoverOptions {
        units: UnitOptions { mlp: Layers::None, heads: Layers::None, ..unit_options() },
        ..full_options()
    };
    assert!(discover(&model, &pairs, &split, &opts, None).unwrap_err().to_string().contains("no candidate units"));
    for r in [f64::NAN, 1.5] {
        let mut opts = full_options();
        opts.coherence.min_correlation = r;
        let e = discover(&model, &pairs, &split, &opts, None).unwrap_err().to_string();
        assert!(e.contains("min_correlation must be a correlation in [-1, 1]"), "{e}");
    }
}

#[test]
fn scenario_representations_read_the_right_tokens() {
    use reward_lens_cart::headtail::{
        scenario_representations, split_by_scenario, Representation, ScenarioOptions, ScenarioView,
    };
    use reward_lens_engine::{Hooks, PaddingSide};
    let model = planted_model();
    let (pairs, _) = planted_pairs(3);
    let pairs = &pairs[..12];
    let read = |ids: &[u32], site: &str| -> Vec<f32> {
        let b = model.batch(&[ids.to_vec()], PaddingSide::Right).unwrap();
        let f = model.forward(&b, &Hooks::cache(&[site])).unwrap();
        f.cache.require(site).unwrap().get(0).unwrap().get(ids.len() - 1).unwrap().to_vec1().unwrap()
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
    // The prompt view equals a run of the prompt alone (causal attention), at a chosen layer.
    let opts = ScenarioOptions {
        view: ScenarioView::Prompt,
        representation: Representation::ResidPost(0),
        k: 3,
        alpha: 0.75,
        batch_size: 5,
        ..Default::default()
    };
    let reps = scenario_representations(&model, pairs, &opts).unwrap();
    for (p, r) in pairs.iter().zip(&reps) {
        assert!(close(r, &read(&p.chosen[..p.response_start.0], "blocks.0.hook_resid_post")));
    }
    // The pair view is the mean of the two pooled final-norm reads.
    let opts = ScenarioOptions { view: ScenarioView::Pair, representation: Representation::FinalNorm, ..opts };
    let reps = scenario_representations(&model, pairs, &opts).unwrap();
    let (c, r) =
        (read(&pairs[4].chosen, "ln_final.hook_normalized"), read(&pairs[4].rejected, "ln_final.hook_normalized"));
    let want: Vec<f32> = c.iter().zip(&r).map(|(a, b)| 0.5 * (a + b)).collect();
    assert!(close(&reps[4], &want));
    let s = split_by_scenario(&reps, &opts).unwrap();
    match &s.rule {
        SplitRule::ScenarioFrequency { k, cluster_sizes, tail_clusters, representation, .. } => {
            assert_eq!((*k, cluster_sizes.iter().sum::<usize>()), (3, 12));
            assert_eq!(tail_clusters.iter().map(|&c| cluster_sizes[c]).sum::<usize>(), s.n_tail);
            assert!(s.n_tail <= 3 && representation == "ln_final.hook_normalized");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_ablation_oracle_finds_planted_neurons_and_scores_discovery() {
    use reward_lens_cart::oracle::{oracle, OracleOptions};
    let model = planted_model();
    let (pairs, split) = planted_pairs(3);
    let opts = OracleOptions { head_sample: 0, candidates: 12, max_size: 8, batch_size: 32, ..Default::default() };
    let o = oracle(&model, &pairs, &split, &opts, &mut |_| {}).unwrap();
    // Ground truth from ablation alone: a set of planted neurons whose ablation takes the tail to
    // chance and leaves the head as it was.
    assert!(o.found, "{}", o.summary());
    assert!(!o.circuit.units.is_empty() && o.circuit.units.iter().all(|u| is_planted(&u.unit)), "{}", o.summary());
    assert!(o.circuit.tail.accuracy <= o.chance_ceiling && o.clean_tail.accuracy >= 0.9);
    assert!(o.clean_head.accuracy - o.circuit.head.accuracy <= 0.02);
    assert!(o.atp_spearman.unwrap() > 0.3, "AtP vs exact over every unit: {:?}", o.atp_spearman);
    // Same seed, same bytes.
    let again = oracle(&model, &pairs, &split, &opts, &mut |_| {}).unwrap();
    assert_eq!(serde_json::to_string(&o).unwrap(), serde_json::to_string(&again).unwrap());
    // Discovery scored against it: every oracle unit is found.
    let mut r = discover(&model, &pairs, &split, &full_options(), None).unwrap();
    r.compare_with(&o).unwrap();
    let c = r.oracle.as_ref().unwrap();
    assert_eq!(c.recall, Some(1.0), "{c:?}");
    assert!(c.precision.unwrap() >= 0.25, "{c:?}");
    let other = HeadTailSplit::from_labels(&[true, false], SplitRule::Labels { description: "x".into() }).unwrap();
    r.split = other;
    assert!(r.compare_with(&o).unwrap_err().to_string().contains("same pairs"));
}
