//! Every matrix product rounds the same on every machine: gemm's depth blocks follow one fixed
//! L1 geometry (the vendored, patched gemm-common; vendor/README.md), not this machine's cache.

use candle_core::{Device, Tensor};
use reward_lens_engine::Rng;

/// The depth block for f32's 16 × 6 tiles is the one a 48 KiB 12-way L1 gives, wherever this runs
/// (an unpatched gemm-common gives 470 on an 8-way L1 here, for k = 1408).
#[test]
fn depth_blocks_do_not_depend_on_this_machines_l1() {
    assert_eq!(gemm_common::cache::REPRODUCIBLE_L1.associativity, 12);
    let kc = |k: usize| gemm_common::cache::kernel_params(256, 256, k, 16, 6, 4).kc;
    assert_eq!((kc(512), kc(1000), kc(1024), kc(1408), kc(4096)), (512, 1000, 1024, 704, 1024));
}

/// A 70 × 1000 · 1000 × 70 product through candle sums each output in one depth block: a single
/// fused multiply-add chain over k, bit for bit. On a machine whose L1 gave two blocks of 500
/// (unpatched, 8-way), about half the outputs differ in their last bits.
#[test]
fn a_product_over_1000_terms_is_one_fused_chain_on_any_machine() {
    #[cfg(feature = "avx512")]
    return; // gemm's AVX-512 kernels keep other partial sums.
    let (m, k, n) = (70, 1000, 70);
    let mut rng = Rng::new(5);
    let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
    let at = Tensor::from_vec(a.clone(), (m, k), &Device::Cpu).unwrap();
    let bt = Tensor::from_vec(b.clone(), (k, n), &Device::Cpu).unwrap();
    let got = at.matmul(&bt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (mut chain, mut split) = (0, 0);
    for i in 0..m {
        for j in 0..n {
            let dot = |r: std::ops::Range<usize>| r.fold(0f32, |acc, p| a[i * k + p].mul_add(b[p * n + j], acc));
            let one = dot(0..k);
            chain += usize::from(got[i * n + j].to_bits() == one.to_bits());
            split += usize::from(one.to_bits() != (dot(0..500) + dot(500..k)).to_bits());
        }
    }
    assert_eq!(chain, m * n, "outputs equal to one fused chain over k");
    assert!(split > m * n / 10, "two blocks would round {split} of {} outputs otherwise", m * n);
}
