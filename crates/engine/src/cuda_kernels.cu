// Two kernels that replace chains of candle's ops on a GPU (see cuda_kernels.rs for why):
// - masked_softmax_*: attention's softmax(where(mask, scores * scale, -inf)) over the last axis,
//   one thread block per row, for scores [B, H, T, Tk] and a mask [B, 1, T, Tk] (1 = may attend);
// - silu_mul_*: the gated MLP's silu(gate) * up, elementwise.
//
// No #include, so NVRTC compiles it at run time without include paths: bf16 and f16 travel as raw
// 16-bit words and convert by hand (bf16) or by one PTX instruction (f16). Arithmetic is f32.

typedef unsigned short u16;
typedef unsigned long long u64;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

struct F32 {
    typedef float T;
    static __device__ __forceinline__ float load(float x) { return x; }
    static __device__ __forceinline__ float store(float x) { return x; }
};

struct BF16 {
    typedef u16 T;
    static __device__ __forceinline__ float load(u16 x) { return __uint_as_float(((unsigned int)x) << 16); }
    // Round to nearest even, as candle's (and PyTorch's) f32 -> bf16 cast; a NaN stays a NaN.
    static __device__ __forceinline__ u16 store(float f) {
        unsigned int u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (u16)(u >> 16);
    }
};

struct F16 {
    typedef u16 T;
#ifdef __CUDA_ARCH__
    static __device__ __forceinline__ float load(u16 x) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
        return f;
    }
    static __device__ __forceinline__ u16 store(float f) {
        u16 h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
        return h;
    }
#else  // the CPU emulation the engine's tests run (tests/cuda_kernels/emulate.cpp): the same
       // conversions in portable C++ (finite values and NaN; the emulation needs no more)
    static float load(u16 h) {
        const unsigned sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
        if (exp == 0) {  // zero or subnormal: man · 2^-24
            const float f = man * (1.0f / 16777216.0f);
            return sign ? -f : f;
        }
        if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (man << 13));
        return __uint_as_float(sign | ((exp + 112) << 23) | (man << 13));
    }
    static u16 store(float f) {  // round to nearest even
        unsigned x = __float_as_uint(f);
        const u16 sign = (u16)((x >> 16) & 0x8000u);
        x &= 0x7fffffffu;
        if (x > 0x7f800000u) return sign | 0x7e00u;
        if (x >= 0x477ff000u) return sign | 0x7c00u;                // 65520 and up: infinity
        if (x < 0x38800000u) return sign | (u16)nearbyintf(__uint_as_float(x) * 16777216.0f);  // subnormal
        return sign | (u16)((x + 0xfffu + ((x >> 13) & 1u) - 0x38000000u) >> 13);
    }
#endif
};

__device__ __forceinline__ float combine(float a, float b, bool is_max) { return is_max ? fmaxf(a, b) : a + b; }

// The block's max (or sum) of `v`, returned to every thread. blockDim.x is a multiple of 32.
__device__ float block_reduce(float v, bool is_max, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v = combine(v, __shfl_xor_sync(0xffffffffu, v, o), is_max);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? shared[lane] : (is_max ? neg_inf() : 0.0f);
        for (int o = 16; o > 0; o >>= 1) v = combine(v, __shfl_xor_sync(0xffffffffu, v, o), is_max);
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    v = shared[0];
    __syncthreads();  // `shared` is reused by the next reduction
    return v;
}

template <typename D>
__device__ void masked_softmax(const typename D::T* scores, const unsigned char* mask, typename D::T* out,
                               int heads, int t, int tk, float scale) {
    __shared__ float shared[32];
    const u64 r = blockIdx.x;
    const u64 b = r / ((u64)heads * (u64)t);
    const u64 i = r % (u64)t;
    const typename D::T* s = scores + r * (u64)tk;
    typename D::T* o = out + r * (u64)tk;
    const unsigned char* m = mask + (b * (u64)t + i) * (u64)tk;

    // fmaxf skips a NaN score, but the sum below then is NaN and so is the whole row, as with
    // the composed ops: a non-finite score is never hidden.
    float mx = neg_inf();
    for (int k = threadIdx.x; k < tk; k += blockDim.x)
        if (m[k]) mx = fmaxf(mx, D::load(s[k]) * scale);
    mx = block_reduce(mx, true, shared);

    float sum = 0.0f;
    for (int k = threadIdx.x; k < tk; k += blockDim.x)
        if (m[k]) sum += expf(D::load(s[k]) * scale - mx);
    sum = block_reduce(sum, false, shared);
    const float inv = 1.0f / sum;  // candle's softmax multiplies by the inverse too

    for (int k = threadIdx.x; k < tk; k += blockDim.x) {
        const float e = m[k] ? expf(D::load(s[k]) * scale - mx) : 0.0f;
        o[k] = D::store(e * inv);
    }
}

extern "C" __global__ void masked_softmax_f32(const float* s, const unsigned char* m, float* o, int heads, int t,
                                              int tk, float scale) {
    masked_softmax<F32>(s, m, o, heads, t, tk, scale);
}

extern "C" __global__ void masked_softmax_bf16(const u16* s, const unsigned char* m, u16* o, int heads, int t, int tk,
                                               float scale) {
    masked_softmax<BF16>(s, m, o, heads, t, tk, scale);
}

extern "C" __global__ void masked_softmax_f16(const u16* s, const unsigned char* m, u16* o, int heads, int t, int tk,
                                              float scale) {
    masked_softmax<F16>(s, m, o, heads, t, tk, scale);
}

// silu(gate) * up with candle's f32 arithmetic (x / (1 + exp(-x)), then the product), rounded once.
template <typename D>
__device__ void silu_mul(const typename D::T* gate, const typename D::T* up, typename D::T* out, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)blockDim.x * gridDim.x) {
        const float x = D::load(gate[i]);
        out[i] = D::store(x / (1.0f + expf(-x)) * D::load(up[i]));
    }
}

extern "C" __global__ void silu_mul_f32(const float* g, const float* u, float* o, u64 n) { silu_mul<F32>(g, u, o, n); }

extern "C" __global__ void silu_mul_bf16(const u16* g, const u16* u, u16* o, u64 n) { silu_mul<BF16>(g, u, o, n); }

extern "C" __global__ void silu_mul_f16(const u16* g, const u16* u, u16* o, u64 n) { silu_mul<F16>(g, u, o, n); }
