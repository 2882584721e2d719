//! Caching and interventions: every site can be cached and written back without changing the
//! reward, each action does what it says, the row/position/head restrictions touch exactly what
//! they name, padding is inert, and bad interventions are errors rather than panics.

mod common;
use common::*;

use reward_lens_engine::{
    Action, Batch, DType, Device, EngineError, Hooks, Intervention, PaddingSide, RewardModel, Site, SiteFilter, Tensor,
};

fn scores(model: &RewardModel, batch: &Batch, hooks: &Hooks) -> Vec<f32> {
    model.forward(batch, hooks).unwrap().output.scores
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn one(site: Site, action: Action<'_>) -> Hooks<'_> {
    Hooks::none().with(Intervention::new(site, action))
}

/// Builder-style restrictions applied to every intervention of a `Hooks`, and a cache filter.
trait HooksExt<'a> {
    fn positions_all(self, p: Vec<usize>) -> Hooks<'a>;
    fn heads_all(self, h: Vec<usize>) -> Hooks<'a>;
    fn rows_all(self, r: Vec<usize>) -> Hooks<'a>;
    fn with_cache(self, patterns: &[&str]) -> Hooks<'a>;
}

impl<'a> HooksExt<'a> for Hooks<'a> {
    fn positions_all(mut self, p: Vec<usize>) -> Hooks<'a> {
        self.interventions = self.interventions.into_iter().map(|iv| iv.positions(p.clone())).collect();
        self
    }
    fn heads_all(mut self, h: Vec<usize>) -> Hooks<'a> {
        self.interventions = self.interventions.into_iter().map(|iv| iv.heads(h.clone())).collect();
        self
    }
    fn rows_all(mut self, r: Vec<usize>) -> Hooks<'a> {
        self.interventions = self.interventions.into_iter().map(|iv| iv.rows(r.clone())).collect();
        self
    }
    fn with_cache(mut self, patterns: &[&str]) -> Hooks<'a> {
        self.cache = SiteFilter::new(patterns);
        self
    }
}

/// A deterministic pseudo-random vector (no RNG dependency).
fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (((s >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0) as f32 * scale
        })
        .collect()
}

fn suffix(site: &Site) -> String {
    let n = site.name();
    match site.layer() {
        Some(l) => n.strip_prefix(&format!("blocks.{l}.")).unwrap().to_string(),
        None => n,
    }
}

/// Caching every site, then writing each cached activation back with `Replace`, leaves the reward
/// unchanged, on every architecture; the cache holds exactly the model's sites in forward order.
#[test]
fn replace_with_cached_is_identity_at_every_site() {
    let required = [
        "hook_embed",
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "attn.hook_q",
        "attn.hook_k",
        "attn.hook_v",
        "attn.hook_attn_scores",
        "attn.hook_pattern",
        "attn.hook_z",
        "hook_attn_out",
        "mlp.hook_pre",
        "mlp.hook_post",
        "hook_mlp_out",
        "ln_final.hook_scale",
        "ln_final.hook_normalized",
    ];
    for name in MODELS {
        let model = load(name);
        let batch = single(&model, &ids(&model, 0, "chosen"));
        let plain = model.score(&batch).unwrap().scores[0];
        let fwd = model.forward(&batch, &Hooks::cache(&["*"])).unwrap();
        let clean = fwd.output.scores[0];
        assert_eq!(clean, plain, "{name}: caching changed the score");
        let names: Vec<String> = model.sites().iter().map(Site::name).collect();
        assert_eq!(fwd.cache.names(), &names[..], "{name}: cache order");

        let rope = model.config.rope.is_some();
        let gated = model.config.gated_mlp;
        let suffixes: Vec<String> = model.sites().iter().map(suffix).collect();
        for r in required {
            assert!(suffixes.iter().any(|s| s == r), "{name}: no {r} site");
        }
        assert_eq!(suffixes.iter().any(|s| s == "attn.hook_rot_q"), rope, "{name}: rot_q iff RoPE");
        assert_eq!(suffixes.iter().any(|s| s == "attn.hook_rot_k"), rope, "{name}: rot_k iff RoPE");
        assert_eq!(suffixes.iter().any(|s| s == "mlp.hook_pre_linear"), gated, "{name}: pre_linear iff gated");
        assert_eq!(suffixes.iter().any(|s| s == "hook_pos_embed"), *name == "gpt2", "{name}: pos_embed");

        // Shapes as documented in site.rs.
        let (t, c) = (batch.seq_len(), &model.config);
        let dims = |s: &str| fwd.cache.get(s).unwrap().dims().to_vec();
        assert_eq!(dims("hook_embed"), [1, t, c.d_model]);
        assert_eq!(dims("blocks.0.attn.hook_q"), [1, t, c.n_heads, c.head_dim]);
        assert_eq!(dims("blocks.0.attn.hook_k"), [1, t, c.n_kv_heads, c.head_dim]);
        assert_eq!(dims("blocks.0.attn.hook_pattern"), [1, c.n_heads, t, t]);
        assert_eq!(dims("blocks.0.attn.hook_z"), [1, t, c.n_heads, c.head_dim]);
        assert_eq!(dims("blocks.0.mlp.hook_post"), [1, t, c.d_mlp]);
        assert_eq!(dims("ln_final.hook_scale"), [1, t, 1]);

        for site in model.sites() {
            let cached = fwd.cache.site(*site).unwrap().clone();
            let s = scores(&model, &batch, &one(*site, Action::Replace(cached)))[0];
            assert!((s - clean).abs() <= 1e-6, "{name} {site}: Replace(cached) moved the score {clean} -> {s}");
        }
    }
}

