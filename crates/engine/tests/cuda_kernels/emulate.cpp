// Runs src/cuda_kernels.cu on the CPU: each CUDA thread of a block is a std::thread, with
// __syncthreads and warp shuffles as barriers. A check of the kernels' logic (indexing, masks,
// reductions, partial warps, grid-stride loops, bf16/f16 rounding, NaN rows) where no GPU is at
// hand; the GPU tests (crates/cli/tests/cuda.rs) check them on the device. Prints one line per
// case and exits 1 on a failure. Built and run by tests/cuda_kernels_emulated.rs.
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

// A reusable barrier for `n` threads (C++11; std::barrier needs C++20 and GCC 11).
class Barrier {
    std::mutex m;
    std::condition_variable cv;
    unsigned n, waiting = 0, generation = 0;

   public:
    explicit Barrier(unsigned n) : n(n) {}
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(m);
        const unsigned gen = generation;
        if (++waiting == n) {
            waiting = 0;
            generation++;
            cv.notify_all();
        } else {
            cv.wait(lock, [&] { return gen != generation; });
        }
    }
};

struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};
static thread_local Dim3 threadIdx;
static Dim3 blockIdx, blockDim, gridDim;
static std::unique_ptr<Barrier> block_barrier;
static std::unique_ptr<Barrier> warp_barrier[32];
static float warp_slots[32][32];

#define __device__
#define __global__
#define __forceinline__ inline
// Blocks run one after another, so one static array serves as the block's shared memory.
#define __shared__ static

static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline float __shfl_xor_sync(unsigned, float v, int o) {
    const unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    warp_slots[w][l] = v;
    warp_barrier[w]->arrive_and_wait();
    const float r = warp_slots[w][l ^ o];
    warp_barrier[w]->arrive_and_wait();
    return r;
}
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }

#include "../../src/cuda_kernels.cu"

// The launch the Rust side makes: one block per row, min(256, tk rounded up to 32) threads.
template <typename F>
static void launch(size_t rows, int tk, F kernel) {
    const unsigned threads = std::min(256u, (unsigned)((tk + 31) / 32 * 32));
    blockDim.x = threads;
    for (size_t r = 0; r < rows; r++) {
        blockIdx.x = (unsigned)r;
        block_barrier = std::make_unique<Barrier>(threads);
        for (unsigned w = 0; w < threads / 32; w++) warp_barrier[w] = std::make_unique<Barrier>(32);
        std::vector<std::thread> pool;
        for (unsigned i = 0; i < threads; i++)
            pool.emplace_back([&, i] {
                threadIdx.x = i;
                kernel();
            });
        for (auto& t : pool) t.join();
    }
}

// An elementwise launch: `blocks` blocks of 256 threads, run one thread after another (the kernel
// has no barriers), so a grid-stride loop is exercised when blocks · 256 < n.
template <typename F>
static void launch_elementwise(unsigned blocks, F kernel) {
    blockDim.x = 256;
    gridDim.x = blocks;
    for (unsigned b = 0; b < blocks; b++) {
        blockIdx.x = b;
        for (unsigned i = 0; i < 256; i++) {
            threadIdx.x = i;
            kernel();
        }
    }
}

static uint32_t seed = 12345;
static float uniform() {  // xorshift, in [-4, 4)
    seed ^= seed << 13, seed ^= seed >> 17, seed ^= seed << 5;
    return (seed >> 8) * (8.0f / 16777216.0f) - 4.0f;
}

static int failures = 0;

// Scores [b, h, t, tk] and a causal mask with left padding of `pad[bi]` keys (a padding query
// sees itself, as the engine's masks do); the kernel against a double-precision reference.
template <typename D, typename K>
static void check(const char* dtype, int b, int h, int t, int tk, K kernel, double tol, bool nan_row) {
    const size_t rows = (size_t)b * h * t;
    std::vector<float> exact(rows * tk);
    std::vector<typename D::T> scores(rows * tk), out(rows * tk);
    for (size_t i = 0; i < scores.size(); i++) {
        scores[i] = D::store(uniform());
        exact[i] = D::load(scores[i]);
    }
    std::vector<unsigned char> mask((size_t)b * t * tk);
    for (int bi = 0; bi < b; bi++)
        for (int q = 0; q < t; q++)
            for (int k = 0; k < tk; k++) {
                const int pad = bi % 3, qpos = q + (tk - t);  // queries are the last t of tk keys
                mask[((size_t)bi * t + q) * tk + k] = (k <= qpos && k >= pad) || k == qpos;
            }
    // One unmasked NaN score (the last key of row 0 of the last query) must make that row NaN.
    const size_t nan_at = ((size_t)t - 1) * tk + (tk - 1);
    if (nan_row) scores[nan_at] = D::store(NAN), exact[nan_at] = NAN;
    const float scale = 0.125f;
    launch(rows, tk, [&] { kernel(scores.data(), mask.data(), out.data(), h, t, tk, scale); });
    double worst = 0;
    bool nan_ok = true;
    for (size_t r = 0; r < rows; r++) {
        const size_t bi = r / ((size_t)h * t), q = r % t;
        const unsigned char* m = &mask[(bi * t + q) * tk];
        double mx = -INFINITY, sum = 0;
        for (int k = 0; k < tk; k++)
            if (m[k]) mx = std::fmax(mx, (double)exact[r * tk + k] * scale);
        for (int k = 0; k < tk; k++)
            if (m[k]) sum += std::exp((double)exact[r * tk + k] * scale - mx);
        const bool is_nan_row = nan_row && r == (size_t)t - 1;
        for (int k = 0; k < tk; k++) {
            const double got = D::load(out[r * tk + k]);
            if (is_nan_row) {
                nan_ok &= std::isnan(got);
                continue;
            }
            const double want = m[k] ? std::exp((double)exact[r * tk + k] * scale - mx) / sum : 0.0;
            worst = std::fmax(worst, std::fabs(got - want));
            if (!m[k] && got != 0.0) worst = INFINITY;
        }
    }
    const bool ok = worst <= tol && nan_ok;
    failures += !ok;
    printf("%s %s b=%d h=%d t=%d tk=%d%s: max |error| %.3g (tolerance %.3g)%s\n", ok ? "ok" : "FAILED", dtype, b, h, t,
           tk, nan_row ? " with a NaN score" : "", worst, tol, nan_ok ? "" : ", NaN row not all NaN");
}

