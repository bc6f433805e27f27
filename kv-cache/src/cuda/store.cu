// Store a batch of tokens' K and V into the paged cache by slot, quantizing INT8, FP8 or INT4 rows
// on the way. Defines: HEAD_DIM (32, 64, 128 or 256), QUANT (1: codes; 0: bf16 rows), SCALED (1:
// bf16 scales beside the codes; 0: FP8 codes of the values themselves, vLLM's per-tensor scale of
// 1.0), FP8 (1: the codes are E4M3), INT4 (1: 4-bit codes, a scale per group of 32 values; ELEMS
// is then 32, one group per lane), ROWS, ELEMS, THREADS (threads per block), BLOCK_SIZE (for
// layout.cuh).
// Each lane owns ELEMS contiguous values of a row (16-byte loads: 32 values of an INT8 row, 8 of a
// bf16 row), so HEAD_DIM / ELEMS lanes share a row and a warp takes 32 / (HEAD_DIM / ELEMS) rows
// (token, kv head, K or V) at a time, ROWS times, all loaded before any is stored. Sharing a row
// among few lanes spreads a row's fixed work (its index, slot, maximum and scale) over many values;
// INT8 codes cost two float operations each, a fused multiply-add and an add (kv_quantize4 in
// kv_quant.cuh); FP8 codes an IEEE division each and the hardware conversion (kv_fp8_quantize4);
// INT4 codes an IEEE division and a rounding each (kv_int4_quantize8); a row's lanes then trade
// their groups' codes through shared memory and each writes its 16 bytes of the interleaved row
// (int4_row_offset in layout.cuh).

#define LOADS (ELEMS / 8)                   // 16-byte loads per lane
#define LANES_PER_ROW (HEAD_DIM / ELEMS)
#define ROWS_PER_PASS (32 / LANES_PER_ROW)
#define CODE_BYTES(values) ((values) * CODE_BITS / 8)

extern "C" __global__ void store_kv(
    const bf16_t* __restrict__ key,      // [tokens][kv_heads][HEAD_DIM], token stride `src_stride`
    const bf16_t* __restrict__ value,    // same layout and stride
    long long src_stride,
    const long long* __restrict__ slots, // [tokens]; negative: padding, skipped
    void* __restrict__ key_cache,        // rows of HEAD_DIM codes or bf16s, placed by cache_row (layout.cuh)
    void* __restrict__ value_cache,
    bf16_t* __restrict__ key_scale,      // [kv_heads][num_slots][GROUPS] (SCALED only)
    bf16_t* __restrict__ value_scale,
    long long num_slots, int num_tokens, int kv_heads)
{
    const int lane = threadIdx.x & 31, part = lane % LANES_PER_ROW;
    // Row indices fit 32 bits (the launch counts them in a u32): 32-bit division is much cheaper.
    const unsigned int first = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * (ROWS * ROWS_PER_PASS)
                               + lane / LANES_PER_ROW;
    const unsigned int rows = (unsigned int)num_tokens * kv_heads * 2;

    // Every row's loads first, so that a warp has ROWS of them in flight.
    union { uint4 bits[LOADS]; bf16_t h[ELEMS]; } in[ROWS];
    long long slot[ROWS];
    int head[ROWS];
    #pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const unsigned int row = first + r * ROWS_PER_PASS, token = (row >> 1) / kv_heads;
        head[r] = (int)((row >> 1) - token * kv_heads);
        slot[r] = -1;
        #pragma unroll
        for (int i = 0; i < LOADS; ++i) in[r].bits[i] = make_uint4(0u, 0u, 0u, 0u);
        if (row >= rows) continue;
        const uint4* src = (const uint4*)((row & 1 ? value : key) + (long long)token * src_stride + head[r] * HEAD_DIM + part * ELEMS);
        #pragma unroll
        for (int i = 0; i < LOADS; ++i) in[r].bits[i] = src[i];
        slot[r] = slots[token];
    }

    #pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int is_value = (int)((first + r * ROWS_PER_PASS) & 1);
        const long long dst_row = cache_row(slot[r], head[r], kv_heads);
