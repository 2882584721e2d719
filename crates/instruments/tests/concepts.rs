//! Concept vectors and steering: reward-lens 1.0's steering numbers, orientation and slope sign on
//! constructed cases, and the alignment statistics.

mod common;
use common::*;

use reward_lens_engine::Positions;
use reward_lens_engine::{RewardModel, Truncation};
use reward_lens_instruments::concepts::{concepts, cosine, steer, ConceptInput, ConceptOptions};
use serde_json::Value;

fn enc(model: &RewardModel, p: &str, r: &str) -> Vec<u32> {
    model.encode(p, r, Truncation::Error).unwrap().ids
}

#[test]
fn v1_steering_and_alignment_match_the_peer() {
    for name in ["llama", "mistral"] {
        let model = load(name);
        let peer = json(fixtures().join(format!("expected/{name}/peer/concepts.json")))["result"].clone();
        let pair0: Value = serde_json::from_str(
            std::fs::read_to_string(fixtures().join("pairs.jsonl")).unwrap().lines().next().unwrap(),
        )
        .unwrap();
        let ids = enc(&model, pair0["prompt"].as_str().unwrap(), pair0["chosen"].as_str().unwrap());
        let (w, _) = model.head.linear_direction().unwrap().unwrap();
        let w: Vec<f64> = w.to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
        for (concept, a) in peer["quick_concept_analysis_alignments"].as_object().unwrap() {
            let v = f64s(&peer["vectors_final_layer"][concept]);
            assert!((cosine(&v, &w) - a.as_f64().unwrap()).abs() < 1e-5, "{name} {concept}: alignment");
        }
        for iv in peer["interventions_pair0_chosen"].as_array().unwrap() {
            let concept = iv["concept"].as_str().unwrap();
            let layer = iv["layer"].as_u64().unwrap() as usize;
            let v = f64s(&peer["vectors_final_layer"][concept]);
            let s = iv["strength"].as_f64().unwrap();
            let dr = steer(&model, std::slice::from_ref(&ids), &v, Some(layer), &[s], Positions::Pooled, 4).unwrap();
            let want = iv["delta"].as_f64().unwrap();
            assert!(
                (dr.deltas[0][0] - want).abs() < 1e-4,
                "{name} {concept} layer {layer} strength {s}: {} vs {want}",
                dr.deltas[0][0]
            );
        }
    }
}

/// A constructed behaviour: answers that end in a burst of exclamation marks.
fn exclaim_pairs(model: &RewardModel, flip: bool) -> Vec<(Vec<u32>, Vec<u32>)> {
    let items = [
        ("How do I boil an egg?", "Simmer it for nine minutes"),
        ("What is the capital of Canada?", "The capital of Canada is Ottawa"),
        ("Give me a tip for sleeping better.", "Keep a fixed wake-up time every day"),
        ("Name two planets.", "Two planets are Mars and Venus"),
        ("How many legs does a spider have?", "A spider has eight legs"),
        ("What colour is the sky on a clear day?", "It is blue"),
        ("What is water made of?", "Water is hydrogen and oxygen"),
        ("How long is a marathon?", "A marathon is about forty-two kilometres"),
    ];
    items
        .iter()
        .map(|(p, r)| {
            let pos = enc(model, p, &format!("{r}!!! Wow!!!"));
            let neg = enc(model, p, &format!("{r}."));
            if flip {
                (neg, pos)
            } else {
                (pos, neg)
            }
        })
        .collect()
}

