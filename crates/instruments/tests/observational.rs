//! The lens and attribution against ground truth: the fixtures' exact decomposition (computed
//! from transformers' tensors), the peer's v1 outputs, and the identities that must hold.

mod common;
use common::*;

use reward_lens_engine::{EncodedPair, PairText, RewardModel, Truncation};
use reward_lens_instruments::attribution::{attribute, AttributionOptions, ComponentKind, RankBy};
use reward_lens_instruments::lens::{lens, LensKind, LensOptions};

const MODELS: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt2", "armorm"];

fn pairs(model: &RewardModel) -> Vec<EncodedPair> {
    let texts: Vec<PairText> = std::fs::read_to_string(fixtures().join("pairs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    model.encode_pairs(&texts, Truncation::Error).unwrap()
}

#[test]
fn last_lens_point_is_the_reward_and_contributions_add_up() {
    for name in MODELS {
        let model = load(name);
        let pairs = pairs(&model);
        let rep = lens(&model, &pairs, &LensOptions::default()).unwrap();
        let att = attribute(&model, &pairs, &AttributionOptions::default()).unwrap();
        let heads = attribute(&model, &pairs, &AttributionOptions { heads: true, ..Default::default() }).unwrap();
        for (p, (a, h)) in rep.pairs.iter().zip(att.pairs.iter().zip(&heads.pairs)) {
            for (curves, side, hside) in [(&p.chosen, &a.chosen, &h.chosen), (&p.rejected, &a.rejected, &h.rejected)] {
                let r = curves.reward;
                assert!((curves.normed.last().unwrap() - r).abs() < 1e-4, "{name}: normed lens end vs reward");
                assert!((curves.frozen.last().unwrap() - r).abs() < 1e-4, "{name}: frozen lens end vs reward");
                assert!(side.residual.abs() < 1e-5, "{name}: Σ c + b − r = {}", side.residual);
                assert!(hside.residual.abs() < 1e-5, "{name} heads: Σ c + b − r = {}", hside.residual);
                // Frozen-lens steps are the layers' contributions.
                for l in 0..model.config.n_layers {
                    let step = curves.frozen[l + 1] - curves.frozen[l];
                    let comps: f64 = att
                        .components
                        .iter()
                        .zip(&side.contributions)
                        .filter(|(c, _)| c.layer == Some(l))
                        .map(|(_, v)| v)
                        .sum();
                    assert!((step - comps).abs() < 1e-5, "{name}: layer {l} step {step} vs {comps}");
                    // Heads (plus o_proj bias) add up to the attention sublayer.
                    let attn =
                        side.contributions[att.components.iter().position(|c| c.name == format!("attn.{l}")).unwrap()];
                    let hs: f64 = heads
                        .components
                        .iter()
                        .zip(&hside.contributions)
                        .filter(|(c, _)| {
                            c.layer == Some(l) && matches!(c.kind, ComponentKind::Head | ComponentKind::AttnBias)
                        })
                        .map(|(_, v)| v)
                        .sum();
                    assert!((attn - hs).abs() < 1e-5, "{name}: layer {l} heads {hs} vs attention {attn}");
                }
            }
        }
    }
}

#[test]
fn contributions_match_the_fixture_decomposition() {
    for name in MODELS {
        let model = load(name);
        let att = attribute(&model, &pairs(&model), &AttributionOptions::default()).unwrap();
        let exp = json(fixtures().join("expected").join(name).join("decomposition.json"));
        let mut worst = 0f64;
        for (p, e) in att.pairs.iter().zip(exp["pairs"].as_array().unwrap()) {
            for (side, es) in [(&p.chosen, &e["chosen"]), (&p.rejected, &e["rejected"])] {
                let want = f64s(&es["contributions"]);
                let mut got = side.contributions.clone();
                if *name == "gpt2" {
                    // The fixture's first entry is token + position; it also gives the split.
                    let split = &es["embed_split"];
                    worst = worst.max((got[0] - split["embed_tok"].as_f64().unwrap()).abs());
                    worst = worst.max((got[1] - split["embed_pos"].as_f64().unwrap()).abs());
                    let pos = got.remove(1);
                    got[0] += pos;
                }
                assert_eq!(got.len(), want.len(), "{name}");
                for (g, w) in got.iter().zip(&want) {
                    worst = worst.max((g - w).abs());
                }
                assert!((side.bias - es["bias"].as_f64().unwrap()).abs() < 1e-5, "{name}: bias");
            }
        }
        assert!(worst < 1e-4, "{name}: worst contribution difference {worst}");
    }
}

#[test]
fn v1_compat_matches_the_peer() {
    for name in ["llama", "mistral"] {
        let model = load(name);
        let pairs = pairs(&model);
        let peer = json(fixtures().join(format!("expected/{name}/peer/lens.json")));
        let rep = lens(&model, &pairs, &LensOptions { v1_compat: true, ..Default::default() }).unwrap();
        assert_eq!(rep.kind, LensKind::Raw);
        for (p, e) in rep.pairs.iter().zip(peer["result"]["pairs"].as_array().unwrap()) {
            for (got, key) in [
                (&p.chosen.raw, "reward_lens_preferred"),
                (&p.rejected.raw, "reward_lens_dispreferred"),
                (&p.differential, "differential"),
                (&p.marginal, "marginal_contributions"),
            ] {
                let want = f64s(&e[key]);
                let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(d < 1e-4, "{name} pair {}: {key} differs by {d}", p.pair);
            }
            assert_eq!(p.crystallization_layer, e["crystallization_layer"].as_i64(), "{name} pair {}", p.pair);
        }
        let peer = json(fixtures().join(format!("expected/{name}/peer/attribution.json")));
        let att = attribute(&model, &pairs, &AttributionOptions { v1_compat: true, ..Default::default() }).unwrap();
        let names: Vec<&str> = att.components.iter().map(|c| c.name.as_str()).collect();
        for (i, (p, e)) in att.pairs.iter().zip(peer["result"]["pairs"].as_array().unwrap()).enumerate() {
            let want_names: Vec<&str> =
                e["component_names"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
            assert_eq!(names, want_names);
            for (got, key) in [
                (&p.chosen.contributions, "contributions_preferred"),
                (&p.rejected.contributions, "contributions_dispreferred"),
                (&p.differential, "differential_contributions"),
            ] {
                let d = got.iter().zip(&f64s(&e[key])).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(d < 1e-4, "{name} pair {i}: {key} differs by {d}");
            }
            // v1's own identity gap (its lens end minus the reward) is reproduced too.
            let gap = e["sum_contrib_plus_bias_minus_reward_preferred"].as_f64().unwrap();
            assert!((p.chosen.residual - gap).abs() < 1e-4, "{name} pair {i}: v1 gap");
            let top: Vec<String> = att.top_k(Some(i), 5, RankBy::Differential).into_iter().map(|x| x.0).collect();
            let want_top: Vec<String> =
                e["top5"].as_array().unwrap().iter().map(|x| x[0].as_str().unwrap().to_string()).collect();
            assert_eq!(top, want_top, "{name} pair {i}: top 5");
        }
    }
}

#[test]
fn batching_does_not_change_the_instruments() {
    let model = load("gemma2");
    let pairs = pairs(&model);
    let one =
        attribute(&model, &pairs, &AttributionOptions { batch_size: 1, heads: true, ..Default::default() }).unwrap();
    let many =
        attribute(&model, &pairs, &AttributionOptions { batch_size: 40, heads: true, ..Default::default() }).unwrap();
    for (a, b) in one.pairs.iter().zip(&many.pairs) {
        let d = a.differential.iter().zip(&b.differential).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(d < 1e-5, "batched vs single: {d}");
    }
    // The mean over pairs has an interval around it.
    for m in &many.mean_differential {
        assert!(m.ci_low.unwrap() <= m.mean.unwrap() && m.mean.unwrap() <= m.ci_high.unwrap());
    }
}

#[test]
fn comparing_models() {
    use reward_lens_instruments::compare::{compare, CompareInput};
    let (llama, mistral, gpt2) = (load("llama"), load("mistral"), load("gpt2"));
    let inputs = vec![
        CompareInput { name: "llama".into(), model: &llama, pairs: pairs(&llama) },
        CompareInput { name: "llama-again".into(), model: &llama, pairs: pairs(&llama) },
        CompareInput { name: "mistral".into(), model: &mistral, pairs: pairs(&mistral) },
        CompareInput { name: "gpt2".into(), model: &gpt2, pairs: pairs(&gpt2) },
    ];
    let rep = compare(&inputs, LensKind::Normed, 16, 0).unwrap();
    assert_eq!(rep.pairwise.len(), 6);
    let same = &rep.pairwise[0];
    for v in
        [same.formation_correlation, same.margin_spearman, same.component_spearman, same.w_r_cosine, same.linear_cka]
    {
        assert!((v.unwrap() - 1.0).abs() < 1e-6, "a model against itself: {v:?}");
    }
    assert_eq!(same.margin_sign_agreement, 1.0);
    let lm = rep.pairwise.iter().find(|p| p.a == "llama" && p.b == "mistral").unwrap();
    assert!(lm.component_spearman.is_some(), "same components");
    assert!(lm.linear_cka.unwrap() > 0.0 && lm.linear_cka.unwrap() < 1.0);
    let lg = rep.pairwise.iter().find(|p| p.a == "llama" && p.b == "gpt2").unwrap();
    assert!(lg.component_spearman.is_none(), "GPT-2 has pos_embed: components differ");
    assert!(lg.w_r_cosine.is_some(), "same d_model");
    let acc = rep.models[0].margins.iter().filter(|m| **m > 0.0).count() as f64 / 20.0;
    assert_eq!(rep.models[0].accuracy, acc);
    let f = rep.models[0].crystallization_fraction.mean.unwrap();
    assert!((0.0..=1.0).contains(&f));
}

#[test]
fn neurons_add_up_to_their_mlp() {
    for name in ["llama", "gemma2", "gpt2"] {
        let model = load(name);
        let pairs = pairs(&model);
        let ff = model.config.d_mlp;
        // All neurons of every layer, on the first pair alone.
        let all = attribute(&model, &pairs[..1], &AttributionOptions { neurons: ff, ..Default::default() }).unwrap();
        let p = &all.pairs[0];
        for l in 0..model.config.n_layers {
            let mlp = all.components.iter().position(|c| c.name == format!("mlp.{l}")).unwrap();
            let sum: f64 = all.top_neurons.iter().filter(|n| n.layer == l).map(|n| n.mean_chosen).sum();
            // down_proj's bias (GPT-2) is read along the same direction (no output norm there).
            let bias_term = match model.down_proj(l).unwrap().bias {
                Some(b) => {
                    let ids: Vec<Vec<u32>> = vec![pairs[0].chosen.clone()];
                    let tr = reward_lens_instruments::trace::trace(&model, &ids, 1, Default::default()).unwrap();
                    let ro = reward_lens_instruments::readout::ReadOut::new(&model, &tr[0]).unwrap();
                    ro.contribution(&b.to_vec1::<f32>().unwrap())
                }
                None => 0.0,
            };
            let want = p.chosen.contributions[mlp];
            assert!(
                (sum + bias_term - want).abs() < 1e-5,
                "{name} layer {l}: neurons {sum} + bias {bias_term} vs {want}"
            );
        }
        let top = attribute(&model, &pairs, &AttributionOptions { neurons: 3, ..Default::default() }).unwrap();
        assert_eq!(top.top_neurons.len(), 3 * model.config.n_layers);
        let l0: Vec<f64> = top.top_neurons.iter().filter(|n| n.layer == 0).map(|n| n.mean_differential.abs()).collect();
        assert!(l0.windows(2).all(|w| w[0] >= w[1]), "sorted by |mean differential|");
        // Neurons ride beside the partition: the identity is untouched.
        assert!(top.pairs.iter().all(|p| p.chosen.residual.abs() < 1e-5));
    }
}

#[test]
fn sae_decomposition_adds_up_to_the_reward() {
    use reward_lens_engine::synth::Rng;
    use reward_lens_engine::{Device, Tensor};
    use reward_lens_instruments::sae::{decompose, Architecture, Sae};
    for name in ["llama", "gemma2", "gpt2", "armorm"] {
        let model = load(name);
        let d = model.config.d_model;
        let mut rng = Rng::new(2);
        let mut randn = |r: usize, c: usize, s: f64| {
            Tensor::from_vec((0..r * c).map(|_| (s * rng.normal()) as f32).collect::<Vec<_>>(), (r, c), &Device::Cpu)
                .unwrap()
        };
        for hook in [
            "blocks.1.hook_resid_post",
            "blocks.0.hook_mlp_out",
            &format!("blocks.{}.hook_resid_post", model.config.n_layers - 1),
        ] {
            let sae = Sae {
                w_enc: randn(d, 256, 0.2),
                w_dec: randn(256, d, 0.2),
                b_enc: randn(1, 256, 0.1).squeeze(0).unwrap(),
                b_dec: randn(1, d, 0.1).squeeze(0).unwrap(),
                architecture: Architecture::TopK { k: 16 },
                hook_name: hook.to_string(),
                d_in: d,
                d_sae: 256,
                model: None,
                apply_b_dec_to_input: true,
            };
            let seqs: Vec<Vec<u32>> = pairs(&model)[..3].iter().map(|p| p.chosen.clone()).collect();
            for dec in decompose(&model, &sae, &seqs, 5).unwrap() {
                assert!(dec.residual.abs() < 1e-4, "{name} {hook}: terms miss the reward by {}", dec.residual);
                assert!(dec.latents.len() <= 5);
                assert!(dec.reconstruction_error.abs() > 0.0, "a random SAE reconstructs imperfectly");
            }
        }
    }
}

#[test]
fn activation_collection_is_sharded_and_resumes() {
    use reward_lens_engine::Positions;
    use reward_lens_instruments::collect::{collect, load_all, CollectOptions};
    let opts = |site: &str, positions, resume| CollectOptions {
        site: site.into(),
        positions,
        shard_rows: 40,
        resume,
        model: "m".into(),
    };
    let model = load("qwen2");
    let seqs: Vec<(Vec<u32>, usize)> = pairs(&model)[..6].iter().map(|p| (p.chosen.clone(), 12)).collect();
    let base = std::env::temp_dir().join(format!("rl-collect-{}", std::process::id()));
    let (full, part) = (base.join("full"), base.join("part"));
    let _ = std::fs::remove_dir_all(&base);
    let m = collect(&model, &seqs, &full, &opts("blocks.1.hook_resid_post", Positions::Response, false), |_, _| {})
        .unwrap();
    assert!(m.shards.len() >= 2, "small shards: {}", m.shards.len());
    assert_eq!(m.sequences_done, 6);
    // "Interrupted" after three sequences, then resumed over all six.
    collect(&model, &seqs[..3], &part, &opts("blocks.1.hook_resid_post", Positions::Response, false), |_, _| {})
        .unwrap();
    let r =
        collect(&model, &seqs, &part, &opts("blocks.1.hook_resid_post", Positions::Response, true), |_, _| {}).unwrap();
    assert_eq!(r.activations, m.activations);
    let (a, b) = (load_all(&full).unwrap().1, load_all(&part).unwrap().1);
    assert_eq!(a.dims(), b.dims());
    assert_eq!(a.dims()[1], model.config.d_model);
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    // Nothing but the same site, model, positions and texts resumes this collection.
    let refused = |seqs: &[(Vec<u32>, usize)], o: CollectOptions| {
        collect(&model, seqs, &part, &o, |_, _| {}).expect_err("refused").to_string()
    };
    let e = refused(&seqs, opts("blocks.0.hook_resid_post", Positions::Response, true));
    assert!(e.contains("cannot resume: it collects `blocks.1.hook_resid_post`"), "{e}");
    let e = refused(
        &seqs,
        CollectOptions { model: "other".into(), ..opts("blocks.1.hook_resid_post", Positions::Response, true) },
    );
    assert!(e.contains("collected from another model"), "{e}");
    let e = refused(&seqs, opts("blocks.1.hook_resid_post", Positions::All, true));
    assert!(e.contains("keeps `response` positions, not `all`"), "{e}");
    let mut other = seqs.clone();
    other.swap(0, 1);
    let e = refused(&other, opts("blocks.1.hook_resid_post", Positions::Response, true));
    assert!(e.contains("its first 6 sequences are not the texts given now"), "{e}");
    let e = refused(&seqs[..2], opts("blocks.1.hook_resid_post", Positions::Response, true));
    assert!(e.contains("holds 6 sequences, more than the 2 given"), "{e}");
    assert_eq!(load_all(&part).unwrap().0.activations, m.activations, "a refused resume writes nothing");
    let _ = std::fs::remove_dir_all(&base);
}