// silu(gate) · up over n elements: f32 bit-identical to candle's arithmetic, bf16/f16 within
// one rounding of the exact value.
template <typename D, typename K>
static void check_silu(const char* dtype, size_t n, unsigned blocks, K kernel, double rel) {
    std::vector<typename D::T> g(n), u(n), out(n);
    for (size_t i = 0; i < n; i++) g[i] = D::store(uniform() * 3), u[i] = D::store(uniform());
    launch_elementwise(blocks, [&] { kernel(g.data(), u.data(), out.data(), (u64)n); });
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        const float x = D::load(g[i]), y = D::load(u[i]);
        const double got = D::load(out[i]);
        if (sizeof(typename D::T) == 4) {
            const float want = x / (1.0f + expf(-x)) * y;
            worst = std::fmax(worst, got == want ? 0.0 : INFINITY);
        } else {
            const double want = x / (1.0 + std::exp(-(double)x)) * y;
            worst = std::fmax(worst, std::fabs(got - want) / std::fmax(std::fabs(want), 1e-3));
        }
    }
    const bool ok = worst <= rel;
    failures += !ok;
    printf("%s silu_mul %s n=%zu blocks=%u: max relative error %.3g (tolerance %.3g)\n", ok ? "ok" : "FAILED", dtype, n,
           blocks, worst, rel);
}

int main() {
    check_silu<F32>("f32", 1000, 2, silu_mul_f32, 0.0);
    check_silu<BF16>("bf16", 1000, 2, silu_mul_bf16, 1.0 / 128);
    check_silu<F16>("f16", 777, 4, silu_mul_f16, 1.0 / 1024);
    // Shapes: one key; a partial warp; two warps, the second partial; more keys than threads (each
    // thread strides over two); queries that see only the last t of tk keys (a resumed suffix).
    const int shapes[][4] = {{1, 1, 1, 1}, {2, 3, 5, 5}, {2, 2, 3, 40}, {1, 2, 2, 300}, {1, 1, 2, 257}, {2, 1, 3, 70}};
    for (auto& s : shapes) {
        check<F32>("f32", s[0], s[1], s[2], s[3], masked_softmax_f32, 1e-6, false);
        check<BF16>("bf16", s[0], s[1], s[2], s[3], masked_softmax_bf16, 1.0 / 256, false);
        check<F16>("f16", s[0], s[1], s[2], s[3], masked_softmax_f16, 1.0 / 2048, false);
    }
    check<F32>("f32", 1, 2, 2, 300, masked_softmax_f32, 1e-6, true);
    check<BF16>("bf16", 2, 3, 5, 5, masked_softmax_bf16, 1.0 / 256, true);
    // bf16 rounding is to nearest even, as candle's cast: 1 + 2^-8 (a tie) rounds down to 1,
    // 1 + 3·2^-8 up to 1 + 2^-6, and a NaN stays NaN.
    const bool ties = BF16::store(1.0f + 1.0f / 256) == 0x3f80 && BF16::store(1.0f + 3.0f / 256) == 0x3f82 &&
                      std::isnan(BF16::load(BF16::store(NAN))) && BF16::store(-2.5f) == 0xc020;
    failures += !ties;
    printf("%s bf16 rounding to nearest even\n", ties ? "ok" : "FAILED");
    // The emulation's own f16 conversions (the device uses cvt instructions): ties to even, the
    // largest finite value, overflow, a subnormal, NaN.
    const float eps = 1.0f / 2048;
    const bool f16 = F16::store(1.0f) == 0x3c00 && F16::store(1.0f + eps) == 0x3c00 &&
                     F16::store(1.0f + 3 * eps) == 0x3c02 && F16::store(-2.5f) == 0xc100 &&
                     F16::store(65504.0f) == 0x7bff && F16::store(65520.0f) == 0x7c00 && F16::store(1e-7f) == 0x0002 &&
                     F16::load(0x0002) == 1.0f / 8388608 && F16::load(0xc100) == -2.5f &&
                     std::isnan(F16::load(F16::store(NAN)));
    failures += !f16;
    printf("%s f16 conversions of the emulation\n", f16 ? "ok" : "FAILED");
    return failures ? 1 : 0;
}
