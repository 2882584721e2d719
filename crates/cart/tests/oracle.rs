//! The ablation oracle on a trained model: the `tail` organism, which has learned its rare rule
//! (on `urgent :` prompts a caution sentence beats a correct answer).
//!
//! What the oracle shows there, and these tests pin down: no sparse set of MLP neurons or
//! attention heads carries the rule under mean ablation, because the rule is an attention gate.
//! The marker draws the last layer's attention at the pooled token away from the answer (so
//! correctness stops counting), while the caution preference is shared with head prompts.
//! Blocking that attention (two attention *edges*) removes the rule; ablating the heads that
//! attend removes correctness everywhere instead, which costs the head and leaves the tail's
//! caution rule standing. Discovery with edges among its units finds the same two edges.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use reward_lens_cart::discover::{
    discover, DiscoverOptions, Layers, ScreeningOptions, Threshold, UnitKind, UnitOptions, ValidationOptions,
};
use reward_lens_cart::headtail::{HeadTailSplit, SplitRule};
use reward_lens_cart::oracle::{oracle, OracleOptions};
use reward_lens_engine::{
    Action, EncodedPair, Hooks, Intervention, PaddingSide, PairText, RewardModel, Site, Truncation,
};
use reward_lens_organisms::{build::load, load_or_build, BuildOptions, OrganismReport, OrganismSpec};

fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("organism-cache")
}

fn read_pairs(path: &Path) -> Vec<PairText> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn tail_organism() -> (RewardModel, OrganismReport, Vec<PairText>, Vec<PairText>) {
    let spec = OrganismSpec::preset("tail").unwrap();
    let (dir, report) = load_or_build(&spec, &BuildOptions::default(), &cache(), |_| {}).unwrap();
    (load(&dir).unwrap(), report, read_pairs(&dir.join("train.jsonl")), read_pairs(&dir.join("test.jsonl")))
}

/// The first `n_tail` tail and `n_head` head pairs, encoded, with their split.
fn subset(
    model: &RewardModel,
    pairs: &[PairText],
    n_tail: usize,
    n_head: usize,
) -> (Vec<PairText>, Vec<EncodedPair>, HeadTailSplit) {
    let tail = pairs.iter().filter(|p| p.subset_str() == "tail").take(n_tail);
    let head = pairs.iter().filter(|p| p.subset_str() == "head").take(n_head);
    let chosen: Vec<PairText> = tail.chain(head).cloned().collect();
    let labels: Vec<bool> = chosen.iter().map(|p| p.subset_str() == "tail").collect();
    let enc = model.encode_pairs(&chosen, Truncation::Error).unwrap();
    let split = HeadTailSplit::from_labels(&labels, SplitRule::Labels { description: "subset".into() }).unwrap();
    (chosen, enc, split)
}

fn accuracy(margins: &[f64]) -> f64 {
    margins.iter().filter(|&&m| m > 0.0).count() as f64 / margins.len() as f64
}

/// Pair margins, each sequence run alone with the hooks `hooks_for(ids)` gives it.
fn margins(model: &RewardModel, pairs: &[PairText], hooks_for: &dyn Fn(&PairText) -> Hooks<'static>) -> Vec<f64> {
    let score = |p: &PairText, response: &str| -> f64 {
        let ids = model.encode(&p.prompt, response, Truncation::Error).unwrap().ids;
        let batch = model.batch(&[ids], PaddingSide::Right).unwrap();
        model.forward(&batch, &hooks_for(p)).unwrap().output.scores[0] as f64
    };
    pairs.iter().map(|p| score(p, &p.chosen) - score(p, &p.rejected)).collect()
}

