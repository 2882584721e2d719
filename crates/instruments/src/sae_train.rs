//! TopK SAE training on CPU with candle autograd.
//!
//! Loss: ‖x − x̂‖² (mean over the batch) plus AuxK (`aux_coef` × the same loss of reconstructing
//! the residual error from the `k_aux` largest *dead* latents — latents that have not fired for
//! `dead_after` batches — which revives them). Adam with linear warm-up then cosine decay; decoder
//! rows renormalised to unit length after every step; `b_dec` initialised at the geometric median
//! of the data (Weiszfeld); `W_enc` initialised as `W_decᵀ`. Inputs are scaled so their mean
//! squared norm is `d_in`, and the scale is folded back into the weights on return, so the saved
//! SAE reads raw activations. Any number of samples ≥ 1 works (batches never exceed it).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::Serialize;

use reward_lens_engine::synth::Rng;

use crate::sae::{topk_relu, Architecture, Sae};
use crate::{InstrumentError, Result};

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub d_sae: usize,
    pub k: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Fraction of all steps spent warming up.
    pub warmup: f64,
    pub aux_coef: f64,
    pub k_aux: usize,
    pub dead_after: usize,
    pub seed: u64,
    pub hook_name: String,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            d_sae: 4096,
            k: 32,
            epochs: 10,
            batch_size: 1024,
            lr: 4e-4,
            warmup: 0.05,
            aux_coef: 1.0 / 32.0,
            k_aux: 256,
            dead_after: 50,
            seed: 0,
            hook_name: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub mse: f64,
    /// Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − mean‖².
    pub fvu: f64,
    /// Mean active latents per sample.
    pub l0: f64,
    /// Latents that never fired during the epoch.
    pub dead_fraction: f64,
}

impl EpochMetrics {
    /// "FVU 0.123, L0 32.0, dead 1.5%".
    pub fn summary(&self) -> String {
        format!("FVU {:.3}, L0 {:.1}, dead {:.1}%", self.fvu, self.l0, 100.0 * self.dead_fraction)
    }
}

fn err(m: impl Into<String>) -> InstrumentError {
    InstrumentError::Invalid(m.into())
}

/// Geometric median by Weiszfeld iterations (robust b_dec initialisation).
pub fn geometric_median(x: &Tensor, iters: usize) -> Result<Tensor> {
    let mut m = x.mean(0)?;
    for _ in 0..iters {
        let dist = x.broadcast_sub(&m)?.sqr()?.sum(1)?.sqrt()?.clamp(1e-8, f64::INFINITY)?;
        let w = dist.recip()?;
        m = x.broadcast_mul(&w.unsqueeze(1)?)?.sum(0)?.broadcast_div(&w.sum_all()?)?;
    }
    Ok(m)
}

fn unit_rows(w: &Tensor) -> Result<Tensor> {
    Ok(w.broadcast_div(&w.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?)?)
}

