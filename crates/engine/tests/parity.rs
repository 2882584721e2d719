//! Parity with HuggingFace transformers on every fixture architecture (f32): token ids, pooled
//! index, scores, every layer's residual and sub-layer outputs, batching and ArmoRM's head.

mod common;
use common::*;

use reward_lens_engine::{Hooks, PaddingSide, Site, Truncation};

const TOL: f32 = 1e-4;

fn sides(pair: &serde_json::Value) -> [(&'static str, &serde_json::Value); 2] {
    [("chosen", &pair["chosen"]), ("rejected", &pair["rejected"])]
}

fn check_model(name: &str) {
    let model = load(name);
    let exp = expected(name, "forward.json");
    let pairs = pairs();
    let n_layers = model.config.n_layers;
    assert_eq!(n_layers as u64, exp["meta"]["n_layers"].as_u64().unwrap());
    let mut worst_score = 0f32;
    let mut worst_hidden = 0f32;
    for (i, ep) in exp["pairs"].as_array().unwrap().iter().enumerate() {
        let prompt = pairs[i]["prompt"].as_str().unwrap();
        for (side, e) in sides(ep) {
            let response = pairs[i][side].as_str().unwrap();
            let enc = model.encode(prompt, response, Truncation::Error).unwrap();
            assert_eq!(enc.text, e["text"].as_str().unwrap(), "{name} pair {i} {side}: rendered text");
            assert_eq!(enc.ids, u32s(&e["input_ids"]), "{name} pair {i} {side}: token ids");
            let batch = model.batch(std::slice::from_ref(&enc.ids), PaddingSide::Right).unwrap();
            let fwd = model.forward(&batch, &Hooks::cache(&["*"])).unwrap();
            let p = e["pooled_index"].as_u64().unwrap() as usize;
            assert_eq!(fwd.output.pooled_index, vec![p], "{name} pair {i} {side}: pooled index");
            let score = fwd.output.scores[0];
            let ds = (score - e["score"].as_f64().unwrap() as f32).abs();
            worst_score = worst_score.max(ds);

            let c = &fwd.cache;
            let mut check = |what: String, got: Vec<f32>, want: &serde_json::Value| {
                let d = max_abs_diff(&got, &f32s(want));
                assert!(d <= TOL, "{name} pair {i} {side}: {what} differs by {d}");
                worst_hidden = worst_hidden.max(d);
            };
            let mut embed = at(c.site(Site::Embed).unwrap(), p);
            if let Some(pe) = c.site(Site::PosEmbed) {
                check("embed_tok".into(), embed.clone(), &e["embed_tok"]);
                let pe = at(pe, p);
                check("embed_pos".into(), pe.clone(), &e["embed_pos"]);
                embed = embed.iter().zip(&pe).map(|(a, b)| a + b).collect();
            }
            check("embed_in".into(), embed, &e["embed_in"]);
            check("resid_pre.0".into(), at(c.site(Site::ResidPre(0)).unwrap(), p), &e["embed_in"]);
            for l in 0..n_layers {
                check(format!("attn_out.{l}"), at(c.site(Site::AttnOut(l)).unwrap(), p), &e["attn_out"][l]);
                check(format!("mlp_out.{l}"), at(c.site(Site::MlpOut(l)).unwrap(), p), &e["mlp_out"][l]);
                check(format!("layer_out.{l}"), at(c.site(Site::ResidPost(l)).unwrap(), p), &e["layer_out"][l]);
            }
            check("final_norm".into(), at(c.site(Site::FinalNormalized).unwrap(), p), &e["final_norm"]);
            // hook_scale is the divisor; the fixtures record its reciprocal.
            let div = at(c.site(Site::FinalScale).unwrap(), p)[0];
            let s = e["final_norm_scale"].as_f64().unwrap() as f32;
            assert!((1.0 / div - s).abs() <= 1e-4 * s.abs().max(1.0), "{name}: final norm scale {} vs {s}", 1.0 / div);

            if let Some(obj) = &fwd.output.objectives {
                assert_eq!(obj.gating_index[0] as u64, e["gating_index"].as_u64().unwrap(), "{name}: gating index");
                assert!(max_abs_diff(&obj.rewards[0], &f32s(&e["rewards"])) <= TOL, "{name}: objective rewards");
                assert!(max_abs_diff(&obj.gating[0], &f32s(&e["gating_output"])) <= TOL, "{name}: gating weights");
                let g = obj.gating_index[0];
                let pe = at(c.site(Site::FinalNormalized).unwrap(), g);
                assert!(max_abs_diff(&pe, &f32s(&e["prompt_embedding"])) <= TOL, "{name}: prompt embedding");
            }
        }
    }
    assert!(worst_score <= TOL, "{name}: worst score difference {worst_score}");
    eprintln!("{name}: worst score diff {worst_score:.2e}, worst hidden diff {worst_hidden:.2e}");

    // Every position of pair 0 chosen.
    let full = &exp["full_sequence_pair0_chosen"];
    let ids = u32s(&full["input_ids"]);
    let batch = model.batch(std::slice::from_ref(&ids), PaddingSide::Right).unwrap();
    let fwd = model
        .forward(
            &batch,
            &Hooks::cache(&["blocks.0.hook_resid_pre", &format!("blocks.{}.hook_resid_post", n_layers - 1)]),
        )
        .unwrap();
    for (pos, (e_in, e_out)) in
        full["embed_in"].as_array().unwrap().iter().zip(full["last_layer_out"].as_array().unwrap()).enumerate()
    {
        let d_in = max_abs_diff(&at(fwd.cache.site(Site::ResidPre(0)).unwrap(), pos), &f32s(e_in));
        let d_out = max_abs_diff(&at(fwd.cache.site(Site::ResidPost(n_layers - 1)).unwrap(), pos), &f32s(e_out));
        assert!(d_in <= TOL && d_out <= TOL, "{name}: full sequence position {pos}: {d_in} {d_out}");
    }
}

fn check_batched(name: &str) {
    let model = load(name);
    let exp = expected(name, "forward.json");
    let mut seqs = Vec::new();
    let mut want = Vec::new();
    for ep in exp["pairs"].as_array().unwrap() {
        for (_, e) in sides(ep) {
            seqs.push(u32s(&e["input_ids"]));
            want.push(e["score"].as_f64().unwrap() as f32);
        }
    }
    let singles: Vec<f32> = seqs
        .iter()
        .map(|s| model.score(&model.batch(std::slice::from_ref(s), PaddingSide::Right).unwrap()).unwrap().scores[0])
        .collect();
    let batched_ref = f32s(&exp["batched"]["scores"]);
    for side in [PaddingSide::Right, PaddingSide::Left] {
        let batch = model.batch(&seqs, side).unwrap();
        let out = model.score(&batch).unwrap();
        // Without hooks a padded batch's MLPs run on its real tokens only; with any hook every
        // position runs. Each real row's arithmetic is the same either way, bit for bit.
        let hooked = model.forward(&batch, &Hooks::cache(&["blocks.0.hook_resid_pre"])).unwrap().output;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&out.scores), bits(&hooked.scores), "{name} {side:?}: packed MLP vs every position");
        if let (Some(a), Some(b)) = (&out.objectives, &hooked.objectives) {
            for (ra, rb) in a.rewards.iter().zip(&b.rewards) {
                assert_eq!(bits(ra), bits(rb), "{name} {side:?}: objectives, packed MLP vs every position");
            }
        }
        let d_single = max_abs_diff(&out.scores, &singles);
        assert!(d_single <= 1e-5, "{name} {side:?}: padded batch differs from single runs by {d_single}");
        assert!(max_abs_diff(&out.scores, &want) <= TOL, "{name} {side:?}: batch vs transformers");
        assert!(max_abs_diff(&out.scores, &batched_ref) <= TOL, "{name} {side:?}: batch vs transformers' batch");
        if side == PaddingSide::Right {
            let pooled: Vec<u64> = out.pooled_index.iter().map(|&i| i as u64).collect();
            let want_pooled: Vec<u64> =
                exp["batched"]["pooled_index"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
            assert_eq!(pooled, want_pooled, "{name}: batched pooled index");
            if let Some(obj) = &out.objectives {
                for (b, (r, g)) in obj.rewards.iter().zip(&obj.gating).enumerate() {
                    assert!(max_abs_diff(r, &f32s(&exp["batched"]["rewards"][b])) <= TOL);
                    assert!(max_abs_diff(g, &f32s(&exp["batched"]["gating_output"][b])) <= TOL);
                }
            }
        }
    }
}