/// Activation patching proper: replacing a site with the activation of a different input of the
/// same length makes the reward that input's reward (everything downstream is recomputed).
#[test]
fn replace_with_other_inputs_activation_transplants_the_score() {
    for name in ["llama", "gemma2", "gpt2", "armorm"] {
        let model = load(name);
        let a = ids(&model, 0, "chosen");
        let mut b = a.clone();
        b[5] = 300; // one content token changed; same length, same template
        let (ba, bb) = (single(&model, &a), single(&model, &b));
        let fa = model.forward(&ba, &Hooks::cache(&["*"])).unwrap();
        let fb = model.forward(&bb, &Hooks::cache(&["*"])).unwrap();
        let (sa, sb) = (fa.output.scores[0], fb.output.scores[0]);
        assert!((sa - sb).abs() > 1e-5, "{name}: the edit should change the score ({sa} vs {sb})");
        let sites = (0..model.config.n_layers)
            .flat_map(|l| [Site::ResidPre(l), Site::ResidMid(l), Site::ResidPost(l)])
            .chain([Site::Embed, Site::FinalNormalized]);
        for site in sites {
            let from_b = fb.cache.site(site).unwrap().clone();
            let s = scores(&model, &ba, &one(site, Action::Replace(from_b)))[0];
            assert!((s - sb).abs() <= 1e-5, "{name} {site}: patched {s}, donor {sb}");
        }
        // Patching only the edited position of the embedding is enough too (the edit is local).
        let from_b = fb.cache.site(Site::Embed).unwrap().clone();
        let s = scores(&model, &ba, &one(Site::Embed, Action::Replace(from_b)).positions_all(vec![5]))[0];
        assert!((s - sb).abs() <= 1e-5, "{name}: embed patch at the edited position {s} vs {sb}");
        // ... while patching any other single position changes nothing.
        let from_b = fb.cache.site(Site::Embed).unwrap().clone();
        let s = scores(&model, &ba, &one(Site::Embed, Action::Replace(from_b)).positions_all(vec![4, 6]))[0];
        assert!((s - sa).abs() <= 1e-6, "{name}: embed patch at unedited positions {s} vs {sa}");
    }
}

#[test]
fn empty_hooks_cache_nothing_and_score_like_score() {
    for name in MODELS {
        let model = load(name);
        let seqs = vec![ids(&model, 1, "chosen"), ids(&model, 1, "rejected")];
        let batch = model.batch(&seqs, PaddingSide::Right).unwrap();
        let fwd = model.forward(&batch, &Hooks::none()).unwrap();
        assert!(fwd.cache.is_empty() && fwd.cache.is_empty() && fwd.cache.names().is_empty(), "{name}");
        assert_eq!(fwd.output.scores, model.score(&batch).unwrap().scores, "{name}");
        assert_eq!(fwd.output.pooled_index, vec![seqs[0].len() - 1, seqs[1].len() - 1], "{name}");
        // A cache filter that matches nothing is also empty and also changes nothing.
        let fwd2 = model.forward(&batch, &Hooks::cache(&["blocks.7*"])).unwrap();
        assert!(fwd2.cache.is_empty(), "{name}");
        assert_eq!(fwd2.output.scores, fwd.output.scores, "{name}");
        // A narrow filter caches exactly what it names.
        let fwd3 = model.forward(&batch, &Hooks::cache(&["blocks.*.hook_resid_post", "hook_embed"])).unwrap();
        let want: Vec<String> = std::iter::once("hook_embed".to_string())
            .chain((0..3).map(|l| format!("blocks.{l}.hook_resid_post")))
            .collect();
        assert_eq!(fwd3.cache.names(), &want[..], "{name}");
        assert_eq!(fwd3.output.scores, fwd.output.scores, "{name}");
        assert!(fwd3
            .cache
            .require("blocks.0.hook_resid_pre")
            .unwrap_err()
            .to_string()
            .contains("blocks.0.hook_resid_pre"));
    }
}

