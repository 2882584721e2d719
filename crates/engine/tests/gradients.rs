//! `RewardModel::gradients` against central finite differences on every architecture, plus the
//! algebra a correct backward pass must satisfy: margins are differences of single-row gradients,
//! the objective is Σ w·score, marking several sites at once does not cut the graph between them,
//! identical tensors at two site names get identical gradients, and interventions are respected.

mod common;
use common::*;

use reward_lens_engine::{
    Action, Batch, DType, Device, Gradients, Hooks, Intervention, PaddingSide, RewardModel, Site, SiteFilter, Tensor,
};

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn grads(model: &RewardModel, batch: &Batch, sites: &[&str], weights: &[f32]) -> Gradients {
    model.gradients(batch, &SiteFilter::new(sites), weights, &Hooks::none()).unwrap()
}

/// The score with `delta` added to one entry (flat index `i`) of the activation at `site`.
fn nudged_score(model: &RewardModel, batch: &Batch, site: Site, dims: &[usize], i: usize, delta: f32) -> f64 {
    let mut d = vec![0f32; dims.iter().product()];
    d[i] = delta;
    let t = Tensor::from_vec(d, dims, &Device::Cpu).unwrap();
    let hooks = Hooks::none().with(Intervention::new(site, Action::Add(t)));
    model.forward(batch, &hooks).unwrap().output.scores[0] as f64
}

/// Central difference of the score along one entry, Richardson-extrapolated from steps h and h/2
/// (truncation error O(h⁴), so the rounding noise of the f32 forward is what remains).
fn finite_difference(model: &RewardModel, batch: &Batch, site: Site, dims: &[usize], i: usize, h: f32) -> f64 {
    let central = |h: f32| {
        (nudged_score(model, batch, site, dims, i, h) - nudged_score(model, batch, site, dims, i, -h))
            / (2.0 * h as f64)
    };
    (4.0 * central(h / 2.0) - central(h)) / 3.0
}

/// Checks the three largest-|g| entries and two pseudo-random ones against Richardson central
/// differences: `|fd − g| ≤ 5e-3·|g| + 2e-3·max|g|`. The step is 3% of the activation's RMS, so
/// it is small relative to the activation whatever its scale (Gemma-2's ×8 embeddings,
/// attention probabilities). Measured on the fixtures: ≤ 2e-4 relative on the large entries,
/// ≤ 5e-4·max|g| on the random ones (f32 rounding), except ArmoRM's gating position, where a ReLU
/// kink in the gating MLP within ±h leaves 1.3e-3·max|g|.
/// `also_row`: a position whose largest entry is checked too (ArmoRM's gating position, whose
/// gradient is small next to the pooled token's but flows through the whole gating network).
fn fd_check(
    model: &RewardModel,
    batch: &Batch,
    site_name: &str,
    g: &Tensor,
    value: &Tensor,
    seed: u64,
    also_row: Option<usize>,
) -> Vec<String> {
    let site = Site::parse(site_name).unwrap();
    let dims = g.dims().to_vec();
    let gv = flat(g);
    let gmax = gv.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    assert!(gmax > 0.0, "{site_name}: gradient is identically zero");
    let vv = flat(value);
    let rms = (vv.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / vv.len() as f64).sqrt();
    let h = (H_REL * rms) as f32;
    let mut order: Vec<usize> = (0..gv.len()).collect();
    order.sort_by(|&a, &b| gv[b].abs().total_cmp(&gv[a].abs()));
    let mut picks: Vec<usize> = order[..3].to_vec();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..2 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        picks.push((s % gv.len() as u64) as usize);
    }
    let axes = site.axes();
    if let (Some(row), Some(1), None) = (also_row, axes.position, axes.head) {
        let width = gv.len() / dims[1];
        let best = (row * width..(row + 1) * width).max_by(|&a, &b| gv[a].abs().total_cmp(&gv[b].abs())).unwrap();
        assert!(gv[best] != 0.0, "{site_name}: no gradient at position {row}");
        picks.push(best);
    }
    let mut failures = Vec::new();
    for i in picks {
        let fd = finite_difference(model, batch, site, &dims, i, h);
        let gi = gv[i] as f64;
        if (fd - gi).abs() > 5e-3 * gi.abs() + 2e-3 * gmax {
            failures.push(format!(
                "{site_name}[{i}] (h {h:.1e}): grad {gi:.6e}, finite difference {fd:.6e}, max |grad| {gmax:.2e}"
            ));
        }
    }
    failures
}