/// Trains a TopK SAE on `data` `[N, d_in]`, calling `on_epoch` after every epoch.
pub fn train(
    data: &Tensor,
    opts: &TrainOptions,
    mut on_epoch: impl FnMut(&EpochMetrics),
) -> Result<(Sae, Vec<EpochMetrics>)> {
    let (n, d_in) = data.dims2()?;
    if n == 0 {
        return Err(err("no activations to train on"));
    }
    if opts.k == 0 || opts.k > opts.d_sae {
        return Err(err(format!("k = {} must be between 1 and d_sae = {}", opts.k, opts.d_sae)));
    }
    if opts.epochs == 0 {
        return Err(err("epochs = 0: train for at least one epoch"));
    }
    if opts.batch_size == 0 {
        return Err(err("batch_size = 0: a step needs at least one activation"));
    }
    if !(opts.lr.is_finite() && opts.lr > 0.0) {
        return Err(err(format!("learning rate {}: expected a finite number > 0", opts.lr)));
    }
    let dev = Device::Cpu;
    let data = data.to_dtype(DType::F32)?;
    // Normalise so that E‖x‖² = d_in.
    let mean_sq = data.sqr()?.sum(1)?.mean_all()?.to_scalar::<f32>()? as f64;
    let scale = if mean_sq > 0.0 { (d_in as f64 / mean_sq).sqrt() } else { 1.0 };
    let x_all = (data * scale)?;
    let mut rng = Rng::new(opts.seed);
    let init: Vec<f32> = (0..opts.d_sae * d_in).map(|_| rng.normal() as f32).collect();
    let w_dec0 = unit_rows(&Tensor::from_vec(init, (opts.d_sae, d_in), &dev)?)?;
    let w_dec = Var::from_tensor(&w_dec0)?;
    let w_enc = Var::from_tensor(&w_dec0.t()?.contiguous()?)?;
    let b_enc = Var::from_tensor(&Tensor::zeros(opts.d_sae, DType::F32, &dev)?)?;
    let b_dec = Var::from_tensor(&geometric_median(&x_all, 20)?)?;
    let mut opt = AdamW::new(
        vec![w_enc.clone(), w_dec.clone(), b_enc.clone(), b_dec.clone()],
        ParamsAdamW { lr: opts.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
    )?;
    let bs = opts.batch_size.clamp(1, n);
    let steps_per_epoch = n.div_ceil(bs);
    let total = (steps_per_epoch * opts.epochs).max(1);
    let warm = ((opts.warmup * total as f64).ceil() as usize).max(1);
    let mut since_fired = vec![0usize; opts.d_sae];
    let centred_var = x_all.broadcast_sub(&x_all.mean(0)?)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let mut history = Vec::with_capacity(opts.epochs);
    let mut step = 0usize;
    for epoch in 0..opts.epochs {
        // Seeded shuffle.
        let mut order: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut order);
        let (mut sse, mut l0, mut fired) = (0.0f64, 0.0f64, vec![false; opts.d_sae]);
        for chunk in order.chunks(bs) {
            let lr = if step < warm {
                opts.lr * (step + 1) as f64 / warm as f64
            } else {
                let p = (step - warm) as f64 / (total - warm).max(1) as f64;
                opts.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            };
            opt.set_learning_rate(lr);
            let idx = Tensor::from_slice(chunk, chunk.len(), &dev)?;
            let x = x_all.index_select(&idx, 0)?;
            let pre =
                x.broadcast_sub(b_dec.as_tensor())?.matmul(w_enc.as_tensor())?.broadcast_add(b_enc.as_tensor())?;
            let f = topk_relu(&pre, opts.k)?;
            let x_hat = f.matmul(w_dec.as_tensor())?.broadcast_add(b_dec.as_tensor())?;
            let e = (&x - &x_hat)?;
            let mse = e.sqr()?.sum(1)?.mean_all()?;
            let mut loss = mse.clone();
            // AuxK on dead latents.
            let dead: Vec<u8> = since_fired.iter().map(|&s| u8::from(s >= opts.dead_after)).collect();
            let n_dead = dead.iter().filter(|d| **d == 1).count();
            if n_dead > 0 && opts.aux_coef > 0.0 {
                let mask = Tensor::from_vec(dead, opts.d_sae, &dev)?.broadcast_as(pre.shape())?;
                let neg = Tensor::new(-1e9f32, &dev)?.broadcast_as(pre.shape())?;
                let pre_dead = mask.where_cond(&pre, &neg)?;
                let f_aux = topk_relu(&pre_dead, opts.k_aux.min(n_dead))?;
                let e_hat = f_aux.matmul(w_dec.as_tensor())?;
                let aux = (e.detach() - e_hat)?.sqr()?.sum(1)?.mean_all()?;
                loss = (loss + (aux * opts.aux_coef)?)?;
            }
            opt.backward_step(&loss)?;
            w_dec.set(&unit_rows(w_dec.as_tensor())?)?;
            // Bookkeeping.
            let active = f.gt(0f32)?.to_dtype(DType::F32)?;
            let per_latent: Vec<f32> = active.sum(0)?.to_vec1()?;
            for (i, c) in per_latent.iter().enumerate() {
                if *c > 0.0 {
                    since_fired[i] = 0;
                    fired[i] = true;
                } else {
                    since_fired[i] += 1;
                }
            }
            sse += e.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            l0 += active.sum_all()?.to_scalar::<f32>()? as f64;
            step += 1;
        }
        let m = EpochMetrics {
            epoch,
            mse: sse / n as f64 / (scale * scale),
            fvu: if centred_var > 0.0 { sse / centred_var } else { f64::NAN },
            l0: l0 / n as f64,
            dead_fraction: fired.iter().filter(|f| !**f).count() as f64 / opts.d_sae as f64,
        };
        // A run that blew up leaves NaN or ∞ weights; saved, they would decompose every reward
        // into NaN terms.
        if !sse.is_finite() {
            return Err(err(format!(
                "training diverged in epoch {}: the reconstruction error is {sse}; lower the learning rate (now {})",
                epoch + 1,
                opts.lr
            )));
        }
        on_epoch(&m);
        history.push(m);
    }
    // Fold the input scale back: the SAE reads and writes raw activations.
    let sae = Sae {
        w_enc: (w_enc.as_tensor() * scale)?,
        w_dec: (w_dec.as_tensor() / scale)?,
        b_enc: b_enc.as_tensor().clone(),
        b_dec: (b_dec.as_tensor() / scale)?,
        architecture: Architecture::TopK { k: opts.k },
        hook_name: opts.hook_name.clone(),
        d_in,
        d_sae: opts.d_sae,
        model: None,
        apply_b_dec_to_input: true,
    };
    Ok((sae, history))
}

