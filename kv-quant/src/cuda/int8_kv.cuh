// Device-side INT8 KV helpers: the kv-quant format (crate docs, steps 1 to 7), bit for bit.
// Prepended to every kernel source that reads or writes INT8 rows (no CUDA headers needed).
#pragma once

typedef unsigned short bf16_t;  // bf16 bits; converted by hand so NVRTC needs no include path

__device__ __forceinline__ float bf16_to_float(bf16_t h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even, as the `half` crate does; NaN becomes the canonical quiet NaN.
__device__ __forceinline__ bf16_t float_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)(((u >> 16) & 0x8000u) | 0x7fc0u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

#define KV_BF16_NAN ((bf16_t)0x7fc0)
#define KV_MAX_SCALE_BITS ((bf16_t)0x7c00)  // 2^121
#define KV_QMAX 127.0f
#define KV_NEG_INF __int_as_float(0xff800000)

// Steps 3-5: the stored scale of a row whose largest magnitude is `amax` (finite, >= 0).
__device__ __forceinline__ bf16_t kv_scale_from_amax(float amax) {
    bf16_t scale = float_to_bf16(amax / KV_QMAX);  // IEEE division (NVRTC's default --prec-div)
    float s = bf16_to_float(scale);
    if (s < 1.17549435e-38f) return 0;              // below the smallest normal f32: zeros
    if (scale > KV_MAX_SCALE_BITS) return KV_MAX_SCALE_BITS;  // positive bf16s order like their bits
    return scale;
}

// Step 6 (x / step rounded half to even, clamped to +-127) for four values at once, packed (first
// value in the low byte), bit for bit without a division. q = x * inverse, with `inverse` within an
// ulp or two of 1 / step, lies within 1e-4 of t = x / step (|t| <= 127.5). So mid = rint(q - 1/2) +
// 1/2 is a half-integer within 0.51 of t, and rint(t) is mid + 1/2 when t > mid, mid - 1/2 when t <
// mid, and the even one at a tie. fma(-mid, step, x) has the sign of t - mid exactly: x and step are
// bf16s (step a normal one), so x - mid * step is a multiple of 2^-134, which one rounding cannot
// turn into 0. That sign, blown up and clamped to +-1/4, nudges mid to the right side; adding 1.5 *
// 2^23 then rounds to the integer (ties to even) and leaves it in the sum's low byte, in two's
// complement.
#define KV_ROUND_MAGIC 12582912.0f  // 1.5 * 2^23

__device__ __forceinline__ unsigned int kv_quantize4(const float* x, float step, float inverse) {
    unsigned int bits[4];
    #pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float q = __fmul_rn(x[k], inverse);
        const float mid = (((q - 0.5f) + KV_ROUND_MAGIC) - KV_ROUND_MAGIC) + 0.5f;
        const float side = __fmaf_rn(-mid, step, x[k]);
        const float nudge = fminf(fmaxf(side * 0x1p117f, -0.25f), 0.25f);
        const float code = fminf(fmaxf(mid + nudge, -KV_QMAX), KV_QMAX);
        bits[k] = __float_as_uint(code + KV_ROUND_MAGIC);
    }
    return __byte_perm(__byte_perm(bits[0], bits[1], 0x40u), __byte_perm(bits[2], bits[3], 0x40u), 0x5410u);
}

// An approximate 1 / x (within 2 ulp; x normal), enough for kv_quantize4's `inverse`.
__device__ __forceinline__ float kv_reciprocal(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// max(a, b), NaN if either is NaN (fmaxf drops a NaN): a row's largest magnitude then says whether
// every value is finite.
__device__ __forceinline__ float kv_max_nan(float a, float b) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