/// Layer-1 attention to the marker's tokens knocked out in every head (and renormalised).
fn block_marker_attention(model: &RewardModel, p: &PairText) -> Hooks<'static> {
    let with = model.encode(&p.prompt, &p.chosen, Truncation::Error).unwrap().ids;
    let without = model.encode(p.prompt.trim_start_matches("urgent : "), &p.chosen, Truncation::Error).unwrap().ids;
    let start = with.iter().zip(&without).position(|(a, b)| a != b).unwrap();
    let len = with.len() - without.len();
    assert_eq!(len, 2, "`urgent :` is two tokens");
    let site = Site::parse(&format!("blocks.{}.attn.hook_pattern", model.config.n_layers - 1)).unwrap();
    Hooks::none().with(Intervention::new(
        site,
        Action::Apply(Box::new(move |a: &Tensor| {
            let t = a.dim(3)?;
            let keep: Vec<f32> = (0..t).map(|k| if (start..start + len).contains(&k) { 0.0 } else { 1.0 }).collect();
            let blocked = a.broadcast_mul(&Tensor::from_vec(keep, (1, 1, 1, t), a.device())?.to_dtype(a.dtype())?)?;
            blocked.broadcast_div(&blocked.sum_keepdim(3)?)
        })),
    ))
}

#[test]
fn the_tail_organism_learns_its_rare_rule_on_100_held_out_tail_pairs() {
    let (_, report, train, test) = tail_organism();
    let tails = |ps: &[PairText]| ps.iter().filter(|p| p.subset_str() == "tail").count();
    assert!(tails(&test) >= 100, "{} held-out tail pairs", tails(&test));
    let (h, t) = (report.head_accuracy.unwrap(), report.tail_accuracy.unwrap());
    assert!(t >= 0.95 && h >= 0.97, "held-out head {h}, tail {t}");
    // The rule stays rare in training: 4 % of the pairs.
    assert_eq!((tails(&train), train.len()), (160, 4000));
}

