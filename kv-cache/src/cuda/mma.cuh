// Tensor-core helpers shared by the attention kernels (decode_attention.cu, prefill_attention.cu):
// the m16n8k16 MMA in the cache's input type, INT8, FP8 and INT4 codes widened to fp16 exactly,
// quad reductions, and the decode kernel's exp2, powers of two and 8x8 transpose. Needs the QUANT
// (codes with bf16 scales), FP8 (the codes are E4M3) and INT4 (4-bit codes, a scale per group of
// 32) defines and kv_quant.cuh.

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define FLT_MIN_NORMAL 1.17549435e-38f
#if QUANT
#define MMA_AB "f16"                        // INT8 codes are exact in fp16
#else
#define MMA_AB "bf16"
#endif

// Four INT8 codes x as two fp16x2 (codes 0,1 and 2,3) of x + 1152, exactly: two byte permutes put
// x + 128 in the low mantissa bits of 1024.
#define INT8_F16_BIAS 0x64806480u  // 1152 in both halves
__device__ __forceinline__ void int8x4_to_biased_f16x2(unsigned int w, unsigned int& lo, unsigned int& hi) {
    const unsigned int biased = w ^ 0x80808080u;
    lo = __byte_perm(biased, 0x64646464u, 0x4140u);
    hi = __byte_perm(biased, 0x64646464u, 0x4342u);
}

// Four INT8 codes as two fp16x2 (codes 0,1 and 2,3), exactly: 1024 + (x + 128) - 1152.
__device__ __forceinline__ void int8x4_to_f16x2(unsigned int w, unsigned int& lo, unsigned int& hi) {
    unsigned int a, b;
    int8x4_to_biased_f16x2(w, a, b);
    asm("sub.f16x2 %0, %1, %2;" : "=r"(lo) : "r"(a), "r"(INT8_F16_BIAS));
    asm("sub.f16x2 %0, %1, %2;" : "=r"(hi) : "r"(b), "r"(INT8_F16_BIAS));
}

#if QUANT
// Four codes of a row as two fp16x2 (codes 0,1 and 2,3), exactly.
__device__ __forceinline__ void codes4_to_f16x2(unsigned int w, unsigned int& lo, unsigned int& hi) {
#if FP8
    fp8x4_to_f16x2(w, lo, hi);
#else
    int8x4_to_f16x2(w, lo, hi);
#endif
}

// Four codes of a key row for the QK MMA: INT8 codes biased by 1152 (KEY_CODES_BIASED: the decode
// kernel takes the bias out once per row instead of once per code), FP8 codes as they are.
#define KEY_CODES_BIASED (!FP8 && !INT4)
__device__ __forceinline__ void key_codes4_to_f16x2(unsigned int w, unsigned int& lo, unsigned int& hi) {
#if FP8
    fp8x4_to_f16x2(w, lo, hi);
#else
    int8x4_to_biased_f16x2(w, lo, hi);
#endif
}
#endif

// INT4 codes as fp16 integers plus a bias, exactly, in one operation each. Bytes 0 and 2 of `x`
// hold two codes each, a nibble n = code + 8 apiece: the low nibbles become 1024 + n = code + 1032
// (n lands in the lowest mantissa bits at exponent 10), the high nibbles 64 + n = code + 72 (mantissa
// bits 4-7 count ones at exponent 6). Decode attention takes the bias out of keys once per row
// (its QK chains start at minus the bias times the sum of q) and out of values per pair.
// One LOP3 each, (x & mask) | exponent: written as C, ptxas splits it into two (a SASS LOP3 takes
// one immediate), which cost the INT4 decode loop an eighth of its instructions.
#define INT4_LOW_BIAS 0x64086408u   // 1032 in both halves
#define INT4_HIGH_BIAS 0x54805480u  // 72 in both halves
__device__ __forceinline__ unsigned int and_or(unsigned int x, unsigned int mask, unsigned int bits) {
    unsigned int r;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(x), "r"(mask), "r"(bits));
    return r;
}
__device__ __forceinline__ unsigned int int4_low_biased(unsigned int x) { return and_or(x, 0x000f000fu, 0x64006400u); }
__device__ __forceinline__ unsigned int int4_high_biased(unsigned int x) { return and_or(x, 0x00f000f0u, 0x54005400u); }

// a - b, two fp16 at a time.
__device__ __forceinline__ unsigned int sub_f16x2(unsigned int a, unsigned int b) {
    unsigned int r;
    asm("sub.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

// Two floats as one 16-bit pair (first in the low half), in the MMA's input type.
__device__ __forceinline__ unsigned int pack2(float first, float second) {
    unsigned int r;
#if QUANT
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(second), "f"(first));
#else
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(second), "f"(first));
#endif
    return r;
}

// d += A B for one m16n8k16 tile, fp32 accumulators.
__device__ __forceinline__ void mma(float* d, unsigned int a0, unsigned int a1, unsigned int a2, unsigned int a3,
                                    unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." MMA_AB "." MMA_AB ".f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// d = A B + c for one m16n8k16 tile: a chain that starts from c without copying it first.
__device__ __forceinline__ void mma_from(float* d, const float* c, unsigned int a0, unsigned int a1, unsigned int a2,
                                         unsigned int a3, unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." MMA_AB "." MMA_AB ".f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// 2^x, approximately (about 2 ulp; 0 for -inf), in one instruction: exp2f adds a range check.
__device__ __forceinline__ float fast_exp2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// The smallest power of two >= x (x positive and normal), and the inverse of a power of two, exactly.
__device__ __forceinline__ float pow2_at_least(float x) {
    return __uint_as_float((__float_as_uint(x) + 0x007fffffu) & 0x7f800000u);
}
__device__ __forceinline__ float pow2_inverse(float power) {
    return __uint_as_float(0x7f000000u - __float_as_uint(power));
}
// log2 of a normal power of two, exactly.
__device__ __forceinline__ float pow2_log2(float power) {
    return (float)((int)(__float_as_uint(power) >> 23) - 127);
}

// The 8x8 matrix of 16-bit values whose row lane / 4, columns 2 (lane % 4) and + 1, this lane
// holds, transposed: this lane gets the same elements of the transpose.
__device__ __forceinline__ unsigned int transpose8x8(unsigned int x) {
    unsigned int r;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(r) : "r"(x));
    return r;
}