/// Finite-difference step, relative to the activation's RMS (measured: 0.1 is truncation-bound,
/// 0.01 noise-bound in f32).
const H_REL: f64 = 0.03;

fn fd_sites(model: &RewardModel) -> Vec<String> {
    let mut v: Vec<String> = [
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.attn.hook_v",
        "blocks.1.attn.hook_attn_scores",
        "blocks.1.attn.hook_pattern",
        "blocks.1.hook_attn_out",
        "blocks.1.mlp.hook_pre",
        "blocks.2.mlp.hook_post",
        "blocks.2.hook_resid_mid",
        "ln_final.hook_scale",
        "ln_final.hook_normalized",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if model.config.rope.is_some() {
        v.extend(["blocks.0.attn.hook_rot_q".into(), "blocks.2.attn.hook_rot_k".into()]);
    } else {
        v.extend(["blocks.0.attn.hook_q".into(), "blocks.2.attn.hook_k".into(), "hook_pos_embed".into()]);
    }
    if model.config.gated_mlp {
        v.push("blocks.0.mlp.hook_pre_linear".into());
    }
    v
}

fn check_finite_differences(name: &str) {
    let model = load(name);
    let batch = single(&model, &ids(&model, 0, "chosen"));
    let sites = fd_sites(&model);
    let names: Vec<&str> = sites.iter().map(String::as_str).collect();
    let g = grads(&model, &batch, &names, &[1.0]);
    let fwd = model.forward(&batch, &Hooks::cache(&names)).unwrap();
    assert!((g.output.scores[0] - fwd.output.scores[0]).abs() <= 1e-5, "{name}: gradient run score");
    // `values` holds every gradient site (no cache filter needed), in forward order, like `grads`.
    let order: Vec<String> = model.resolve_sites(&SiteFilter::new(&names)).unwrap().iter().map(Site::name).collect();
    assert_eq!(g.values.names(), &order[..], "{name}: values");
    assert_eq!(g.grads.names(), &order[..], "{name}: grads");
    let gating_row = g.output.objectives.as_ref().map(|o| o.gating_index[0]);
    let mut failures = Vec::new();
    for (k, site) in names.iter().enumerate() {
        let gt = g.grads.get(site).unwrap();
        let value = g.values.get(site).unwrap();
        assert_eq!(gt.dims(), value.dims(), "{name} {site}: gradient and value shapes");
        // Values are the forward activations (composed vs fused norms: rounding only).
        let vd = max_abs_diff(&flat(value), &flat(fwd.cache.get(site).unwrap()));
        assert!(vd <= 1e-4, "{name} {site}: value differs from the forward cache by {vd}");
        failures.extend(fd_check(&model, &batch, site, gt, value, 17 + k as u64, gating_row));
    }
    assert!(failures.is_empty(), "{name}: gradient vs finite difference:\n{}", failures.join("\n"));
}

macro_rules! fd_tests {
    ($($m:ident),*) => {
        mod finite_differences { use super::*; $( #[test] fn $m() { check_finite_differences(stringify!($m)); } )* }
    };
}
fd_tests!(llama, mistral, qwen2, qwen3, gemma2, gpt2, armorm);

/// The margin's gradient (weights [1, −1] on a padded (chosen, rejected) batch) is the chosen
/// row's single-run gradient in row 0 and minus the rejected row's in row 1; pad positions get 0.
#[test]
fn margin_gradient_is_difference_of_single_gradients() {
    for name in ["llama", "gemma2", "gpt2", "qwen3", "armorm"] {
        let model = load(name);
        let (c, r) = (ids(&model, 0, "chosen"), ids(&model, 0, "rejected"));
        let (tc, tr) = (c.len(), r.len());
        assert!(tc > tr, "{name}: expected chosen longer than rejected");
        let sites = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern", "blocks.2.mlp.hook_post"];
        let batch = model.batch(&[c.clone(), r.clone()], PaddingSide::Right).unwrap();
        let m = grads(&model, &batch, &sites, &[1.0, -1.0]);
        let gc = grads(&model, &single(&model, &c), &sites, &[1.0]);
        let gr = grads(&model, &single(&model, &r), &sites, &[1.0]);
        let (sc, sr) = (gc.output.scores[0], gr.output.scores[0]);
        assert!((m.objective - (sc - sr)).abs() <= 1e-5, "{name}: margin objective {} vs {}", m.objective, sc - sr);
        for site in sites {
            let (mt, ct, rt) = (m.grads.get(site).unwrap(), gc.grads.get(site).unwrap(), gr.grads.get(site).unwrap());
            let scale = flat(ct).iter().chain(flat(rt).iter()).fold(1f32, |a, x| a.max(x.abs()));
            let tol = 1e-5 * scale;
            let is_pattern = site.contains("pattern");
            // Row 0 against the chosen run. Pattern: [B, H, T, T]; others: [B, T, X].
            let row0 = mt.get(0).unwrap();
            let row0 = if is_pattern {
                row0.narrow(1, 0, tc).unwrap().narrow(2, 0, tc).unwrap()
            } else {
                row0.narrow(0, 0, tc).unwrap()
            };
            let d0 = max_abs_diff(&flat(&row0), &flat(&ct.get(0).unwrap()));
            assert!(d0 <= tol, "{name} {site}: margin row 0 vs chosen gradient differs by {d0}");
            let row1 = mt.get(1).unwrap();
            let real = if is_pattern {
                row1.narrow(1, 0, tr).unwrap().narrow(2, 0, tr).unwrap()
            } else {
                row1.narrow(0, 0, tr).unwrap()
            };
            let minus_r: Vec<f32> = flat(&rt.get(0).unwrap()).iter().map(|x| -x).collect();
            let d1 = max_abs_diff(&flat(&real), &minus_r);
            assert!(d1 <= tol, "{name} {site}: margin row 1 vs −rejected gradient differs by {d1}");
            // Pad positions of row 1 (right padding: after its last token) get no gradient. For the
            // pattern that is every pad *query* row (pad keys are real entries of the matmul).
            let pads =
                if is_pattern { row1.narrow(1, tr, tc - tr).unwrap() } else { row1.narrow(0, tr, tc - tr).unwrap() };
            assert!(flat(&pads).iter().all(|&x| x == 0.0), "{name} {site}: gradient at pad positions");
        }
    }
}

/// The objective is Σ_b w_b · score_b for any weights, and its gradient is linear in the weights.
#[test]
fn objective_is_weighted_sum_and_gradient_is_linear_in_weights() {
    for name in ["llama", "gpt2", "armorm"] {
        let model = load(name);
        let seqs = vec![ids(&model, 8, "chosen"), ids(&model, 9, "rejected"), ids(&model, 10, "chosen")];
        let batch = model.batch(&seqs, PaddingSide::Left).unwrap();
        let plain = model.score(&batch).unwrap().scores;
        let site = ["blocks.1.hook_resid_mid"];
        let w = [0.5f32, -2.0, 1.25];
        let g = grads(&model, &batch, &site, &w);
        let want: f32 = w.iter().zip(&g.output.scores).map(|(a, b)| a * b).sum();
        assert!((g.objective - want).abs() <= 1e-5, "{name}: objective {} vs Σ w·score {want}", g.objective);
        assert!(max_abs_diff(&g.output.scores, &plain) <= 1e-5, "{name}: gradient-run scores vs forward");
        // Linear in the weights: g(w) = Σ w_b · g(e_b), row by row.
        let gw = flat(g.grads.get(site[0]).unwrap());
        let mut sum = vec![0f32; gw.len()];
        for (b, wb) in w.iter().enumerate() {
            let mut e = [0f32; 3];
            e[b] = 1.0;
            let gb = flat(grads(&model, &batch, &site, &e).grads.get(site[0]).unwrap());
            for (s, x) in sum.iter_mut().zip(gb) {
                *s += wb * x;
            }
        }
        let scale = gw.iter().fold(1f32, |a, x| a.max(x.abs()));
        assert!(max_abs_diff(&gw, &sum) <= 1e-5 * scale, "{name}: gradient not linear in the weights");
        // Zero weights: zero objective, zero gradient.
        let z = grads(&model, &batch, &site, &[0.0, 0.0, 0.0]);
        assert_eq!(z.objective, 0.0);
        assert!(flat(z.grads.get(site[0]).unwrap()).iter().all(|&x| x == 0.0), "{name}");
    }
}

/// Marking several sites at once gives each the same gradient as marking it alone: the marks
/// do not cut the graph between them (an upstream site still sees the paths through a downstream one).
#[test]
fn marking_many_sites_equals_marking_each_alone() {
    for name in ["llama", "gemma2", "gpt2", "qwen3", "armorm"] {
        let model = load(name);
        let batch = single(&model, &ids(&model, 11, "chosen"));
        let sites = [
            "hook_embed",
            "blocks.0.hook_resid_pre",
            "blocks.0.attn.hook_z",
            "blocks.1.hook_attn_out",
            "blocks.1.attn.hook_pattern",
            "blocks.1.hook_resid_post",
            "blocks.2.mlp.hook_post",
            "ln_final.hook_normalized",
        ];
        let all = grads(&model, &batch, &sites, &[1.0]);
        for site in sites {
            let alone = grads(&model, &batch, &[site], &[1.0]);
            assert_eq!(alone.grads.names(), &[site.to_string()][..]);
            let (a, b) = (flat(all.grads.get(site).unwrap()), flat(alone.grads.get(site).unwrap()));
            let scale = b.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
            assert!(max_abs_diff(&a, &b) <= 1e-6 * scale.max(1.0), "{name} {site}: marked with others vs alone");
            assert!(b.iter().any(|&x| x != 0.0), "{name} {site}: zero gradient");
        }
        // A glob marks every matching site.
        let glob = grads(&model, &batch, &["blocks.*.hook_resid_post"], &[1.0]);
        assert_eq!(glob.grads.len(), model.config.n_layers, "{name}");
    }
}

/// Sites that hold the same tensor, or that reach the reward only through one another, get the
/// same gradient: resid_post(l) = resid_pre(l+1); attn_out(l) only enters resid_mid(l); mlp_out(l)
/// only enters resid_post(l); the embedding is resid_pre(0) (GPT-2: wte and wpe both are). The
/// reward reads ln_final.hook_normalized linearly at the pooled token, so its gradient is w_r there.
#[test]
fn gradient_identities_between_sites() {
    for name in MODELS {
        let model = load(name);
        let batch = single(&model, &ids(&model, 12, "rejected"));
        let g = model.gradients(&batch, &SiteFilter::all(), &[1.0], &Hooks::none()).unwrap();
        assert_eq!(g.grads.len(), model.sites().len(), "{name}: every site marked");
        let gg = |s: &str| flat(g.grads.get(s).unwrap());
        let same = |a: &str, b: &str| {
            let (x, y) = (gg(a), gg(b));
            let scale = x.iter().fold(1f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&x, &y);
            assert!(d <= 1e-6 * scale, "{name}: grad {a} vs {b} differ by {d}");
        };
        let n = model.config.n_layers;
        for l in 0..n {
            if l + 1 < n {
                same(&format!("blocks.{l}.hook_resid_post"), &format!("blocks.{}.hook_resid_pre", l + 1));
            }
            same(&format!("blocks.{l}.hook_attn_out"), &format!("blocks.{l}.hook_resid_mid"));
            same(&format!("blocks.{l}.hook_mlp_out"), &format!("blocks.{l}.hook_resid_post"));
        }
        same("hook_embed", "blocks.0.hook_resid_pre");
        if *name == "gpt2" {
            same("hook_pos_embed", "blocks.0.hook_resid_pre");
        }
        if let Some((w, b)) = model.head.linear_direction().unwrap() {
            assert_eq!(b, 0.0);
            let w = flat(&w);
            let gn = g.grads.get("ln_final.hook_normalized").unwrap();
            let p = batch.seq_len() - 1;
            assert!(max_abs_diff(&at(gn, p), &w) <= 1e-7, "{name}: d score / d normalized at the pooled token is w_r");
            for q in 0..p {
                assert!(at(gn, q).iter().all(|&x| x == 0.0), "{name}: normalized gradient at position {q}");
            }
        } else {
            // ArmoRM also reads the gating position.
            let gi = g.output.objectives.as_ref().unwrap().gating_index[0];
            let gn = g.grads.get("ln_final.hook_normalized").unwrap();
            for q in 0..batch.seq_len() {
                let nonzero = at(gn, q).iter().any(|&x| x != 0.0);
                assert_eq!(nonzero, q == gi || q == batch.seq_len() - 1, "{name}: normalized gradient at {q}");
            }
        }
    }
}

/// Interventions in `hooks` apply in the gradient run: after zeroing a layer's attention output
/// nothing inside that attention matters (zero gradient), the scores are the intervened ones, and
/// the gradient upstream matches finite differences of the intervened model.
#[test]
fn gradients_respect_interventions() {
    for name in ["llama", "gpt2", "armorm"] {
        let model = load(name);
        let batch = single(&model, &ids(&model, 13, "chosen"));
        let zero = || Hooks::none().with(Intervention::new(Site::AttnOut(1), Action::Zero));
        let sites =
            ["blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_v", "blocks.0.hook_attn_out"];
        let g = model.gradients(&batch, &SiteFilter::new(&sites), &[1.0], &zero()).unwrap();
        let fwd = model.forward(&batch, &zero()).unwrap();
        assert!((g.output.scores[0] - fwd.output.scores[0]).abs() <= 1e-5, "{name}: intervened scores");
        let clean = model.score(&batch).unwrap().scores[0];
        assert!((g.output.scores[0] - clean).abs() > 1e-5, "{name}: the intervention changed nothing");
        for site in &sites[..3] {
            assert!(
                flat(g.grads.get(site).unwrap()).iter().all(|&x| x == 0.0),
                "{name} {site}: gradient through a zeroed output"
            );
        }
        // Upstream gradient is that of the intervened model (checked by finite differences, with
        // the intervention in place for every nudged run).
        let site = Site::AttnOut(0);
        let gt = g.grads.get(&site.name()).unwrap();
        let gv = flat(gt);
        let i = (0..gv.len()).max_by(|&a, &b| gv[a].abs().total_cmp(&gv[b].abs())).unwrap();
        let h = 1e-2f32;
        let nudge = |d: f32| {
            let mut v = vec![0f32; gv.len()];
            v[i] = d;
            let t = Tensor::from_vec(v, gt.dims(), &Device::Cpu).unwrap();
            let hooks = zero().with(Intervention::new(site, Action::Add(t)));
            model.forward(&batch, &hooks).unwrap().output.scores[0] as f64
        };
        let fd = (nudge(h) - nudge(-h)) / (2.0 * h as f64);
        assert!(
            (fd - gv[i] as f64).abs() <= 1e-2 * (gv[i] as f64).abs(),
            "{name}: intervened gradient {} vs fd {fd}",
            gv[i]
        );
        // ... and differs from the clean model's gradient there.
        let gc = flat(
            grads(&model, &batch, &["blocks.0.hook_attn_out"], &[1.0]).grads.get("blocks.0.hook_attn_out").unwrap(),
        );
        assert!(max_abs_diff(&gc, &gv) > 1e-3, "{name}: intervention did not change the upstream gradient");
    }
}

#[test]
fn gradient_errors() {
    let model = load("llama");
    let batch = single(&model, &ids(&model, 0, "chosen"));
    let e = model
        .gradients(&batch, &SiteFilter::new(&["blocks.0.hook_resid_pre"]), &[1.0, 1.0], &Hooks::none())
        .err()
        .unwrap();
    assert!(e.to_string().contains("one weight per batch row (1 rows), got 2"), "{e}");
    let e =
        model.gradients(&batch, &SiteFilter::new(&["blocks.5.hook_resid_pre"]), &[1.0], &Hooks::none()).err().unwrap();
    assert!(e.to_string().contains("blocks.5.hook_resid_pre"), "{e}");
    // A NaN weight is refused by position; a weight so large that the backward pass overflows
    // is a named error, never a gradient of infinities.
    let site = SiteFilter::new(&["blocks.0.hook_resid_pre"]);
    let e = model.gradients(&batch, &site, &[f32::NAN], &Hooks::none()).err().unwrap().to_string();
    assert!(e.contains("weight 0 is NaN, expected a finite number"), "{e}");
    let e = model.gradients(&batch, &site, &[f32::MAX], &Hooks::none()).err().unwrap();
    assert!(matches!(e, reward_lens_engine::EngineError::NonFiniteGradient { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains("gradient at `blocks.0.hook_resid_pre`") || e.contains("gradient at `objective"), "{e}");
    assert!(e.contains("NaN or infinity"), "{e}");
    // No sites: a plain scored run with an empty gradient set.
    let g = model.gradients(&batch, &SiteFilter::default(), &[1.0], &Hooks::none()).unwrap();
    assert!(g.grads.is_empty() && g.values.is_empty());
    assert!((g.objective - model.score(&batch).unwrap().scores[0]).abs() <= 1e-5);
}