/// Zero-ablating the last MLP output removes exactly its contribution: the ablated reward is the
/// head applied to RMSNorm(resid_mid) of the last layer, computed here by hand from the fixture's
/// `w * gamma` direction. Scale(1), Add(0) are no-ops; Scale(0) is Zero.
#[test]
fn zero_ablating_the_last_mlp_removes_exactly_its_contribution() {
    for name in ["llama", "mistral", "qwen2", "qwen3", "gemma2"] {
        let model = load(name);
        let dir = f32s(&expected(name, "decomposition.json")["direction_w_times_gamma"]);
        let eps = model.config.norm.eps();
        let last = model.config.n_layers - 1;
        let site = Site::MlpOut(last);
        let batch = single(&model, &ids(&model, 2, "chosen"));
        let p = batch.seq_len() - 1;
        let clean_fwd = model.forward(&batch, &Hooks::cache(&["*"])).unwrap();
        let clean = clean_fwd.output.scores[0];

        let head = |h: &[f32]| -> f32 {
            let ms = h.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / h.len() as f64;
            let s = 1.0 / (ms + eps).sqrt();
            h.iter().zip(&dir).map(|(&x, &w)| x as f64 * w as f64 * s).sum::<f64>() as f32
        };
        let h_post = at(clean_fwd.cache.site(Site::ResidPost(last)).unwrap(), p);
        let h_mid = at(clean_fwd.cache.site(Site::ResidMid(last)).unwrap(), p);
        assert!((head(&h_post) - clean).abs() <= 1e-5, "{name}: hand-computed head {} vs {clean}", head(&h_post));

        let zf = model.forward(&batch, &one(site, Action::Zero).with_cache(&["*"])).unwrap();
        let zero = zf.output.scores[0];
        assert!((zero - clean).abs() > 1e-4, "{name}: zeroing the last MLP changed nothing ({clean})");
        assert!((zero - head(&h_mid)).abs() <= 1e-5, "{name}: ablated {zero} vs predicted {}", head(&h_mid));
        // The ablated residual is the clean resid_mid, bit for bit, and the upstream sites are untouched.
        assert_eq!(
            flat(zf.cache.site(Site::ResidPost(last)).unwrap()),
            flat(clean_fwd.cache.site(Site::ResidMid(last)).unwrap())
        );
        assert!(flat(zf.cache.site(site).unwrap()).iter().all(|&x| x == 0.0));
        assert_eq!(
            flat(zf.cache.site(Site::MlpPost(last)).unwrap()),
            flat(clean_fwd.cache.site(Site::MlpPost(last)).unwrap())
        );

        let d = model.config.d_model;
        let zeros = Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap();
        let s1 = scores(&model, &batch, &one(site, Action::Scale(1.0)))[0];
        let s2 = scores(&model, &batch, &one(site, Action::Add(zeros)))[0];
        let s3 = scores(&model, &batch, &one(site, Action::Scale(0.0)))[0];
        assert!((s1 - clean).abs() <= 1e-6, "{name}: Scale(1.0) {s1} vs {clean}");
        assert!((s2 - clean).abs() <= 1e-6, "{name}: Add(0) {s2} vs {clean}");
        assert!((s3 - zero).abs() <= 1e-6, "{name}: Scale(0.0) {s3} vs Zero {zero}");
        // Mean(x) is Replace(x).
        let mean = Tensor::new(pseudo_random(d, 3, 0.5), &Device::Cpu).unwrap();
        let sm = scores(&model, &batch, &one(site, Action::Mean(mean.clone())))[0];
        let sr = scores(&model, &batch, &one(site, Action::Replace(mean)))[0];
        assert_eq!(sm, sr, "{name}: Mean vs Replace");
    }
}

/// Zero at position 0 only: the cached activation is zero there and identical elsewhere at the
/// same site; later layers change only at positions ≥ the patched one (causality).
#[test]
fn position_restriction_touches_only_that_position() {
    for name in ["llama", "gemma2", "gpt2"] {
        let model = load(name);
        let batch = single(&model, &ids(&model, 0, "chosen"));
        let t = batch.seq_len();
        let clean = model.forward(&batch, &Hooks::cache(&["*"])).unwrap();
        let site = Site::ResidPre(1);
        let fwd = model.forward(&batch, &one(site, Action::Zero).positions_all(vec![0]).with_cache(&["*"])).unwrap();
        assert!(
            (fwd.output.scores[0] - clean.output.scores[0]).abs() > 1e-5,
            "{name}: zeroing position 0 did not change the reward"
        );
        let (got, want) = (fwd.cache.site(site).unwrap(), clean.cache.site(site).unwrap());
        assert!(at(got, 0).iter().all(|&x| x == 0.0), "{name}: position 0 not zeroed");
        assert!(at(want, 0).iter().any(|&x| x != 0.0));
        for p in 1..t {
            assert_eq!(at(got, p), at(want, p), "{name}: position {p} changed at the patched site");
        }
        // Upstream of the patch nothing changes.
        assert_eq!(
            flat(fwd.cache.site(Site::ResidPost(0)).unwrap()),
            flat(clean.cache.site(Site::ResidPost(0)).unwrap())
        );

        // Patching a middle position p: every later site is unchanged before p and changed at p.
        let p = t / 2;
        let bump = Tensor::new(pseudo_random(model.config.d_model, 9, 1.0), &Device::Cpu).unwrap();
        let fwd =
            model.forward(&batch, &one(site, Action::Add(bump)).positions_all(vec![p]).with_cache(&["*"])).unwrap();
        let last = Site::ResidPost(model.config.n_layers - 1);
        let (got, want) = (fwd.cache.site(last).unwrap(), clean.cache.site(last).unwrap());
        for q in 0..p {
            assert!(max_abs_diff(&at(got, q), &at(want, q)) <= 1e-6, "{name}: position {q} < {p} changed (not causal)");
        }
        assert!(max_abs_diff(&at(got, p), &at(want, p)) > 1e-3, "{name}: position {p} unchanged");
        assert!(max_abs_diff(&at(got, t - 1), &at(want, t - 1)) > 1e-5, "{name}: last position unchanged");
    }
}