/// [`train`] on every activation of a `sae collect` directory, the SAE hooked at the collected
/// site (`opts.hook_name` is overridden) and knowing the collection's model; returns the collection's manifest too.
pub fn train_collection(
    acts: &std::path::Path,
    opts: &TrainOptions,
    on_epoch: impl FnMut(&EpochMetrics),
) -> Result<(crate::collect::Manifest, Sae, Vec<EpochMetrics>)> {
    let (m, data) = crate::collect::load_all(acts)?;
    let opts = TrainOptions { hook_name: m.site.clone(), ..opts.clone() };
    let (mut sae, hist) = train(&data, &opts, on_epoch)?;
    sae.model = Some(m.model.clone()).filter(|f| !f.is_empty());
    Ok((m, sae, hist))
}

/// How fast [`train`] ran: the figure of `reward-lens bench --sae`.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// What was trained on, e.g. "blocks.1.hook_resid_post of the generated 2-layer d_model 64 Llama".
    pub source: String,
    pub activations: usize,
    pub epochs: usize,
    pub seconds: f64,
    /// Metrics after the last epoch.
    pub last: EpochMetrics,
}

impl Throughput {
    /// Activations trained on per second, over every epoch.
    pub fn activations_per_second(&self) -> f64 {
        (self.activations * self.epochs) as f64 / self.seconds
    }

    /// The bench's heading (with `opts`' shape and the thread count), then its three-line
    /// table: rate, FVU reached, dead latents.
    pub fn markdown(&self, opts: &TrainOptions) -> String {
        let (n, source, threads) = (self.activations, &self.source, reward_lens_engine::bench::threads_label());
        format!(
            "TopK SAE training on {n} activations collected at {source}: d_sae {}, k {}, batch {}, {} epochs, {threads} thread(s)\n\
             | activations / s | FVU after the last epoch | dead latents |\n|---|---|---|\n| {:.0} | {:.3} | {:.1} % |\n",
            opts.d_sae,
            opts.k,
            opts.batch_size,
            self.epochs,
            self.activations_per_second(),
            self.last.fvu,
            100.0 * self.last.dead_fraction
        )
    }
}

