// Device-side KV quantization helpers: the nanovllm-kv-quant formats (INT8: the crate docs, steps
// 1 to 7; FP8: fp8.rs; INT4: int4.rs), bit for bit. Prepended to every kernel source of the engine (no CUDA
// headers needed).
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

// Steps 3-5, for a format whose largest code is `top` and whose scales stop at `cap`: the stored
// scale of a row (or group) whose largest magnitude is `amax` (finite, >= 0).
__device__ __forceinline__ bf16_t kv_scale_for(float amax, float top, bf16_t cap) {
    bf16_t scale = float_to_bf16(amax / top);  // IEEE division (NVRTC's default --prec-div)
    float s = bf16_to_float(scale);
    if (s < 1.17549435e-38f) return 0;          // below the smallest normal f32: zeros
    if (scale > cap) return cap;                // positive bf16s order like their bits
    return scale;
}

// An INT8 row's scale.
__device__ __forceinline__ bf16_t kv_scale_from_amax(float amax) {
    return kv_scale_for(amax, KV_QMAX, KV_MAX_SCALE_BITS);
}

// Step 6 (x / step rounded half to even, clamped to +-127) for four values at once, packed (first
// value in the low byte), bit for bit with neither a division nor a branch. x and step are bf16s
// (8 significant bits; step normal), so t = x / step is either exactly a half-integer h or at least
// 2^-10 away from every one: where |t| is near h, x's exponent is at least step's minus 2, so
// x - h * step is a multiple of ulp(step) / 4, and step < 2^8 ulp(step). The exact product
// x * (1 / step), with the reciprocal correctly rounded, lies within 2^-17 of t (|t| < 128). Rounding
// it to a multiple of 2^-12 (one fused multiply-add of 1.5 * 2^11) thus gives exactly h at a tie, and
// otherwise a value on t's side of every half-integer (at most 2^-17 + 2^-13 from t, which is at least
// 2^-10 from h); adding 1.5 * 2^23 - 1.5 * 2^11 then rounds that to the integer (ties to even) and
// leaves it in the sum's low byte, in two's complement. The clamp to +-127 matters only for a row
// whose scale was capped (step 5): otherwise step >= amax / 127 * (1 - 2^-9), so |t| <= 127.25.
#define KV_SNAP_MAGIC 3072.0f       // 1.5 * 2^11: sums have ulp 2^-12
#define KV_ROUND_MAGIC 12582912.0f  // 1.5 * 2^23: sums have ulp 1

template <bool CAPPED>
__device__ __forceinline__ unsigned int kv_quantize4(const float* x, float inverse) {
    unsigned int bits[4];
    #pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float snapped = __fmaf_rn(x[k], inverse, KV_SNAP_MAGIC);
        const float rounded = CAPPED
            ? __fadd_rn(fminf(fmaxf(__fadd_rn(snapped, -KV_SNAP_MAGIC), -KV_QMAX), KV_QMAX), KV_ROUND_MAGIC)
            : __fadd_rn(snapped, KV_ROUND_MAGIC - KV_SNAP_MAGIC);
        bits[k] = __float_as_uint(rounded);
    }
    return __byte_perm(__byte_perm(bits[0], bits[1], 0x40u), __byte_perm(bits[2], bits[3], 0x40u), 0x5410u);
}

// max(a, b), NaN if either is NaN (fmaxf drops a NaN): a row's largest magnitude then says whether
// every value is finite.
__device__ __forceinline__ float kv_max_nan(float a, float b) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

// FP8 rows (fp8.rs): the scale of a row whose largest magnitude is `amax` (finite, >= 0), as
// kv_scale_from_amax with 448 for 127 and 2^119 for the cap.
#define KV_FP8_MAX 448.0f
#define KV_FP8_MAX_SCALE_BITS ((bf16_t)0x7b00)  // 2^119
__device__ __forceinline__ bf16_t kv_fp8_scale_from_amax(float amax) {
    return kv_scale_for(amax, KV_FP8_MAX, KV_FP8_MAX_SCALE_BITS);
}

// INT4 rows (int4.rs, symmetric): a group's scale is amax / 7 with INT8's cap; its codes are
// round-half-even(x / step) clamped to +-7, stored plus 8, two a byte (the first value in the low
// nibble). Eight values' codes packed in a word, with an IEEE division each, as the reference.
#define KV_INT4_MAX 7.0f
__device__ __forceinline__ bf16_t kv_int4_scale_from_amax(float amax) {
    return kv_scale_for(amax, KV_INT4_MAX, KV_MAX_SCALE_BITS);
}
__device__ __forceinline__ unsigned int kv_int4_quantize8(const float* x, float step) {
    unsigned int word = 0;
    #pragma unroll
    for (int k = 0; k < 8; ++k) {
        const float q = fminf(fmaxf(rintf(__fdiv_rn(x[k], step)), -KV_INT4_MAX), KV_INT4_MAX);
        word |= (unsigned int)((int)q + 8) << (4 * k);
    }
    return word;
}

#if __CUDA_ARCH__ >= 890
// Four values' E4M3 codes, packed (first value in the low byte): x / step with an IEEE division,
// then the hardware conversion (round to nearest even, saturating at +-448), as fp8.rs.
__device__ __forceinline__ unsigned int kv_fp8_quantize4(const float* x, float step) {
    unsigned short lo, hi;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(__fdiv_rn(x[1], step)), "f"(__fdiv_rn(x[0], step)));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(__fdiv_rn(x[3], step)), "f"(__fdiv_rn(x[2], step)));
    return (unsigned int)lo | ((unsigned int)hi << 16);
}

// Four E4M3 codes as two fp16x2 (codes 0,1 and 2,3), exactly (every E4M3 value is an fp16).
__device__ __forceinline__ void fp8x4_to_f16x2(unsigned int w, unsigned int& lo, unsigned int& hi) {
    asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.rn.f16x2.e4m3x2 %0, l;\n\tcvt.rn.f16x2.e4m3x2 %1, h;\n\t}"
        : "=r"(lo), "=r"(hi) : "r"(w));
}
#endif