/// Changing pad positions (right or left padding) changes no reward.
#[test]
fn pad_positions_are_inert() {
    for name in ["llama", "mistral", "gemma2", "gpt2", "armorm"] {
        let model = load(name);
        let seqs = vec![ids(&model, 0, "chosen"), ids(&model, 0, "rejected")];
        let (long, short) = if seqs[0].len() > seqs[1].len() { (0, 1) } else { (1, 0) };
        let n_pad = seqs[long].len() - seqs[short].len();
        assert!(n_pad > 0);
        for side in [PaddingSide::Right, PaddingSide::Left] {
            let batch = model.batch(&seqs, side).unwrap();
            let t = batch.seq_len();
            let pads: Vec<usize> = match side {
                PaddingSide::Right => (t - n_pad..t).collect(),
                PaddingSide::Left => (0..n_pad).collect(),
            };
            assert!(pads.iter().all(|&p| batch.mask[short][p] == 0));
            let clean = model.score(&batch).unwrap().scores;
            for site in [Site::Embed, Site::ResidPre(0), Site::AttnOut(1), Site::MlpPost(1), Site::ResidPost(2)] {
                let d =
                    model.forward(&batch, &Hooks::cache(&[site.name()])).unwrap().cache.site(site).unwrap().dims()[2];
                let noise = Tensor::new(pseudo_random(d, 5, 10.0), &Device::Cpu).unwrap();
                let h = one(site, Action::Add(noise)).positions_all(pads.clone());
                let h = h.rows_all(vec![short]);
                let got = scores(&model, &batch, &h);
                assert!(
                    max_abs_diff(&got, &clean) <= 1e-6,
                    "{name} {side:?} {site}: pad edit moved {clean:?} -> {got:?}"
                );
            }
            // Sanity: the same edit at a real position of that row does move its reward (the
            // row's second-to-last token: Mistral's windows hide early positions from the last).
            let real = match side {
                PaddingSide::Right => seqs[short].len() - 2,
                PaddingSide::Left => t - 2,
            };
            let noise = Tensor::new(pseudo_random(model.config.d_model, 5, 10.0), &Device::Cpu).unwrap();
            let h = one(Site::ResidPre(0), Action::Add(noise)).positions_all(vec![real]);
            let h = h.rows_all(vec![short]);
            let got = scores(&model, &batch, &h);
            assert!((got[short] - clean[short]).abs() > 1e-4, "{name} {side:?}: real-position edit changed nothing");
            assert_eq!(got[long], clean[long], "{name} {side:?}: other row moved");
        }
    }
}

