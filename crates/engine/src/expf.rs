//! `e^x` over f32 slices, bit-identical to the platform's scalar `f32::exp`, four lanes at a time.
//!
//! SiLU and attention's softmax spend most of their time in `expf`, one libm call per element.
//! glibc's `expf` (2.27 onwards, the ARM optimized-routines algorithm) is a 32-entry table of
//! 2^(i/32) and a cubic in double precision; on an x86-64 with FMA glibc runs its FMA build, whose
//! fused operations are known from its machine code. Doing the same double-precision operations
//! with AVX2 + FMA gives the same float for every input: checked here for all 2³² inputs against
//! glibc 2.36 (`exhaustively_equals_the_scalar_exp_for_every_float`, ignored for its minute of
//! run time). So the kernels using it stay bit-identical to candle's composed ops, which call libm.
//!
//! Another libm (or glibc's non-FMA build on a CPU without FMA) rounds a few inputs in ten
//! thousand differently. The vector path is therefore only taken after a self-check at first use
//! finds it equal to `f32::exp` on 70 000 inputs, including two that tell glibc's FMA and
//! non-FMA builds apart; anywhere else every element goes through `f32::exp` as before.

use std::sync::OnceLock;

/// 2^(i/32) as binary64 words, minus i << 47 (so adding k << 47 for k ≡ i mod 32 scales by 2^⌊k/32⌋).
#[cfg(target_arch = "x86_64")]
const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// 32 / ln 2.
#[cfg(target_arch = "x86_64")]
const INV_LN2_32: u64 = 0x40471547652b82fe;
/// 1.5 · 2⁵²: adding it rounds a double below 2⁵¹ to an integer, kept in the low mantissa bits.
#[cfg(target_arch = "x86_64")]
const SHIFT: u64 = 0x4338000000000000;
/// The cubic's coefficients for 2^(r/32), highest power first.
#[cfg(target_arch = "x86_64")]
const POLY: [u64; 3] = [0x3ebc6af84b912394, 0x3f2ebfce50fac4f3, 0x3f962e42ff0c52d6];

/// `|x|` bits from which glibc leaves the table path (|x| ≥ 88, infinities, NaN).
#[cfg(target_arch = "x86_64")]
const SPECIAL_ABS_BITS: u32 = 0x42b0_0000;

/// Replaces every element by its exponential, each bit-identical to `x.exp()`.
pub(crate) fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if vector_path() {
        // SAFETY: vector_path() is true only where AVX2 and FMA were detected.
        unsafe { exp_avx2(xs) };
        return;
    }
    for x in xs {
        *x = x.exp();
    }
}

/// Whether the vector path is in use: an x86-64 with AVX2 and FMA whose libm passed the self-check.
pub(crate) fn vector_path() -> bool {
    static ACTIVE: OnceLock<bool> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let inputs = self_check_inputs();
            let mut got = inputs.clone();
            // SAFETY: AVX2 and FMA were just detected.
            unsafe { exp_avx2(&mut got) };
            return inputs.iter().zip(&got).all(|(x, y)| x.exp().to_bits() == y.to_bits());
        }
        false
    })
}

/// The self-check's inputs: a sweep of [−104, 89] (underflow to overflow), small magnitudes down
/// to subnormals, the specials, and the two inputs where glibc's non-FMA build rounds otherwise.
#[cfg(target_arch = "x86_64")]
fn self_check_inputs() -> Vec<f32> {
    let mut xs: Vec<f32> = (0..65_536).map(|i| -104.0 + 193.0 * i as f32 / 65_536.0).collect();
    xs.extend((0..4_096u32).map(|i| f32::from_bits(0x3380_0000 - i * 0x0001_0000)));
    xs.extend((0..256u32).map(|i| -f32::from_bits(0x3f00_0000 - i * 0x0020_0000)));
    xs.extend([
        f32::from_bits(0x4202_422f),
        f32::from_bits(0xc27c_65d9),
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        88.72283,
        -103.97208,
    ]);
    xs
}

