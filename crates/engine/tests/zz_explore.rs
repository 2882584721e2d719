mod common;
use common::*;
use reward_lens_engine::*;

#[test]
fn explore() {
    for dt in [DType::F32, DType::F64] {
        let model = RewardModel::load(&model_dir("llama"), &LoadOptions { dtype: dt, device: Device::Cpu }).unwrap();
        let p = &pairs()[0];
        let enc = model.encode(p["prompt"].as_str().unwrap(), p["chosen"].as_str().unwrap(), Truncation::Error).unwrap();
        let batch = model.batch(&[enc.ids.clone()], PaddingSide::Right).unwrap();
        let g = model.gradients(&batch, &SiteFilter::new(&["blocks.1.hook_attn_out"]), &[1.0], &Hooks::none()).unwrap();
        println!("{dt:?} values {:?} grads {:?} obj {} score {:?}", g.values.names(), g.grads.names(), g.objective, g.output.scores);
        let gr = g.grads.get("blocks.1.hook_attn_out").unwrap();
        println!("grad dtype {:?} dims {:?}", gr.dtype(), gr.dims());
        let flat: Vec<f64> = gr.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut idx: Vec<usize> = (0..flat.len()).collect();
        idx.sort_by(|&a, &b| flat[b].abs().partial_cmp(&flat[a].abs()).unwrap());
        for &i in idx.iter().take(4) {
            for eps in [1e-1, 1e-2, 1e-3, 1e-4] {
                let run = |e: f64| {
                    let mut d = vec![0f64; flat.len()];
                    d[i] = e;
                    let t = Tensor::from_vec(d, gr.dims(), &Device::Cpu).unwrap().to_dtype(dt).unwrap();
                    model.forward(&batch, &Hooks::none().with(Intervention::new(Site::AttnOut(1), Action::Add(t)))).unwrap().output.scores[0] as f64
                };
                let fd = (run(eps) - run(-eps)) / (2.0 * eps);
                println!("  i {i} eps {eps} grad {:.8} fd {:.8} rel {:.2e}", flat[i], fd, (fd - flat[i]).abs() / flat[i].abs());
            }
        }
    }
}
