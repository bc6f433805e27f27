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

// Step 6: one code, from the stored scale (step > 0).
__device__ __forceinline__ signed char kv_quantize(float x, float step) {
    return (signed char)fminf(fmaxf(rintf(x / step), -KV_QMAX), KV_QMAX);
}

// Step 6 without a division per element, giving the same code: `inverse` is 1 / step (IEEE).
// q = x * inverse is within 2u|t| + u^2|t| of t = x / step (u = 2^-24), and the IEEE quotient within
// u|t|; with |t| <= 128 they differ by less than 2.3e-5, so their nearest integers differ only when
// the quotient lies within that of a half-integer, and q then within 4.6e-5 of it: those take the
// division.
__device__ __forceinline__ signed char kv_quantize_fast(float x, float step, float inverse) {
    const float q = x * inverse;
    const float nearest = rintf(q);
    if (fabsf(q - nearest) > 0.5f - 1e-4f) return kv_quantize(x, step);
    return (signed char)fminf(fmaxf(nearest, -KV_QMAX), KV_QMAX);
}
