//! Where one batched forward pass spends its time, stage by stage: the question to answer before
//! optimising a device (kernel launches, layout copies, the T×T attention scores, norms, RoPE).
//!
//! A no-op intervention at each stage boundary waits for the device and notes the time, so every
//! interval between two boundaries is one stage's work, summed over the layers. Waiting at ~12
//! boundaries per layer costs a GPU its queueing; the report therefore gives the plain forward's
//! time beside the sum of the stages. The hooks never change an activation, and none sits on the
//! attention scores, whose hook would turn off the fused softmax.

use std::cell::RefCell;
use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;

use crate::bench::{best_of, describe, random_tokens, MatmulProbe};
use crate::error::Result;
use crate::hooks::{Action, Hooks, Intervention};
use crate::runtime::{device_name, dtype_name};
use crate::synth::LlamaShape;
use crate::{PaddingSide, RewardModel, Rng, Site};

/// The stages, in the order a layer runs them. `None` is the end of the forward pass.
const STAGES: [&str; 13] = [
    "embedding",
    "ln1 + q/k/v projections",
    "RoPE",
    "scores + mask + softmax (T×T)",
    "pattern × values",
    "o projection",
    "ln2 + gate projection",
    "up projection",
    "silu(gate) · up",
    "down projection",
    "residual adds",
    "final norm",
    "head + scores to the host",
];

/// The stage that ends where `site` fires (`None`: the forward pass returned).
fn stage_ending_at(site: Option<Site>) -> &'static str {
    use Site::*;
    let i = match site {
        Some(Embed) => 0,
        Some(V(_)) => 1,
        Some(RotK(_)) => 2,
        Some(Pattern(_)) => 3,
        Some(Z(_)) => 4,
        Some(AttnOut(_)) => 5,
        Some(MlpPre(_)) => 6,
        Some(MlpPreLinear(_)) => 7,
        Some(MlpPost(_)) => 8,
        Some(MlpOut(_)) => 9,
        Some(FinalNormalized) => 11,
        None => 12,
        // resid_mid and resid_post follow the two additions; resid_pre follows nothing.
        Some(_) => 10,
    };
    STAGES[i]
}

/// Matmul FLOPs of a stage over the whole batch (`None` for stages that are not matmuls).
fn stage_flops(shape: &LlamaShape, stage: &str, batch: usize, t: usize) -> Option<f64> {
    let (d, ff) = (shape.d_model as f64, shape.d_mlp as f64);
    let hd = (shape.d_model / shape.n_heads) as f64;
    let (nh, nkv) = (shape.n_heads as f64, shape.n_kv_heads as f64);
    let n = (batch * t) as f64;
    let per_layer = match stage {
        "ln1 + q/k/v projections" => 2.0 * n * d * (nh + 2.0 * nkv) * hd,
        "scores + mask + softmax (T×T)" | "pattern × values" => 2.0 * n * t as f64 * nh * hd,
        "o projection" => 2.0 * n * nh * hd * d,
        "ln2 + gate projection" | "up projection" | "down projection" => 2.0 * n * d * ff,
        _ => return None,
    };
    Some(per_layer * shape.n_layers as f64)
}

/// One stage's share of a forward pass.
#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    pub stage: String,
    /// Seconds over all layers in one forward pass.
    pub seconds: f64,
    /// Fraction of the sum of all stages.
    pub share: f64,
    /// Achieved GFLOP/s of a matmul stage (its matmul FLOPs over its whole time, norm included).
    pub gflops: Option<f64>,
    pub fraction_of_matmul: Option<f64>,
}

/// `reward-lens bench --stages`: a forward pass of the generated model, stage by stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageTimes {
    pub shape: String,
    pub device: String,
    pub dtype: String,
    pub batch: usize,
    pub seq_len: usize,
    pub matmul_gflops: f64,
    /// The fastest forward pass without the stage hooks.
    pub plain_seconds: f64,
    /// The fastest forward pass with them (the sum of the stages).
    pub staged_seconds: f64,
    /// Largest |score with the hooks − score without| (0 on the CPU, where the same kernels run).
    pub scores_max_abs_diff: f64,
    pub stages: Vec<StageRow>,
}