/// [`train`], timed; the trained SAE is dropped.
pub fn throughput(
    source: &str,
    data: &Tensor,
    opts: &TrainOptions,
    on_epoch: impl FnMut(&EpochMetrics),
) -> Result<Throughput> {
    let start = std::time::Instant::now();
    let (_, hist) = train(data, opts, on_epoch)?;
    let seconds = start.elapsed().as_secs_f64();
    let last = hist.last().cloned().ok_or_else(|| err("no epochs to time"))?;
    Ok(Throughput { source: source.to_string(), activations: data.dim(0)?, epochs: hist.len(), seconds, last })
}

/// Options of `reward-lens bench --sae`: d_sae 4096, k 32, batch 1024, lr 4e-4, seed 1.
pub fn bench_options(epochs: usize) -> TrainOptions {
    TrainOptions {
        d_sae: 4096,
        k: 32,
        batch_size: 1024,
        epochs: epochs.max(1),
        lr: 4e-4,
        seed: 1,
        ..Default::default()
    }
}

/// `reward-lens bench --sae`: [`throughput`] with [`bench_options`] on 16,384 activations of
/// `model` at `site` (128 seeded random sequences × 128 tokens).
pub fn bench(
    model: &reward_lens_engine::RewardModel,
    site: reward_lens_engine::Site,
    epochs: usize,
    on_epoch: impl FnMut(&EpochMetrics),
) -> Result<Throughput> {
    let data = reward_lens_engine::bench::site_activations(model, site, 16, 8, 128)?;
    let c = &model.config;
    let source = format!("{} of the generated {}-layer d_model {} Llama", site.name(), c.n_layers, c.d_model);
    throughput(&source, &data, &bench_options(epochs), on_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data made of known sparse directions: each sample is a sum of 3 of 32 unit directions in
    /// 24 dimensions with positive coefficients.
    fn synthetic(n: usize, seed: u64) -> (Tensor, Vec<Vec<f32>>) {
        let (d, m) = (24, 32);
        let mut rng = Rng::new(seed);
        let dirs: Vec<Vec<f32>> = (0..m)
            .map(|_| {
                let v: Vec<f32> = (0..d).map(|_| rng.normal() as f32).collect();
                let nrm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter().map(|x| x / nrm).collect()
            })
            .collect();
        let mut data = Vec::with_capacity(n * d);
        for _ in 0..n {
            let mut x = vec![0f32; d];
            for _ in 0..3 {
                let j = rng.below(m);
                let c = 1.0 + rng.uniform() as f32;
                x.iter_mut().zip(&dirs[j]).for_each(|(a, b)| *a += c * b);
            }
            data.extend(x);
        }
        (Tensor::from_vec(data, (n, d), &Device::Cpu).unwrap(), dirs)
    }

    #[test]
    fn trains_on_a_collection_hooked_at_its_site() {
        let (data, _) = synthetic(100, 4);
        let dir = std::env::temp_dir().join(format!("rl-sae-collection-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shard = std::collections::HashMap::from([("activations".to_string(), data)]);
        candle_core::safetensors::save(&shard, dir.join("acts-00000.safetensors")).unwrap();
        let m = crate::collect::Manifest {
            site: "blocks.1.hook_resid_post".into(),
            d: 24,
            shards: vec!["acts-00000.safetensors".into()],
            sequences_done: 10,
            activations: 100,
            model: "0123456789abcdef".into(),
            ..Default::default()
        };
        std::fs::write(dir.join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
        let opts = TrainOptions {
            d_sae: 8,
            k: 2,
            epochs: 2,
            batch_size: 32,
            hook_name: "ignored".into(),
            ..Default::default()
        };
        let (m, sae, hist) = train_collection(&dir, &opts, |_| {}).unwrap();
        assert_eq!((m.activations, sae.hook_name.as_str(), hist.len()), (100, "blocks.1.hook_resid_post", 2));
        assert_eq!((sae.d_in, sae.d_sae), (24, 8));
        // It knows its model, through cfg.json too; another model is warned about.
        sae.save(&dir.join("sae")).unwrap();
        let back = Sae::load(&dir.join("sae")).unwrap();
        assert_eq!(back.model.as_deref(), Some("0123456789abcdef"));
        assert!(back.provenance_warning("0123456789abcdef").is_none());
        let w = back.provenance_warning("fedcba9876543210").expect("another model");
        assert!(w.contains("fingerprint 0123456789abcdef, this model fedcba9876543210"), "{w}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn throughput_counts_every_epoch_and_reports_the_last() {
        let (data, _) = synthetic(200, 3);
        let opts = TrainOptions { d_sae: 16, k: 3, epochs: 2, batch_size: 64, seed: 1, ..Default::default() };
        let mut seen = Vec::new();
        let t = throughput("toy data", &data, &opts, |m| seen.push(m.fvu)).unwrap();
        assert_eq!((t.activations, t.epochs, seen.len()), (200, 2, 2));
        assert_eq!(t.last.fvu, seen[1]);
        let m = EpochMetrics { epoch: 0, mse: 0.0, fvu: 0.1234, l0: 3.0, dead_fraction: 0.015 };
        assert_eq!(m.summary(), "FVU 0.123, L0 3.0, dead 1.5%");
        assert!((t.activations_per_second() * t.seconds - 400.0).abs() < 1e-6);
        let text = t.markdown(&opts);
        let rows: Vec<&str> = text.lines().collect::<Vec<_>>();
        assert_eq!(rows.len(), 4);
        assert!(rows[0].starts_with(
            "TopK SAE training on 200 activations collected at toy data: d_sae 16, k 3, batch 64, 2 epochs, "
        ));
        assert!(rows[3].ends_with(&format!("| {:.3} | {:.1} % |", t.last.fvu, 100.0 * t.last.dead_fraction)));
    }

    #[test]
    fn recovers_planted_sparse_directions() {
        let (data, dirs) = synthetic(4000, 1);
        let opts = TrainOptions {
            d_sae: 64,
            k: 3,
            epochs: 30,
            batch_size: 256,
            lr: 3e-3,
            dead_after: 20,
            seed: 2,
            ..Default::default()
        };
        let (sae, hist) = train(&data, &opts, |_| {}).unwrap();
        let last = hist.last().unwrap();
        assert!(last.fvu < hist[0].fvu, "loss goes down: {} → {}", hist[0].fvu, last.fvu);
        assert!(last.l0 <= 3.0 + 1e-9);
        let dec = unit_rows(&sae.w_dec).unwrap().to_vec2::<f32>().unwrap();
        let best: Vec<f32> = dirs
            .iter()
            .map(|v| dec.iter().map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum::<f32>()).fold(f32::MIN, f32::max))
            .collect();
        let recovered = best.iter().filter(|c| **c >= 0.9).count();
        eprintln!("recovered {recovered}/32 directions at cosine ≥ 0.9; FVU {:.3} → {:.3}", hist[0].fvu, last.fvu);
        assert!(recovered as f64 >= 0.8 * dirs.len() as f64, "recovered {recovered}/32: {best:?}");
    }

    #[test]
    fn any_sample_count_works_and_scale_folds_back() {
        let (data, _) = synthetic(3, 5);
        let data = (data * 7.0).unwrap();
        let opts = TrainOptions { d_sae: 16, k: 2, epochs: 2, batch_size: 1024, seed: 1, ..Default::default() };
        let (sae, hist) = train(&data, &opts, |_| {}).unwrap();
        assert_eq!(hist.len(), 2);
        // The returned SAE works on raw (unscaled) activations: its MSE matches the metric.
        let x_hat = sae.decode(&sae.encode(&data).unwrap()).unwrap();
        let mse =
            (&data - x_hat).unwrap().sqr().unwrap().sum(1).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(mse.is_finite());
        assert!(train(&data.narrow(0, 0, 0).unwrap(), &opts, |_| {}).is_err());
    }

    /// Options that cannot train are refused up front; a run that diverges is an error, never an
    /// SAE with NaN or infinite weights.
    #[test]
    fn bad_options_and_divergence_are_errors() {
        let (data, _) = synthetic(3, 5);
        let opts = TrainOptions { d_sae: 16, k: 2, epochs: 1, batch_size: 64, seed: 1, ..Default::default() };
        let msg = |o: TrainOptions| train(&data, &o, |_| {}).err().expect("refused").to_string();
        assert!(msg(TrainOptions { epochs: 0, ..opts.clone() }).contains("epochs = 0"));
        assert!(msg(TrainOptions { batch_size: 0, ..opts.clone() }).contains("batch_size = 0"));
        for lr in [f64::NAN, f64::INFINITY, 0.0, -1e-3] {
            assert!(msg(TrainOptions { lr, ..opts.clone() }).contains("expected a finite number > 0"), "{lr}");
        }
        // The first step's error is measured before any update: the blow-up shows in epoch 2.
        let e = msg(TrainOptions { lr: 1e9, epochs: 3, ..opts.clone() });
        assert!(e.contains("diverged in epoch 2") && e.contains("lower the learning rate"), "{e}");
        assert!(train(&data, &opts, |_| {}).is_ok());
    }

    #[test]
    fn loss_gradient_matches_finite_differences() {
        // ‖x − (topk(relu((x − b_dec) W_enc + b_enc)) W_dec + b_dec)‖² in f64, differentiated with
        // respect to W_enc and W_dec; central differences with a step small enough not to change
        // which latents the top-k selects.
        let dev = Device::Cpu;
        let mut rng = Rng::new(11);
        let mut rand = |r: usize, c: usize| {
            Tensor::from_vec((0..r * c).map(|_| rng.normal()).collect::<Vec<f64>>(), (r, c), &dev).unwrap()
        };
        let (x, we, wd, be, bd) =
            (rand(6, 5), rand(5, 12), rand(12, 5), rand(1, 12).squeeze(0).unwrap(), rand(1, 5).squeeze(0).unwrap());
        let loss = |we: &Tensor, wd: &Tensor| -> Tensor {
            let pre = x.broadcast_sub(&bd).unwrap().matmul(we).unwrap().broadcast_add(&be).unwrap();
            let f = topk_relu(&pre, 3).unwrap();
            let xh = f.matmul(wd).unwrap().broadcast_add(&bd).unwrap();
            (&x - xh).unwrap().sqr().unwrap().sum_all().unwrap()
        };
        let (ve, vd) = (Var::from_tensor(&we).unwrap(), Var::from_tensor(&wd).unwrap());
        let g = loss(ve.as_tensor(), vd.as_tensor()).backward().unwrap();
        let (ge, gd) = (
            g.get(ve.as_tensor()).unwrap().to_vec2::<f64>().unwrap(),
            g.get(vd.as_tensor()).unwrap().to_vec2::<f64>().unwrap(),
        );
        let eps = 1e-6;
        let bump = |t: &Tensor, i: usize, j: usize, d: f64| -> Tensor {
            let mut v = t.to_vec2::<f64>().unwrap();
            v[i][j] += d;
            Tensor::new(v, &dev).unwrap()
        };
        let val = |t: Tensor| t.to_scalar::<f64>().unwrap();
        let mut checked = 0;
        for (i, j) in [(0, 0), (1, 3), (4, 7), (2, 11), (3, 5)] {
            let fd = (val(loss(&bump(&we, i, j, eps), &wd)) - val(loss(&bump(&we, i, j, -eps), &wd))) / (2.0 * eps);
            assert!((fd - ge[i][j]).abs() < 1e-5 * (1.0 + fd.abs()), "W_enc[{i}][{j}]: {fd} vs {}", ge[i][j]);
            checked += usize::from(fd != 0.0);
        }
        for (i, j) in [(0, 0), (5, 2), (11, 4), (7, 1)] {
            let fd = (val(loss(&we, &bump(&wd, i, j, eps))) - val(loss(&we, &bump(&wd, i, j, -eps)))) / (2.0 * eps);
            assert!((fd - gd[i][j]).abs() < 1e-5 * (1.0 + fd.abs()), "W_dec[{i}][{j}]: {fd} vs {}", gd[i][j]);
        }
        assert!(checked > 0, "some encoder entries feed selected latents");
    }
}