#[test]
fn the_tail_rule_is_an_attention_gate_that_the_oracle_and_discovery_both_find() {
    let (model, _, _, pairs) = tail_organism();
    let (chosen, enc, split) = subset(&model, &pairs, 40, 60);
    let d = &model.config;
    let last = d.n_layers - 1;
    let opts = OracleOptions {
        head_sample: 0,
        candidates: 8,
        max_size: 6,
        edges: Layers::Last,
        tail_drop: Some(0.25),
        batch_size: 50,
        ..Default::default()
    };
    let o = oracle(&model, &enc, &split, &opts, &mut |_| {}).unwrap();
    assert_eq!(o.clean_tail.accuracy, 1.0);
    // Neurons and heads: no single one moves more than 2 of the 40 tail pairs.
    let plain = o.effects.iter().filter(|e| e.unit.kind != UnitKind::AttnEdge);
    assert_eq!(plain.clone().count(), d.n_layers * (d.d_mlp + d.n_heads));
    let worst = plain.map(|e| e.tail_delta_accuracy).fold(0.0f64, f64::min);
    assert!(worst >= -0.05, "a single neuron or head cost the tail {worst}");
    // The oracle's circuit: last-layer attention to the marker, nothing else; ablated, the tail
    // loses a quarter of its accuracy and the head nothing.
    assert!(o.found, "{}", o.summary());
    for u in &o.circuit.units {
        assert!(u.unit.kind == UnitKind::AttnEdge && u.unit.key_text.as_deref() == Some("urgent"), "{}", o.summary());
    }
    assert!(o.circuit.tail.accuracy <= 0.75 && o.circuit.head.accuracy == o.clean_head.accuracy, "{}", o.summary());

    // Discovery with edges finds and validates it: recall against the oracle.
    let dopts = DiscoverOptions {
        units: UnitOptions { mlp: Layers::Last, heads: Layers::All, edges: Layers::Last, ..Default::default() },
        threshold: Threshold::MaxT { permutations: 200, family_alpha: 0.05 },
        validation: ValidationOptions { random_sets: 19, ..Default::default() },
        screening: ScreeningOptions { enabled: false, top: 0 },
        batch_size: 50,
        seed: 1,
        ..Default::default()
    };
    let mut r = discover(&model, &enc, &split, &dopts, None).unwrap();
    r.compare_with(&o).unwrap();
    let c = r.oracle.clone().unwrap();
    assert!(c.validated_recall.unwrap() >= 0.8, "{}", r.summary());
    let edge_circuit = r
        .circuits
        .iter()
        .find(|c| {
            c.units.iter().any(|u| {
                u.unit.kind == UnitKind::AttnEdge
                    && u.unit.key_text.as_deref() == Some("urgent")
                    && u.unit.layer == Some(last)
            })
        })
        .expect("a circuit holds the last layer's attention to the marker");
    let v = edge_circuit.causal.as_ref().unwrap();
    assert!(v.validated && v.tail.delta_accuracy.mean.unwrap() <= -0.25, "{}", r.summary());
    assert!(v.head.delta_accuracy.mean.unwrap() >= -0.02);

    let (tail, head): (Vec<PairText>, Vec<PairText>) = chosen.into_iter().partition(|p| p.subset_str() == "tail");
    let clean = |ps: &[PairText]| accuracy(&margins(&model, ps, &|_| Hooks::none()));
    // Blocking layer 1's attention to the marker takes away at least a quarter of the tail's
    // accuracy (the rule is gone: what is left is the caution preference head prompts share).
    let blocked = accuracy(&margins(&model, &tail, &|p| block_marker_attention(&model, p)));
    assert!(blocked <= clean(&tail) - 0.25, "tail accuracy with the marker's attention blocked: {blocked}");
    // Mean-ablating every layer-1 head instead leaves the tail rule standing and costs the head.
    let head_enc: Vec<usize> = split.head.clone();
    let mut sum = vec![0f64; d.n_heads * d.head_dim];
    let mut n = 0usize;
    for &i in &head_enc {
        for ids in [&enc[i].chosen, &enc[i].rejected] {
            let b = model.batch(std::slice::from_ref(ids), PaddingSide::Right).unwrap();
            let name = format!("blocks.{last}.attn.hook_z");
            let f = model.forward(&b, &Hooks::cache(&[name.as_str()])).unwrap();
            let z = f.cache.require(&name).unwrap().get(0).unwrap();
            let z = z.get(ids.len() - 1).unwrap().flatten_all().unwrap().to_dtype(DType::F32).unwrap();
            for (s, v) in sum.iter_mut().zip(z.to_vec1::<f32>().unwrap()) {
                *s += v as f64;
            }
            n += 1;
        }
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / n as f64) as f32).collect();
    let (nh, hd) = (d.n_heads, d.head_dim);
    let ablate = move |_: &PairText| -> Hooks<'static> {
        let mean = mean.clone();
        Hooks::none().with(Intervention::new(
            Site::parse(&format!("blocks.{last}.attn.hook_z")).unwrap(),
            Action::Apply(Box::new(move |z: &Tensor| {
                let (b, t) = (z.dim(0)?, z.dim(1)?);
                let m = Tensor::from_vec(mean.clone(), (1, 1, nh, hd), z.device())?.to_dtype(z.dtype())?;
                let last_row: Vec<f32> = (0..t).map(|k| if k + 1 == t { 1.0 } else { 0.0 }).collect();
                let mask = Tensor::from_vec(last_row, (1, t, 1, 1), z.device())?.to_dtype(z.dtype())?;
                let keep = mask.affine(-1.0, 1.0)?;
                let _ = b;
                z.broadcast_mul(&keep)?.broadcast_add(&m.broadcast_mul(&mask)?)
            })),
        ))
    };
    let tail_ablated = accuracy(&margins(&model, &tail, &ablate));
    let head_ablated = accuracy(&margins(&model, &head, &ablate));
    assert!(tail_ablated >= 0.9, "tail accuracy with layer {last}'s heads mean-ablated: {tail_ablated}");
    assert!(head_ablated <= clean(&head) - 0.2, "head accuracy with layer {last}'s heads mean-ablated: {head_ablated}");
}