/// A head restriction zeroes exactly that head of hook_z (head axis 2) and of hook_pattern
/// (head axis 1); the other heads are bit-identical to the unpatched run.
#[test]
fn head_restriction_touches_only_that_head() {
    for name in ["llama", "qwen3", "gpt2"] {
        let model = load(name);
        let batch = single(&model, &ids(&model, 3, "chosen"));
        let clean = model.forward(&batch, &Hooks::cache(&["*"])).unwrap();
        let nh = model.config.n_heads;

        let site = Site::Z(0);
        let fwd = model.forward(&batch, &one(site, Action::Zero).with_cache(&["*"]).heads_all(vec![1])).unwrap();
        let (got, want) = (fwd.cache.site(site).unwrap(), clean.cache.site(site).unwrap());
        for h in 0..nh {
            let g = flat(&got.narrow(2, h, 1).unwrap());
            let w = flat(&want.narrow(2, h, 1).unwrap());
            if h == 1 {
                assert!(g.iter().all(|&x| x == 0.0), "{name}: head 1 of z not zero");
                assert!(w.iter().any(|&x| x != 0.0));
            } else {
                assert_eq!(g, w, "{name}: head {h} of z changed");
            }
        }
        assert!((fwd.output.scores[0] - clean.output.scores[0]).abs() > 1e-5, "{name}: zeroing head 1 changed nothing");

        let site = Site::Pattern(1);
        let fwd = model.forward(&batch, &one(site, Action::Zero).with_cache(&["*"]).heads_all(vec![2])).unwrap();
        let (got, want) = (fwd.cache.site(site).unwrap(), clean.cache.site(site).unwrap());
        let row_sums = |t: &Tensor, h: usize| flat(&t.narrow(1, h, 1).unwrap().sum(3).unwrap());
        for h in 0..nh {
            if h == 2 {
                assert!(row_sums(got, h).iter().all(|&x| x == 0.0), "{name}: pattern head 2 not zero");
            } else {
                assert!(row_sums(got, h).iter().all(|&x| (x - 1.0).abs() < 1e-5), "{name}: pattern head {h} rows");
                assert_eq!(flat(&got.narrow(1, h, 1).unwrap()), flat(&want.narrow(1, h, 1).unwrap()));
            }
        }
        // Head and position together: only the (head, query position) block.
        let q = 4;
        let fwd = model
            .forward(&batch, &one(site, Action::Zero).with_cache(&["*"]).heads_all(vec![0]).positions_all(vec![q]))
            .unwrap();
        let got = fwd.cache.site(site).unwrap();
        let sums = row_sums(got, 0);
        for (p, s) in sums.iter().enumerate() {
            assert!(if p == q { *s == 0.0 } else { (s - 1.0).abs() < 1e-5 }, "{name}: head 0 query {p} sum {s}");
        }
        // A head restriction on a site without heads is an intervention error.
        let bad = model.forward(&batch, &one(Site::ResidPre(0), Action::Zero).heads_all(vec![0]));
        assert!(
            matches!(bad, Err(EngineError::Intervention { ref site, .. }) if site == "blocks.0.hook_resid_pre"),
            "{name}"
        );
        // Out-of-range heads too.
        let bad = model.forward(&batch, &one(Site::Z(0), Action::Zero).heads_all(vec![nh]));
        let e = bad.err().expect("head out of range must be an error");
        assert!(matches!(e, EngineError::Intervention { .. }) && e.to_string().contains(&nh.to_string()), "{e}");
    }
}

/// `rows` restricts an intervention to those batch rows.
#[test]
fn row_restriction_changes_only_that_row() {
    for name in ["llama", "gpt2", "armorm"] {
        let model = load(name);
        let seqs = vec![ids(&model, 4, "chosen"), ids(&model, 4, "rejected")];
        let batch = model.batch(&seqs, PaddingSide::Right).unwrap();
        let clean = model.score(&batch).unwrap().scores;
        for row in 0..2 {
            let h = Hooks::none().with(Intervention::new(Site::MlpOut(1), Action::Zero).rows(vec![row]));
            let got = scores(&model, &batch, &h);
            assert_eq!(got[1 - row], clean[1 - row], "{name}: row {} moved", 1 - row);
            assert!((got[row] - clean[row]).abs() > 1e-5, "{name}: row {row} unchanged");
        }
        let bad =
            model.forward(&batch, &Hooks::none().with(Intervention::new(Site::MlpOut(1), Action::Zero).rows(vec![2])));
        assert!(matches!(bad, Err(EngineError::Intervention { .. })), "{name}: row out of range");
    }
}

/// A closure action equals the built-in action it spells out; a closure returning the wrong shape
/// is an error.
#[test]
fn closure_action_equals_builtin() {
    for name in ["llama", "gemma2", "gpt2", "armorm"] {
        let model = load(name);
        let batch = single(&model, &ids(&model, 5, "chosen"));
        let clean = model.score(&batch).unwrap().scores[0];
        for site in [Site::AttnOut(1), Site::MlpPre(0), Site::Pattern(2), Site::ResidPost(0)] {
            let a = scores(&model, &batch, &one(site, Action::Apply(Box::new(|t: &Tensor| t.affine(2.0, 0.0)))))[0];
            let b = scores(&model, &batch, &one(site, Action::Scale(2.0)))[0];
            assert!((a - b).abs() <= 1e-6, "{name} {site}: Apply {a} vs Scale {b}");
            if name == "gemma2" && site == Site::Pattern(2) {
                // Doubling the pattern doubles o_proj's output, which Gemma-2's
                // post_attention_layernorm (an RMSNorm) divides out again.
                assert!((a - clean).abs() <= 1e-5, "{name} {site}: sandwich norm is scale-invariant: {a} vs {clean}");
            } else {
                assert!((a - clean).abs() > 1e-5, "{name} {site}: doubling changed nothing");
            }
        }
        // A closure can capture state (here: a borrowed factor).
        let factor = 0.5f64;
        let a =
            scores(&model, &batch, &one(Site::AttnOut(1), Action::Apply(Box::new(|t: &Tensor| t.affine(factor, 0.0)))))
                [0];
        let b = scores(&model, &batch, &one(Site::AttnOut(1), Action::Scale(0.5)))[0];
        assert!((a - b).abs() <= 1e-6, "{name}");
        let bad =
            model.forward(&batch, &one(Site::AttnOut(1), Action::Apply(Box::new(|t: &Tensor| t.narrow(2, 0, 3)))));
        let e = bad.err().expect("wrong-shape closure must be an error");
        assert!(
            matches!(e, EngineError::Intervention { .. }) && e.to_string().contains("blocks.1.hook_attn_out"),
            "{e}"
        );
        // A closure that fails is an error, not a panic.
        let bad =
            model.forward(&batch, &one(Site::AttnOut(1), Action::Apply(Box::new(|t: &Tensor| t.narrow(2, 0, 999)))));
        assert!(bad.is_err(), "{name}: failing closure");
    }
}