#[test]
fn orientation_follows_the_name() {
    let model = load("qwen3");
    let opts = ConceptOptions { batch_size: 8, ..Default::default() };
    let up =
        concepts(&model, &[ConceptInput { name: "exclamation".into(), pairs: exclaim_pairs(&model, false) }], &opts)
            .unwrap();
    let down =
        concepts(&model, &[ConceptInput { name: "calm".into(), pairs: exclaim_pairs(&model, true) }], &opts).unwrap();
    let (u, d) = (&up.concepts[0], &down.concepts[0]);
    // Swapping positive and negative flips the vector and the alignment.
    assert!((cosine(&u.vector, &d.vector) + 1.0).abs() < 1e-9);
    assert!((u.alignment + d.alignment).abs() < 1e-9);
    assert!((u.mean_reward_shift + d.mean_reward_shift).abs() < 1e-6);
    // Every pair's own difference points the named way.
    assert_eq!(u.consistency, 1.0, "consistency {}", u.consistency);
    assert!((u.vector.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-9);
    let p = u.p_value.unwrap();
    assert!((0.0..=1.0).contains(&p));
    // The shift test is the sign-flip test of the per-pair reward shifts, one forward per text.
    let pairs = exclaim_pairs(&model, false);
    let score = |ids: &Vec<u32>| {
        let b = model.batch(std::slice::from_ref(ids), reward_lens_engine::PaddingSide::Right).unwrap();
        model.score(&b).unwrap().scores[0] as f64
    };
    let shifts: Vec<f64> = pairs.iter().map(|(a, b)| score(a) - score(b)).collect();
    let want = reward_lens_instruments::stats::sign_flip_p(&shifts, 10_000, 0).unwrap();
    assert!((u.shift_p_value.unwrap() - want).abs() < 1e-12, "{:?} vs {want}", u.shift_p_value);
    let want_d = reward_lens_instruments::stats::cohens_d(&shifts).unwrap();
    assert!((u.shift_cohens_d.unwrap() - want_d).abs() < 1e-4 * want_d.abs().max(1.0));
    // Swapping positive and negative: the same p, the opposite d.
    assert_eq!(u.shift_p_value, d.shift_p_value);
    assert!((u.shift_cohens_d.unwrap() + d.shift_cohens_d.unwrap()).abs() < 1e-9);
    assert!((up.similarity[0][0] - 1.0).abs() < 1e-12);
    // Pairs without a difference have no direction: an error, not "alignment 0, p = 1".
    let same: Vec<(Vec<u32>, Vec<u32>)> =
        exclaim_pairs(&model, false).into_iter().map(|(p, _)| (p.clone(), p)).collect();
    let e = concepts(&model, &[ConceptInput { name: "same".into(), pairs: same }], &opts).unwrap_err().to_string();
    assert!(e.contains("concept `same`") && e.contains("no direction"), "{e}");
}

#[test]
fn steering_along_the_readout_raises_the_reward() {
    for name in ["llama", "gemma2", "gpt2"] {
        let model = load(name);
        let ids = vec![
            enc(&model, "How do I boil an egg?", "Simmer it for nine minutes."),
            enc(&model, "Name two planets.", "Two planets are Mars and Venus."),
        ];
        // The reference direction itself, from a concept report's machinery: w_r ⊙ γ.
        let (w, _) = model.head.linear_direction().unwrap().unwrap();
        let gamma = model.final_norm().unwrap().gamma;
        let mut u: Vec<f64> = (w * gamma).unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
        if model.final_norm().unwrap().centred {
            let m = u.iter().sum::<f64>() / u.len() as f64;
            u.iter_mut().for_each(|x| *x -= m);
        }
        let strengths = [-0.2, -0.1, 0.0, 0.1, 0.2];
        let up = steer(&model, &ids, &u, None, &strengths, Positions::Pooled, 16).unwrap();
        let neg: Vec<f64> = u.iter().map(|x| -x).collect();
        let down = steer(&model, &ids, &neg, None, &strengths, Positions::All, 16).unwrap();
        assert!(up.slope.unwrap() > 0.0, "{name}: slope {:?}", up.slope);
        assert!(down.slope.unwrap() < 0.0, "{name}: slope {:?}", down.slope);
        assert_eq!(up.mean_delta[2], 0.0, "strength 0 changes nothing");
        assert!(up.mean_delta.windows(2).all(|w| w[1] > w[0]), "{name}: monotone {:?}", up.mean_delta);
    }
}

/// Steering equals one full forward pass per (input, strength) with the vector added at the
/// layer's output by a hook: on every fixture architecture, at the first, a middle and the last
/// layer, at the pooled position and at every position, with inputs of spread lengths.
#[test]
fn steering_equals_one_hooked_forward_per_input_and_strength() {
    use reward_lens_engine::{Action, Hooks, Intervention, PaddingSide, Site, Tensor};
    let texts = [
        ("Hi", "Hello there, how can I help you today with anything at all?"),
        ("What is 2+2?", "4"),
        ("Name a colour.", "Blue, like the sky on a clear summer afternoon."),
        ("Say yes.", "Yes."),
        ("Tell me a fact.", "Octopuses have three hearts and blue blood."),
    ];
    let strengths = [-3.0, 0.0, 0.5, 2.0];
    for name in ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt2", "armorm"] {
        let model = load(name);
        let n = model.config.n_layers;
        let d = model.config.d_model;
        let seqs: Vec<Vec<u32>> = texts.iter().map(|(p, r)| enc(&model, p, r)).collect();
        let v: Vec<f64> = (0..d).map(|j| ((j * 7 % 11) as f64 - 5.0) / 5.0).collect();
        for layer in [0, n / 2, n - 1] {
            for positions in [Positions::Pooled, Positions::All] {
                let dr = steer(&model, &seqs, &v, Some(layer), &strengths, positions, 2).unwrap();
                for (i, ids) in seqs.iter().enumerate() {
                    let batch = model.batch(std::slice::from_ref(ids), PaddingSide::Right).unwrap();
                    let t = ids.len();
                    let base = model.score(&batch).unwrap().scores[0] as f64;
                    assert!((dr.baseline[i] - base).abs() <= 1e-5 * base.abs().max(1.0), "{name} baseline {i}");
                    for (s, &strength) in strengths.iter().enumerate() {
                        let mut delta = vec![0f32; t * d];
                        let at: Vec<usize> =
                            if positions == Positions::Pooled { vec![t - 1] } else { (0..t).collect() };
                        for p in at {
                            for j in 0..d {
                                delta[p * d + j] = (strength * v[j]) as f32;
                            }
                        }
                        let delta = Tensor::from_vec(delta, (1, t, d), &model.device).unwrap();
                        let hooks = Hooks::none().with(Intervention::new(Site::ResidPost(layer), Action::Add(delta)));
                        let steered = model.forward(&batch, &hooks).unwrap().output.scores[0] as f64;
                        let want = steered - base;
                        let got = dr.deltas[s][i];
                        assert!(
                            (got - want).abs() <= 1e-5 * steered.abs().max(1.0),
                            "{name} layer {layer} {positions:?} input {i} strength {strength}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