/// The vector path: glibc's FMA `expf` on four lanes, eight elements per step; lanes outside
/// the table's range, and the tail, take the scalar function.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(xs: &mut [f32]) {
    use std::arch::x86_64::*;
    let inv_ln2_32 = _mm256_set1_pd(f64::from_bits(INV_LN2_32));
    let shift = _mm256_set1_pd(f64::from_bits(SHIFT));
    let [c0, c1, c2] = POLY.map(|c| _mm256_set1_pd(f64::from_bits(c)));
    let one = _mm256_set1_pd(1.0);
    let low5 = _mm256_set1_epi64x(31);
    let abs_mask = _mm256_set1_epi32(0x7fff_ffff);
    // Signed compare against SPECIAL_ABS_BITS − 1: |x| bits never have the sign bit.
    let special = _mm256_set1_epi32(SPECIAL_ABS_BITS as i32 - 1);
    // glibc's sequence, with its fused operations where its FMA build has them.
    let lanes4 = |x: __m128| {
        let xd = _mm256_cvtps_pd(x);
        let kd_shifted = _mm256_fmadd_pd(inv_ln2_32, xd, shift);
        let ki = _mm256_castpd_si256(kd_shifted);
        let kd = _mm256_sub_pd(kd_shifted, shift);
        let r = _mm256_fmsub_pd(inv_ln2_32, xd, kd);
        let t = _mm256_i64gather_epi64::<8>(TABLE.as_ptr() as *const i64, _mm256_and_si256(ki, low5));
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let z = _mm256_fmadd_pd(c0, r, c1);
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(c2, r, one);
        _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_fmadd_pd(z, r2, y), s))
    };
    let mut chunks = xs.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let p = chunk.as_mut_ptr();
        let x = _mm256_loadu_ps(p);
        let lo = lanes4(_mm256_castps256_ps128(x));
        let hi = lanes4(_mm256_extractf128_ps::<1>(x));
        let out = _mm256_set_m128(hi, lo);
        let abs = _mm256_and_si256(_mm256_castps_si256(x), abs_mask);
        let outside = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(abs, special)));
        let mut keep = [0f32; 8];
        _mm256_storeu_ps(keep.as_mut_ptr(), x);
        _mm256_storeu_ps(p, out);
        if outside != 0 {
            for (lane, (y, x)) in chunk.iter_mut().zip(keep).enumerate() {
                if outside & (1 << lane) != 0 {
                    // −∞ (a masked score) is exactly 0 without the call.
                    *y = if x == f32::NEG_INFINITY { 0.0 } else { x.exp() };
                }
            }
        }
    }
    for x in chunks.into_remainder() {
        *x = x.exp();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bits: impl Iterator<Item = u32>) {
        let xs: Vec<f32> = bits.map(f32::from_bits).collect();
        for block in xs.chunks(1 << 16) {
            let mut got = block.to_vec();
            exp_in_place(&mut got);
            for (x, y) in block.iter().zip(&got) {
                assert_eq!(x.exp().to_bits(), y.to_bits(), "exp({x:e}) [{:#010x}]", x.to_bits());
            }
        }
    }

    #[test]
    fn equals_the_scalar_exp_on_a_stride_through_every_float() {
        // Every 251st bit pattern (17 M inputs, both signs, all exponents), plus odd lengths.
        check((0..u32::MAX / 251).map(|i| i * 251));
        for len in [0, 1, 7, 8, 9, 15, 17] {
            check((0..len).map(|i| 0x3f80_0000 + i * 12_345));
        }
    }

    #[test]
    fn the_vector_path_is_taken_on_glibc_with_avx2_and_fma() {
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            assert!(vector_path(), "the self-check refused glibc's expf");
        }
        let mut specials = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN, -0.0, 0.0, 88.8, -104.0, 1.0];
        exp_in_place(&mut specials);
        assert_eq!(specials[0].to_bits(), 0);
        assert_eq!(specials[1], f32::INFINITY);
        assert!(specials[2].is_nan());
        assert_eq!((specials[3], specials[4]), (1.0, 1.0));
        assert_eq!((specials[5], specials[6]), (f32::INFINITY, 0.0));
        assert_eq!(specials[7], 1f32.exp());
    }

    #[test]
    #[ignore = "all 2³² floats, about a minute in release"]
    fn exhaustively_equals_the_scalar_exp_for_every_float() {
        check(0..=u32::MAX);
    }
}