#[test]
fn unknown_sites_and_bad_values_are_errors() {
    let model = load("llama");
    let e = model.resolve_sites(&SiteFilter::new(&["blocks.99.hook_resid_post"])).unwrap_err();
    // A layer the model lacks says how many it has; a misspelt name is unknown.
    assert!(matches!(e, EngineError::SiteLayer { layer: 99, n_layers: 3, .. }), "{e}");
    assert!(e.to_string().contains("blocks.99.hook_resid_post"), "{e}");
    let e = model.resolve_sites(&SiteFilter::new(&["blocks.0.hook_resid_prE"])).unwrap_err();
    assert!(matches!(e, EngineError::UnknownSite(_)), "{e}");
    assert!(e.to_string().contains("blocks.0.hook_resid_prE"), "{e}");
    // Globs resolve in forward order; aliases resolve too.
    let got = model.resolve_sites(&SiteFilter::new(&["blocks.*.hook_resid_post"])).unwrap();
    assert_eq!(got, vec![Site::ResidPost(0), Site::ResidPost(1), Site::ResidPost(2)]);
    let got = model.resolve_sites(&SiteFilter::new(&["blocks.1.attn.hook_scores", "hook_final_norm"])).unwrap();
    assert_eq!(got, vec![Site::AttnScores(1), Site::FinalNormalized]);
    // A glob that matches nothing is an empty list, not an error.
    assert!(model.resolve_sites(&SiteFilter::new(&["blocks.9*"])).unwrap().is_empty());
    // GPT-2 has no RoPE sites.
    let gpt2 = load("gpt2");
    let e = gpt2.resolve_sites(&SiteFilter::new(&["blocks.0.attn.hook_rot_q"])).unwrap_err();
    assert!(
        matches!(e, EngineError::SiteNotInModel { .. }) && e.to_string().contains("blocks.0.attn.hook_rot_q"),
        "{e}"
    );
    assert!(e.to_string().contains("only models with rotary position embeddings"), "{e}");
    // Llama has no learned position embeddings: said so, not "unknown".
    let e = model.resolve_sites(&SiteFilter::new(&["hook_pos_embed"])).unwrap_err();
    assert!(e.to_string().contains("learned position embeddings"), "{e}");

    let batch = single(&model, &ids(&model, 0, "chosen"));
    // An intervention at a layer the model does not have.
    let e = model.forward(&batch, &one(Site::ResidPost(99), Action::Zero)).err().unwrap();
    assert!(matches!(e, EngineError::UnknownSite(_)) && e.to_string().contains("blocks.99.hook_resid_post"), "{e}");
    let e = gpt2.forward(&single(&gpt2, &ids(&gpt2, 0, "chosen")), &one(Site::RotK(0), Action::Zero)).err().unwrap();
    assert!(e.to_string().contains("blocks.0.attn.hook_rot_k"), "{e}");

    // Wrong-shape values: an intervention error naming the site and both shapes.
    let t = batch.seq_len();
    let wrong = Tensor::zeros((1, t, 63), DType::F32, &Device::Cpu).unwrap();
    let e = model.forward(&batch, &one(Site::ResidPre(1), Action::Replace(wrong))).err().unwrap();
    assert!(matches!(e, EngineError::Intervention { ref site, .. } if site == "blocks.1.hook_resid_pre"), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("63") && msg.contains("64"), "{msg}");
    for action in [
        Action::Add(Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap()),
        Action::Mean(Tensor::zeros((2, t, 64), DType::F32, &Device::Cpu).unwrap()),
    ] {
        let e = model.forward(&batch, &one(Site::ResidPre(1), action)).err().unwrap();
        assert!(matches!(e, EngineError::Intervention { .. }), "{e}");
    }
    // Positions out of range.
    let e = model.forward(&batch, &one(Site::ResidPre(1), Action::Zero).positions_all(vec![t])).err().unwrap();
    assert!(matches!(e, EngineError::Intervention { .. }) && e.to_string().contains(&t.to_string()), "{e}");
    // The same model still works afterwards.
    assert!(model.score(&batch).unwrap().scores[0].is_finite());
}

