//! The Bradley–Terry trainer: it learns, it moves only what it should, it resumes to the same
//! bytes, and what it saves loads back (through the ordinary loader) with the same scores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use reward_lens_engine::{LoadOptions, PaddingSide, RewardModel, Truncation};
use reward_lens_train::{TokenizedPair, TrainOptions, Trainable, Trainer};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rl-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A task the fixture's tokenizer can express: the reply that names the right colour wins,
/// whatever the padding words around it.
fn pairs(model: &RewardModel, n: usize, seed: u64) -> Vec<TokenizedPair> {
    let mut rng = reward_lens_engine::synth::Rng::new(seed);
    let fillers = ["", "Well, ", "So, ", "Honestly, "];
    (0..n)
        .map(|_| {
            let f = fillers[(rng.next_u64() % 4) as usize];
            let g = fillers[(rng.next_u64() % 4) as usize];
            let enc = |r: String| model.encode("What colour is the sky?", &r, Truncation::Error).unwrap().ids;
            TokenizedPair {
                chosen: enc(format!("{f}it is blue.")),
                rejected: enc(format!("{g}it is green.")),
                subset: if rng.uniform() < 0.5 { "a".into() } else { "b".into() },
            }
        })
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn head_only_training_learns_and_moves_only_the_head() {
    let base = RewardModel::load(&fixture(), &LoadOptions::default()).unwrap();
    let (train, test) = (pairs(&base, 64, 1), pairs(&base, 32, 2));
    let (cfg, weights) = Trainer::load_weights(&fixture()).unwrap();
    let opts = TrainOptions {
        epochs: 6,
        batch_size: 16,
        lr: 3e-2,
        warmup_steps: 2,
        trainable: Trainable::Head,
        ..Default::default()
    };
    let mut t = Trainer::new(cfg.clone(), weights.clone(), opts.clone()).unwrap();
    assert_eq!(t.trainable_parameters(), 64);
    // 24 steps over 64 pairs: a 2-step warm-up is fine; the default 50 would cap the rate at 48 %.
    assert!(t.warmup_warning(64).is_none());
    let long = Trainer::new(cfg, weights.clone(), TrainOptions { warmup_steps: 50, ..opts }).unwrap();
    let w = long.warmup_warning(64).expect("warned");
    assert!(w.contains("(50 steps) is at least the whole run (24 steps") && w.contains("peaks at 48 %"), "{w}");
    let before = t.evaluate(&test).unwrap();
    let report = t.train(&train, &test, None, |_| {}).unwrap();
    let after = report.held_out.clone().unwrap();
    assert!(after.accuracy == 1.0 && before.accuracy < 1.0, "{before:?} → {after:?}");
    assert!(after.mean_loss < before.mean_loss);
    assert_eq!(after.per_subset.values().map(|s| s.n).sum::<usize>(), 32);
    assert_eq!(report.epochs.len(), 6);
    let w = t.weights();
    for (name, t0) in &weights {
        let same = flat(t0) == flat(&w[name]);
        assert_eq!(same, name != "score.weight", "{name}");
    }
}

#[test]
fn last_layers_moves_the_last_block_norm_and_head() {
    let (cfg, weights) = Trainer::load_weights(&fixture()).unwrap();
    let base = RewardModel::load(&fixture(), &LoadOptions::default()).unwrap();
    let train = pairs(&base, 8, 3);
    let opts = TrainOptions { epochs: 1, batch_size: 8, trainable: Trainable::LastLayers(1), ..Default::default() };
    let mut t = Trainer::new(cfg, weights.clone(), opts).unwrap();
    t.train(&train, &[], None, |_| {}).unwrap();
    let w = t.weights();
    for (name, t0) in &weights {
        let moved = flat(t0) != flat(&w[name]);
        let should = name.starts_with("model.layers.2.") || name == "model.norm.weight" || name == "score.weight";
        assert_eq!(moved, should, "{name}");
    }
}

#[test]
fn resumed_training_equals_uninterrupted_and_saved_model_loads_with_same_scores() {
    let base = RewardModel::load(&fixture(), &LoadOptions::default()).unwrap();
    let train = pairs(&base, 24, 4);
    let (cfg, weights) = Trainer::load_weights(&fixture()).unwrap();
    let opts = TrainOptions { epochs: 2, batch_size: 8, lr: 1e-3, warmup_steps: 2, seed: 9, ..Default::default() };
    let mut straight = Trainer::new(cfg.clone(), weights.clone(), opts.clone()).unwrap();
    let mut steps = Vec::new();
    straight.train(&train, &[], None, |s| steps.push(s.loss)).unwrap();
    assert_eq!(steps.len(), 6);

    let ck = tmp("ck");
    // The same run, interrupted in its second epoch: the checkpoint of the first epoch's end stays.
    let mut first = Trainer::new(cfg.clone(), weights.clone(), opts.clone()).unwrap();
    let mut seen = 0;
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        first.train(&train, &[], Some(&ck), |_| {
            seen += 1;
            if seen == 5 {
                panic!("interrupted (on purpose)");
            }
        })
    }));
    assert!(stopped.is_err());
    assert!(Trainer::has_checkpoint(&ck));
    let mut resumed = Trainer::new(cfg.clone(), weights.clone(), opts.clone()).unwrap();
    resumed.resume(&ck).unwrap();
    assert_eq!(resumed.step(), 3);
    let mut later = Vec::new();
    let report = resumed.train(&train, &[], Some(&ck), |s| later.push(s.loss)).unwrap();
    assert_eq!(later, steps[3..].to_vec());
    assert_eq!(report.epochs.len(), 2);
    let (a, b) = (straight.weights(), resumed.weights());
    for name in a.keys() {
        assert_eq!(flat(&a[name]), flat(&b[name]), "{name}");
    }

    // The checkpoint resumes only onto the same base and the same pairs.
    let other_pairs = pairs(&base, 24, 5);
    let mut wrong_data = Trainer::new(cfg.clone(), weights.clone(), opts.clone()).unwrap();
    wrong_data.resume(&ck).unwrap();
    let e = wrong_data.train(&other_pairs, &[], None, |_| {}).unwrap_err().to_string();
    assert!(e.contains("written training on other pairs"), "{e}");
    let mut other_weights = weights.clone();
    let w = &other_weights["model.embed_tokens.weight"];
    other_weights.insert("model.embed_tokens.weight".into(), (w * 1.5).unwrap());
    let trainable_head = TrainOptions { trainable: Trainable::Head, epochs: 1, ..opts.clone() };
    let head_ck = tmp("head-ck");
    let mut head = Trainer::new(cfg.clone(), weights.clone(), trainable_head.clone()).unwrap();
    head.train(&train, &[], Some(&head_ck), |_| {}).unwrap();
    let mut wrong_base = Trainer::new(cfg.clone(), other_weights, trainable_head.clone()).unwrap();
    let e = wrong_base.resume(&head_ck).unwrap_err().to_string();
    assert!(e.contains("written for another base model"), "{e}");
    // Nor with another epoch count: the learning-rate schedule spans every epoch.
    let more = TrainOptions { epochs: 3, ..trainable_head.clone() };
    let e = Trainer::new(cfg.clone(), weights.clone(), more).unwrap().resume(&head_ck).unwrap_err().to_string();
    assert!(e.contains("written for 1 epochs, not 3") && e.contains("--epochs 1"), "{e}");
    Trainer::new(cfg.clone(), weights.clone(), trainable_head).unwrap().resume(&head_ck).unwrap();
    let _ = std::fs::remove_dir_all(head_ck);

    // Saved as a HuggingFace directory, it loads through the ordinary loader with the same scores.
    let out = tmp("saved");
    straight.save_pretrained(&out, Some(&fixture())).unwrap();
    let loaded = RewardModel::load(&out, &LoadOptions::default()).unwrap();
    let seqs: Vec<Vec<u32>> = train.iter().take(4).map(|p| p.chosen.clone()).collect();
    let s1 = loaded.score(&loaded.batch(&seqs, PaddingSide::Right).unwrap()).unwrap().scores;
    let m = straight.model().unwrap();
    let s2 = m.score(&m.batch(&seqs, PaddingSide::Right).unwrap()).unwrap().scores;
    assert_eq!(s1, s2);
    let _ = std::fs::remove_dir_all(ck);
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn bad_options_and_checkpoints_are_clear_errors() {
    let (cfg, weights) = Trainer::load_weights(&fixture()).unwrap();
    let no_head: HashMap<String, Tensor> =
        weights.iter().filter(|(k, _)| !k.starts_with("score.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let e = Trainer::new(cfg.clone(), no_head, TrainOptions { trainable: Trainable::Head, ..Default::default() });
    assert!(e.err().unwrap().to_string().contains("no weight is trainable"));
    // Rates that fail no step but write NaN (or ascending) weights are refused up front.
    let refused = |o: TrainOptions| Trainer::new(cfg.clone(), weights.clone(), o).err().expect("refused").to_string();
    for lr in [f64::NAN, -1e-3, 0.0, f64::INFINITY] {
        assert!(refused(TrainOptions { lr, ..Default::default() }).contains("learning rate"), "{lr}");
    }
    assert!(refused(TrainOptions { weight_decay: f64::NAN, ..Default::default() }).contains("weight decay NaN"));
    assert!(
        refused(TrainOptions { max_grad_norm: -1.0, ..Default::default() }).contains("expected a finite number ≥ 0")
    );
    assert!(Trainer::new(
        cfg.clone(),
        weights.clone(),
        TrainOptions { weight_decay: 0.0, max_grad_norm: 0.0, ..Default::default() }
    )
    .is_ok());
    let ck = tmp("badck");
    std::fs::create_dir_all(&ck).unwrap();
    let t = Trainer::new(cfg.clone(), weights.clone(), TrainOptions::default()).unwrap();
    t.save_checkpoint(&ck).unwrap();
    // More trainable blocks than the model has is an error, not `all` under another name.
    let deep = TrainOptions { trainable: Trainable::LastLayers(99), ..Default::default() };
    let e = Trainer::new(cfg.clone(), weights.clone(), deep).err().unwrap().to_string();
    assert!(e.contains("trainable last:99: the model has"), "{e}");
    let mut other = Trainer::new(cfg, weights, TrainOptions { lr: 0.5, ..Default::default() }).unwrap();
    let msg = other.resume(&ck).unwrap_err().to_string();
    assert!(msg.contains("other options") && msg.contains(&ck.display().to_string()), "{msg}");
    assert!("last:0".parse::<Trainable>().is_err() && "last:2".parse::<Trainable>() == Ok(Trainable::LastLayers(2)));
    let _ = std::fs::remove_dir_all(ck);
}