/// Times each stage of a forward pass of `model` (a generated Llama of `shape`) on `batch` random
/// sequences of `seq_len` tokens; the fastest of `iters` passes (after a warm-up) is reported.
pub fn stage_times(
    model: &RewardModel,
    shape: &LlamaShape,
    batch: usize,
    seq_len: usize,
    iters: usize,
) -> Result<StageTimes> {
    let device = model.device.clone();
    let n = if device.is_cpu() { 1024 } else { 8192 };
    let probe = MatmulProbe::new(n, &device, model.dtype)?;
    let mut matmul = probe.best_rate(10)?;
    let mut rng = Rng::new(11);
    let seqs: Vec<Vec<u32>> = (0..batch).map(|_| random_tokens(&mut rng, seq_len, shape.vocab_size)).collect();
    let b = model.batch(&seqs, PaddingSide::Right)?;
    let (plain, plain_out) = best_of(iters, || model.score(&b))?;

    let marks: RefCell<Vec<(Site, Instant)>> = RefCell::new(Vec::new());
    let mut sites = vec![Site::Embed, Site::FinalNormalized];
    for l in 0..shape.n_layers {
        use Site::*;
        sites.extend([V(l), RotK(l), Pattern(l), Z(l), AttnOut(l), ResidMid(l)]);
        sites.extend([MlpPre(l), MlpPreLinear(l), MlpPost(l), MlpOut(l), ResidPost(l)]);
    }
    let mut hooks = Hooks::none();
    for &site in &sites {
        let (marks, device) = (&marks, &device);
        let mark = move |x: &Tensor| -> candle_core::Result<Tensor> {
            device.synchronize()?;
            marks.borrow_mut().push((site, Instant::now()));
            Ok(x.clone())
        };
        hooks = hooks.with(Intervention::new(site, Action::Apply(Box::new(mark))));
    }
    let mut best: Option<(f64, Vec<f64>)> = None;
    let mut max_diff = 0.0f64;
    for i in 0..=iters.max(1) {
        marks.borrow_mut().clear();
        device.synchronize()?;
        let start = Instant::now();
        let out = model.forward(&b, &hooks)?.output;
        device.synchronize()?;
        let end = Instant::now();
        let diff = out.scores.iter().zip(&plain_out.scores).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
        max_diff = max_diff.max(diff);
        let mut per = vec![0.0; STAGES.len()];
        let mut last = start;
        let marks = marks.borrow();
        for (site, at) in marks.iter().map(|&(s, at)| (Some(s), at)).chain([(None, end)]) {
            let k = STAGES.iter().position(|&s| s == stage_ending_at(site)).expect("a listed stage");
            per[k] += at.duration_since(last).as_secs_f64();
            last = at;
        }
        let total = end.duration_since(start).as_secs_f64();
        // As in `bench::speed`: the rate is the best of samples spread over the timed passes.
        matmul = matmul.max(probe.best_rate(3)?);
        // The first pass warms up.
        if i > 0 && best.as_ref().is_none_or(|(t, _)| total < *t) {
            best = Some((total, per));
        }
    }
    let (staged, per) = best.expect("at least one timed pass");
    let stages = STAGES
        .iter()
        .zip(per)
        .map(|(&stage, seconds)| {
            let gflops = stage_flops(shape, stage, batch, seq_len).map(|f| f / seconds / 1e9);
            StageRow {
                stage: stage.into(),
                seconds,
                share: seconds / staged,
                gflops,
                fraction_of_matmul: gflops.map(|g| g / matmul),
            }
        })
        .collect();
    Ok(StageTimes {
        shape: describe(shape),
        device: device_name(&device),
        dtype: dtype_name(model.dtype),
        batch,
        seq_len,
        matmul_gflops: matmul,
        plain_seconds: plain,
        staged_seconds: staged,
        scores_max_abs_diff: max_diff,
        stages,
    })
}

impl StageTimes {
    /// The report as printed: a heading and one row per stage.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Stages of one forward pass: {}, {} × {} tokens, {} on {}\n",
            self.shape, self.batch, self.seq_len, self.dtype, self.device
        );
        s += &format!(
            "plain forward {:.2} ms; with a device wait at every stage boundary {:.2} ms; matmul rate {:.1} GFLOP/s\n\n",
            self.plain_seconds * 1e3,
            self.staged_seconds * 1e3,
            self.matmul_gflops
        );
        s += "| stage | ms | share | GFLOP/s | of matmul rate |\n|---|---|---|---|---|\n";
        for r in &self.stages {
            let (g, f) = match (r.gflops, r.fraction_of_matmul) {
                (Some(g), Some(f)) => (format!("{g:.1}"), format!("{:.0} %", 100.0 * f)),
                _ => ("".into(), "".into()),
            };
            s += &format!("| {} | {:.2} | {:.1} % | {g} | {f} |\n", r.stage, r.seconds * 1e3, 100.0 * r.share);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_add_up_to_the_pass_and_leave_the_scores_alone() {
        let shape = LlamaShape {
            n_layers: 2,
            d_model: 16,
            n_heads: 4,
            n_kv_heads: 2,
            d_mlp: 32,
            vocab_size: 50,
            max_positions: 64,
        };
        let model = crate::bench::generated_model(&shape).unwrap();
        let r = stage_times(&model, &shape, 3, 10, 2).unwrap();
        assert_eq!(r.scores_max_abs_diff, 0.0, "the stage hooks change nothing");
        assert_eq!(r.stages.iter().map(|s| s.stage.as_str()).collect::<Vec<_>>(), STAGES);
        let sum: f64 = r.stages.iter().map(|s| s.seconds).sum();
        assert!((sum - r.staged_seconds).abs() <= 1e-9 * r.staged_seconds.max(1.0), "{sum} vs {}", r.staged_seconds);
        assert!((r.stages.iter().map(|s| s.share).sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(r.stages.iter().all(|s| s.seconds >= 0.0));
        // The seven matmul stages carry FLOPs, and their FLOPs are the forward pass's.
        let flops: f64 = STAGES.iter().filter_map(|s| stage_flops(&shape, s, 3, 10)).sum();
        assert_eq!(r.stages.iter().filter(|s| s.gflops.is_some()).count(), 7);
        assert!((flops - 3.0 * shape.flops_per_sequence(10)).abs() < 1e-6 * flops, "{flops}");
        let text = r.markdown();
        assert!(text.contains("| up projection | "), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("| ")).count(), STAGES.len() + 1);
    }

    #[test]
    fn each_boundary_site_ends_its_stage() {
        assert_eq!(stage_ending_at(Some(Site::V(3))), "ln1 + q/k/v projections");
        assert_eq!(stage_ending_at(Some(Site::ResidMid(0))), "residual adds");
        assert_eq!(stage_ending_at(Some(Site::ResidPost(1))), "residual adds");
        assert_eq!(stage_ending_at(None), "head + scores to the host");
    }
}