/// The same steering vector added to a padded 2-row batch gives each row's single-run reward.
#[test]
fn batched_steering_equals_one_by_one() {
    for name in MODELS {
        let model = load(name);
        let seqs = vec![ids(&model, 6, "chosen"), ids(&model, 7, "rejected")];
        assert_ne!(seqs[0].len(), seqs[1].len());
        let v = Tensor::new(pseudo_random(model.config.d_model, 11, 0.5), &Device::Cpu).unwrap();
        let site = Site::ResidPost(1);
        let steer = || one(site, Action::Add(v.clone()));
        let singles: Vec<f32> = seqs.iter().map(|s| scores(&model, &single(&model, s), &steer())[0]).collect();
        let unsteered: Vec<f32> = seqs.iter().map(|s| model.score(&single(&model, s)).unwrap().scores[0]).collect();
        assert!(max_abs_diff(&singles, &unsteered) > 1e-4, "{name}: steering changed nothing");
        for side in [PaddingSide::Right, PaddingSide::Left] {
            let batch = model.batch(&seqs, side).unwrap();
            let got = scores(&model, &batch, &steer());
            assert!(max_abs_diff(&got, &singles) <= 1e-5, "{name} {side:?}: batched {got:?} vs singles {singles:?}");
        }
        // A per-row steering tensor [B, 1, d] steers each row by its own vector.
        let batch = model.batch(&seqs, PaddingSide::Right).unwrap();
        let d = model.config.d_model;
        let mut rows = pseudo_random(d, 11, 0.5);
        rows.extend(vec![0.0; d]);
        let per_row = Tensor::from_vec(rows, (2, 1, d), &Device::Cpu).unwrap();
        let got = scores(&model, &batch, &one(site, Action::Add(per_row)));
        assert!(
            (got[0] - singles[0]).abs() <= 1e-5 && (got[1] - unsteered[1]).abs() <= 1e-5,
            "{name}: per-row steering {got:?}"
        );
    }
}

/// Sliding windows bound how far an edit travels: with window W on all of Mistral's 3 layers, a
/// change to the embedding at position p reaches the last token iff (T-1) - p <= 3 (W - 1). Gemma-2
/// has one full-attention layer, so every position reaches.
#[test]
fn sliding_window_limits_the_reach_of_an_edit() {
    for (name, reach) in [("mistral", Some(3 * 7)), ("gemma2", None), ("llama", None)] {
        let model = load(name);
        let batch = single(&model, &ids(&model, 0, "chosen"));
        let t = batch.seq_len();
        assert!(t > 30, "{name}: sequence of {t} tokens is too short for this test");
        let clean = model.score(&batch).unwrap().scores[0];
        let bump = Tensor::new(pseudo_random(model.config.d_model, 13, 1.0), &Device::Cpu).unwrap();
        for p in 0..t {
            let h = one(Site::Embed, Action::Add(bump.clone())).positions_all(vec![p]);
            let d = (scores(&model, &batch, &h)[0] - clean).abs();
            let reaches = reach.is_none_or(|r| t - 1 - p <= r);
            if reaches {
                assert!(d > 1e-7, "{name}: edit at {p} of {t} should reach the last token (|d| = {d})");
            } else {
                assert!(d <= 1e-7, "{name}: edit at {p} of {t} is outside the window but moved the score by {d}");
            }
        }
    }
}

/// An intervention on the final norm's divisor feeds into the normalized output: doubling it
/// halves the normalized residual, and so halves a bias-free linear reward.
#[test]
fn final_norm_scale_intervention_is_applied() {
    for name in ["llama", "qwen2", "gemma2"] {
        let model = load(name);
        let batch = single(&model, &ids(&model, 0, "chosen"));
        let clean = model.forward(&batch, &Hooks::cache(&["ln_final.*"])).unwrap();
        let fwd =
            model.forward(&batch, &one(Site::FinalScale, Action::Scale(2.0)).with_cache(&["ln_final.*"])).unwrap();
        let (s0, s1) = (clean.output.scores[0], fwd.output.scores[0]);
        assert!((s1 - s0 / 2.0).abs() <= 1e-6, "{name}: doubled divisor gives {s1}, expected {}", s0 / 2.0);
        let want: Vec<f32> = flat(clean.cache.site(Site::FinalNormalized).unwrap()).iter().map(|x| x / 2.0).collect();
        assert!(max_abs_diff(&flat(fwd.cache.site(Site::FinalNormalized).unwrap()), &want) <= 1e-6, "{name}");
    }
}

#[test]
fn misspelt_cache_name_is_an_error() {
    let model = load("llama");
    let batch = single(&model, &ids(&model, 0, "chosen"));
    let e = model.forward(&batch, &Hooks::cache(&["blocks.0.hook_resid_psot"])).err().expect("must fail");
    assert!(e.to_string().contains("blocks.0.hook_resid_psot"), "{e}");
    // Globs that match nothing are allowed (a filter, not a name).
    assert!(model.forward(&batch, &Hooks::cache(&["blocks.9*"])).unwrap().cache.is_empty());
}