fn check_probes(name: &str) {
    let model = load(name);
    let exp = expected(name, "forward.json");
    let probes = probes();
    for (j, e) in exp["probes"].as_array().unwrap().iter().enumerate() {
        let prompt = probes[j]["prompt"].as_str().unwrap();
        for (field, ids_key, score_key) in
            [("neutral", "input_ids_neutral", "score_neutral"), ("biased", "input_ids_biased", "score_biased")]
        {
            let enc = model.encode(prompt, probes[j][field].as_str().unwrap(), Truncation::Error).unwrap();
            assert_eq!(enc.ids, u32s(&e[ids_key]), "{name} probe {j} {field}: ids (non-ASCII text)");
            let s = model.score(&model.batch(&[enc.ids], PaddingSide::Right).unwrap()).unwrap().scores[0];
            let want = e[score_key].as_f64().unwrap() as f32;
            assert!((s - want).abs() <= TOL, "{name} probe {j} {field}: {s} vs {want}");
        }
    }
}

macro_rules! parity {
    ($($m:ident),*) => {
        mod forward { use super::*; $( #[test] fn $m() { check_model(stringify!($m)); } )* }
        mod batched { use super::*; $( #[test] fn $m() { check_batched(stringify!($m)); } )* }
        mod probes { use super::*; $( #[test] fn $m() { check_probes(stringify!($m)); } )* }
    };
}

parity!(llama, mistral, qwen2, qwen3, gemma2, gpt2, armorm);

#[test]
fn param_counts_match_transformers() {
    let index = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(fixtures().join("models/INDEX.json")).unwrap(),
    )
    .unwrap();
    for name in MODELS {
        let model = load(name);
        assert_eq!(model.n_params as u64, index["models"][name]["n_params"].as_u64().unwrap(), "{name}");
    }
}

/// Lower-precision compute stays close to f32; f64 compute agrees with f32 to f32 rounding.
#[test]
fn other_compute_dtypes() {
    use reward_lens_engine::{DType, Device, LoadOptions, RewardModel};
    for name in ["llama", "gemma2", "gpt2"] {
        let f32m = load(name);
        let enc = f32m.encode("How do I boil an egg?", "Simmer it for nine minutes.", Truncation::Error).unwrap();
        let batch = f32m.batch(&[enc.ids], PaddingSide::Right).unwrap();
        let want = f32m.score(&batch).unwrap().scores[0];
        for (dtype, tol) in [(DType::F64, 1e-5), (DType::BF16, 5e-2), (DType::F16, 1e-2)] {
            let m = RewardModel::load(&model_dir(name), &LoadOptions { dtype, device: Device::Cpu }).unwrap();
            let got = m.score(&batch).unwrap().scores[0];
            assert!((got - want).abs() <= tol, "{name} {dtype:?}: {got} vs f32 {want}");
        }
    }
}

/// `encode_pairs` pools each side exactly where a batch of that side alone would, and
/// `score_pairs` (any batch size, either padding) gives the one-by-one rewards.
#[test]
fn encoded_pairs_pool_and_score_as_single_sequences() {
    use reward_lens_engine::{PairText, ScoreOptions};
    for name in ["llama", "gemma2", "gpt2", "armorm"] {
        let model = load(name);
        let texts: Vec<PairText> = pairs().into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
        let enc = model.encode_pairs(&texts, Truncation::Error).unwrap();
        for e in &enc {
            for (ids, pooled) in [(&e.chosen, e.pooled.0), (&e.rejected, e.pooled.1)] {
                let alone = model.batch(std::slice::from_ref(ids), PaddingSide::Right).unwrap();
                assert_eq!(pooled, model.pooled_index(&alone)[0], "{name}");
            }
        }
        let one = model.score_pairs(&enc, &ScoreOptions { batch_size: 2, padding: PaddingSide::Right }, &mut |_| {});
        let many = model.score_pairs(&enc, &ScoreOptions { batch_size: 16, padding: PaddingSide::Left }, &mut |_| {});
        for (a, b) in one.unwrap().iter().zip(many.unwrap().iter()) {
            assert!((a.chosen - b.chosen).abs() < 1e-4 && (a.rejected - b.rejected).abs() < 1e-4, "{name}");
        }
    }
}
