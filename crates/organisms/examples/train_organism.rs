//! `cargo run --release -p reward-lens-organisms --example train_organism -- PRESET DIR [EPOCHS]`
use reward_lens_organisms::{build, BuildOptions, OrganismSpec};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let spec = OrganismSpec::try_preset(&args[1]).expect("preset");
    reward_lens_engine::runtime::tune_allocator();
    let mut opts = BuildOptions::default();
    let env = |k: &str| std::env::var(k).ok();
    if let Some(v) = env("LR") {
        opts.train.lr = v.parse().unwrap();
    }
    if let Some(v) = env("DMLP") {
        opts.shape.d_mlp = v.parse().unwrap();
    }
    if let Some(v) = env("LAYERS") {
        opts.shape.n_layers = v.parse().unwrap();
    }
    if let Some(v) = env("BS") {
        opts.train.batch_size = v.parse().unwrap();
    }
    if let Some(v) = env("DMODEL") {
        opts.shape.d_model = v.parse().unwrap();
    }
    if let Some(e) = args.get(3) {
        opts.train.epochs = e.parse().expect("epochs");
    }
    let (mut la, mut aa, mut k) = (0.0, 0.0, 0);
    let t0 = std::time::Instant::now();
    let (report, _) = build(&spec, args[2].as_ref(), &opts, |p| {
        let reward_lens_organisms::BuildProgress::Step(s) = p else { return };
        la += s.loss;
        aa += s.accuracy;
        k += 1;
        if s.step % 125 == 0 {
            eprintln!(
                "step {}/{} loss {:.3} acc {:.3} {:.0}s",
                s.step,
                s.total_steps,
                la / k as f64,
                aa / k as f64,
                t0.elapsed().as_secs_f64()
            );
            la = 0.0;
            aa = 0.0;
            k = 0;
        }
    })
    .expect("build");
    for e in &report.training.epochs {
        let h = e.held_out.as_ref().unwrap();
        println!(
            "epoch {} train {:.3} held {:.3} {:?} ",
            e.epoch,
            e.train_accuracy,
            h.accuracy,
            h.per_subset.values().map(|s| s.accuracy).collect::<Vec<_>>()
        );
    }
    println!("seconds {:.1}", report.seconds);
}