#[test]
fn piecewise_forward_equals_the_full_pass() {
    for name in ["llama", "gemma2", "gpt2", "armorm"] {
        let model = load(name);
        let batch = model.batch(&[ids(&model, 0, "chosen"), ids(&model, 1, "rejected")], PaddingSide::Right).unwrap();
        let full = model.forward(&batch, &Hooks::cache(&["blocks.1.hook_resid_pre"])).unwrap();
        let prep = model.prepare(&batch).unwrap();
        let (x, _) = prep.embed(&Hooks::none()).unwrap();
        let (x, _) = prep.blocks(x, 0..1, &Hooks::none()).unwrap();
        let (x, _) = prep.blocks(x, 1..model.config.n_layers, &Hooks::none()).unwrap();
        let (out, _) = prep.head(&x, &Hooks::none()).unwrap();
        assert_eq!(out.scores, full.output.scores, "{name}: same ops, same bits");
        // Resuming from the cached input of block 1.
        let resid = full.cache.require("blocks.1.hook_resid_pre").unwrap().clone();
        let (x, _) = prep.blocks(resid, 1..model.config.n_layers, &Hooks::none()).unwrap();
        assert_eq!(prep.head(&x, &Hooks::none()).unwrap().0.scores, full.output.scores);
        // A residual of the wrong shape is an error.
        assert!(prep.blocks(x.narrow(1, 0, 2).unwrap(), 0..1, &Hooks::none()).is_err());
    }
}

#[test]
fn suffix_run_with_cached_keys_equals_the_full_pass() {
    for name in ["llama", "mistral", "qwen3", "gemma2", "gpt2"] {
        let model = load(name);
        let ids = ids(&model, 2, "chosen");
        let batch = single(&model, &ids);
        let n = model.config.n_layers;
        let k_site = if model.config.rope.is_some() { "blocks.*.attn.hook_rot_k" } else { "blocks.*.attn.hook_k" };
        let full = model
            .forward(
                &batch,
                &Hooks::cache(&["blocks.*.hook_resid_pre", k_site, "blocks.*.attn.hook_v", "blocks.*.hook_resid_post"]),
            )
            .unwrap();
        let c = &full.cache;
        let prep = model.prepare(&batch).unwrap();
        let t = ids.len();
        for (l, start) in [(0usize, 5usize), (1, 12), (n - 1, t - 1)] {
            let k_name = |i: usize| if model.config.rope.is_some() { Site::RotK(i) } else { Site::K(i) };
            let past: Vec<(Tensor, Tensor)> = (l..n)
                .map(|i| {
                    (
                        c.site(k_name(i)).unwrap().narrow(1, 0, start).unwrap(),
                        c.site(Site::V(i)).unwrap().narrow(1, 0, start).unwrap(),
                    )
                })
                .collect();
            let x = c.site(Site::ResidPre(l)).unwrap().narrow(1, start, t - start).unwrap();
            let (suffix, _) = prep.blocks_from(x, start, l..n, &past, &Hooks::none()).unwrap();
            let prefix = c.site(Site::ResidPost(n - 1)).unwrap().narrow(1, 0, start).unwrap();
            let whole = Tensor::cat(&[&prefix, &suffix], 1).unwrap();
            let (out, _) = prep.head(&whole, &Hooks::none()).unwrap();
            let d = (out.scores[0] - full.output.scores[0]).abs();
            assert!(d < 1e-5, "{name}: from layer {l}, position {start}: {d}");
            let want = c.site(Site::ResidPost(n - 1)).unwrap().narrow(1, start, t - start).unwrap();
            let diff = (suffix - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{name}: suffix residual differs by {diff}");
        }
    }
}

#[test]
fn keys_values_match_the_cached_ones() {
    for name in ["qwen3", "gpt2", "gemma2"] {
        let model = load(name);
        let ids = ids(&model, 1, "chosen");
        let batch = single(&model, &ids);
        let k_site = if model.config.rope.is_some() { "blocks.1.attn.hook_rot_k" } else { "blocks.1.attn.hook_k" };
        let fwd =
            model.forward(&batch, &Hooks::cache(&["blocks.1.hook_resid_pre", k_site, "blocks.1.attn.hook_v"])).unwrap();
        let prep = model.prepare(&batch).unwrap();
        let x = fwd.cache.require("blocks.1.hook_resid_pre").unwrap().narrow(1, 4, 6).unwrap();
        let (k, v) = prep.keys_values(1, &x, 4).unwrap();
        let diff =
            |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff(&k, &fwd.cache.require(k_site).unwrap().narrow(1, 4, 6).unwrap()) < 1e-5, "{name}: keys");
        assert!(
            diff(&v, &fwd.cache.require("blocks.1.attn.hook_v").unwrap().narrow(1, 4, 6).unwrap()) < 1e-5,
            "{name}: values"
        );
    }
}
