// Store a batch of tokens' K and V into the paged cache by slot, quantizing INT8 rows on the way.
// Defines: HEAD_DIM (32, 64, 128 or 256), INT8 (1: int8 codes + bf16 scales; 0: bf16 rows), ROWS.
// Each lane owns 8 contiguous values of a row (one 16-byte load), so HEAD_DIM / 8 lanes share a row
// and a warp takes 256 / HEAD_DIM rows (token, kv head, K or V) at a time, ROWS times, all loaded
// before any is stored. Sharing a row among fewer lanes spreads a row's fixed work (its index, slot,
// maximum and scale) over more values: INT8 rows were bound by instructions, not bytes.

#define ELEMS 8                             // values per lane
#define LANES_PER_ROW (HEAD_DIM / ELEMS)
#define ROWS_PER_PASS (32 / LANES_PER_ROW)

extern "C" __global__ void store_kv(
    const bf16_t* __restrict__ key,      // [tokens][kv_heads][HEAD_DIM], token stride `src_stride`
    const bf16_t* __restrict__ value,    // same layout and stride
    long long src_stride,
    const long long* __restrict__ slots, // [tokens]; negative: padding, skipped
    void* __restrict__ key_cache,        // [slots][kv_heads][HEAD_DIM] int8 or bf16
    void* __restrict__ value_cache,
    bf16_t* __restrict__ key_scale,      // [kv_heads][num_slots] (INT8 only)
    bf16_t* __restrict__ value_scale,
    long long num_slots, int num_tokens, int kv_heads)
{
    const int lane = threadIdx.x & 31, part = lane % LANES_PER_ROW;
    // Row indices fit 32 bits (the launch counts them in a u32): 32-bit division is much cheaper.
    const unsigned int first = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * (ROWS * ROWS_PER_PASS)
                               + lane / LANES_PER_ROW;
    const unsigned int rows = (unsigned int)num_tokens * kv_heads * 2;

    // Every row's loads first, so that a warp has ROWS of them in flight.
    union { uint4 bits; bf16_t h[ELEMS]; } in[ROWS];
    long long slot[ROWS];
    int head[ROWS];
    #pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const unsigned int row = first + r * ROWS_PER_PASS, token = (row >> 1) / kv_heads;
        head[r] = (int)((row >> 1) - token * kv_heads);
        slot[r] = -1;
        in[r].bits = make_uint4(0u, 0u, 0u, 0u);
        if (row >= rows) continue;
        in[r].bits = *(const uint4*)((row & 1 ? value : key) + (long long)token * src_stride + head[r] * HEAD_DIM + part * ELEMS);
        slot[r] = slots[token];
    }

    #pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int is_value = (int)((first + r * ROWS_PER_PASS) & 1);
        const long long dst_row = slot[r] * kv_heads + head[r];
#if INT8
        float x[ELEMS];
        float amax = 0.0f;
        int finite = 1;
        #pragma unroll
        for (int i = 0; i < ELEMS; ++i) {
            x[i] = bf16_to_float(in[r].h[i]);
            finite &= isfinite(x[i]);
            amax = fmaxf(amax, fabsf(x[i]));
        }
        // Reduce over the lanes of this row (every lane shuffles; padding rows stop after).
        #pragma unroll
        for (int offset = LANES_PER_ROW / 2; offset > 0; offset >>= 1) {
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
            finite &= __shfl_xor_sync(0xffffffffu, finite, offset);
        }
        if (slot[r] < 0) continue;  // past the end or padding
        const bf16_t scale = finite ? kv_scale_from_amax(amax) : KV_BF16_NAN;
        const float step = bf16_to_float(scale), inverse = 1.0f / step;
        union { uint2 bits; signed char c[ELEMS]; } out;
        #pragma unroll
        for (int i = 0; i < ELEMS; ++i) out.c[i] = (finite && step != 0.0f) ? kv_quantize_fast(x[i], step, inverse) : 0;
        signed char* dst = (signed char*)(is_value ? value_cache : key_cache) + dst_row * HEAD_DIM + part * ELEMS;
        *(uint2*)dst = out.bits;
        if (part == 0) (is_value ? value_scale : key_scale)[head[r] * num_slots + slot[r]] = scale;
#else
        if (slot[r] < 0) continue;  // past the end or padding
        bf16_t* dst = (bf16_t*)(is_value ? value_cache : key_cache) + dst_row * HEAD_DIM + part * ELEMS;
        *(uint4*)dst = in[r].bits;
#endif
    }
}