#if QUANT
        float x[ELEMS];
        float amax = 0.0f;  // NaN when a value is NaN, infinite when one is
        #pragma unroll
        for (int i = 0; i < ELEMS; ++i) {
            x[i] = bf16_to_float(in[r].h[i]);
            amax = kv_max_nan(amax, fabsf(x[i]));
        }
        // Reduce over the lanes of this row (every lane shuffles; padding rows stop after).
        #pragma unroll
        for (int offset = LANES_PER_ROW / 2; offset > 0; offset >>= 1)
            amax = kv_max_nan(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
#if INT4
        const unsigned int live = __ballot_sync(0xffffffffu, slot[r] >= 0);  // the lanes that go on
#endif
        if (slot[r] < 0) continue;  // past the end or padding
        const bool finite = amax <= 3.4028235e38f;
#if INT4
        // This lane's values are one group: its own largest magnitude sets its scale; a value that is
        // not finite anywhere in the row poisons every group (NaN scales, codes 0).
        float group_amax = 0.0f;
        #pragma unroll
        for (int i = 0; i < ELEMS; ++i) group_amax = fmaxf(group_amax, fabsf(x[i]));
        const bf16_t scale = finite ? kv_int4_scale_from_amax(group_amax) : KV_BF16_NAN;
        const float step = bf16_to_float(scale);
        unsigned int codes[ELEMS / 8];
        #pragma unroll
        for (int i = 0; i < ELEMS / 8; ++i)
            codes[i] = !finite ? 0u : step == 0.0f ? 0x88888888u : kv_int4_quantize8(&x[8 * i], step);
#elif FP8 && !SCALED
        // The values themselves (a per-tensor scale of 1.0): saturating at 448; NaN stays NaN.
        const bf16_t scale = 0;
        unsigned int codes[ELEMS / 4];
        #pragma unroll
        for (int i = 0; i < ELEMS / 4; ++i) codes[i] = kv_fp8_quantize4(&x[4 * i], 1.0f);
#elif FP8
        const bf16_t scale = finite ? kv_fp8_scale_from_amax(amax) : KV_BF16_NAN;
        const float step = bf16_to_float(scale);
        unsigned int codes[ELEMS / 4] = {};
        if (finite && step != 0.0f) {
            #pragma unroll
            for (int i = 0; i < ELEMS / 4; ++i) codes[i] = kv_fp8_quantize4(&x[4 * i], step);
        }
#else
        const bf16_t scale = finite ? kv_scale_from_amax(amax) : KV_BF16_NAN;
        const float step = bf16_to_float(scale);
        unsigned int codes[ELEMS / 4] = {};
        if (finite && step != 0.0f) {
            const float inverse = __frcp_rn(step);
            if (scale == KV_MAX_SCALE_BITS) {
                #pragma unroll
                for (int i = 0; i < ELEMS / 4; ++i) codes[i] = kv_quantize4<true>(&x[4 * i], inverse);
            } else {
                #pragma unroll
                for (int i = 0; i < ELEMS / 4; ++i) codes[i] = kv_quantize4<false>(&x[4 * i], inverse);
            }
        }
#endif
#if INT4
        // This lane's group in CPU order, 8 byte pairs; then the 16 bytes of the GPU row that this
        // lane writes: 4 words, word W of the row holding byte pair W / (G / 2) of groups 2h and
        // 2h + 1 (h = W % (G / 2)), interleaved byte by byte.
        __shared__ __align__(16) unsigned short s_pairs[THREADS / 32][32 * 8];
        unsigned short* pairs = s_pairs[threadIdx.x / 32];
        *(uint4*)&pairs[lane * 8] = make_uint4(codes[0], codes[1], codes[2], codes[3]);
        __syncwarp(live);
        const unsigned short* row_pairs = pairs + (lane - part) * 8;
        #pragma unroll
        for (int w = 0; w < 4; ++w) {
            const int word = 4 * part + w, pair = word / (GROUPS / 2), h = word % (GROUPS / 2);
            codes[w] = __byte_perm(row_pairs[2 * h * 8 + pair], row_pairs[(2 * h + 1) * 8 + pair], 0x5140u);
        }
        __syncwarp(live);  // the next row's codes reuse the pairs
#endif
        uint4* dst = (uint4*)((unsigned char*)(is_value ? value_cache : key_cache) + dst_row * ROW_BYTES
                              + part * CODE_BYTES(ELEMS));
        #pragma unroll
        for (int i = 0; i < CODE_BYTES(ELEMS) / 16; ++i) dst[i] = make_uint4(codes[4 * i], codes[4 * i + 1], codes[4 * i + 2], codes[4 * i + 3]);
        // A row's scale (INT4: each lane its group's).
        if (INT4 || (SCALED && part == 0))
            (is_value ? value_scale : key_scale)[(head[r] * num_slots + slot[r]) * GROUPS + (INT4 ? part : 0)] = scale;
#else
        if (slot[r] < 0) continue;  // past the end or padding
        bf16_t* dst = (bf16_t*)(is_value ? value_cache : key_cache) + dst_row * HEAD_DIM + part * ELEMS;
        *(uint4*)dst = in[r].bits[0];
#endif
    }
}
