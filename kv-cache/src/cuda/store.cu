// Store a batch of tokens' K and V into the paged cache by slot, quantizing INT8 rows on the way.
// Defines: HEAD_DIM (a multiple of 32), INT8 (1: int8 codes + bf16 scales; 0: bf16 rows).
// One warp per (token, kv head, K or V) row; each lane owns HEAD_DIM/32 contiguous values.

#define PER_LANE (HEAD_DIM / 32)

extern "C" __global__ void store_kv(
    const bf16_t* __restrict__ key,      // [tokens][kv_heads][HEAD_DIM], token stride `src_stride`
    const bf16_t* __restrict__ value,    // same layout and stride
    long long src_stride,
    const long long* __restrict__ slots, // [tokens]; negative: padding, skipped
    void* __restrict__ key_cache,        // [slots][kv_heads][HEAD_DIM] int8 or bf16
    void* __restrict__ value_cache,
    bf16_t* __restrict__ key_scale,      // [slots][kv_heads] (INT8 only)
    bf16_t* __restrict__ value_scale,
    int num_tokens, int kv_heads)
{
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const long long rows = (long long)num_tokens * kv_heads * 2;
    if (row >= rows) return;
    const int is_value = (int)(row & 1);
    const long long token = (row >> 1) / kv_heads;
    const int head = (int)((row >> 1) % kv_heads);
    const long long slot = slots[token];
    if (slot < 0) return;

    const bf16_t* src = (is_value ? value : key) + token * src_stride + (long long)head * HEAD_DIM + lane * PER_LANE;
    const long long dst_row = slot * kv_heads + head;
    float x[PER_LANE];
    #pragma unroll
    for (int i = 0; i < PER_LANE; ++i) x[i] = bf16_to_float(src[i]);

#if INT8
    float amax = 0.0f;
    bool finite = true;
    #pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        finite &= isfinite(x[i]);
        amax = fmaxf(amax, fabsf(x[i]));
    }
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    finite = __all_sync(0xffffffffu, finite);
    const bf16_t scale = finite ? kv_scale_from_amax(amax) : KV_BF16_NAN;
    const float step = bf16_to_float(scale);
    signed char* dst = (signed char*)(is_value ? value_cache : key_cache) + dst_row * HEAD_DIM + lane * PER_LANE;
    #pragma unroll
    for (int i = 0; i < PER_LANE; ++i) dst[i] = (finite && step != 0.0f) ? kv_quantize(x[i], step) : 0;
    if (lane == 0) (is_value ? value_scale : key_scale)[dst_row] = scale;
#else
    bf16_t* dst = (bf16_t*)(is_value ? value_cache : key_cache) + dst_row * HEAD_DIM + lane * PER_LANE;
    #pragma unroll
    for (int i = 0; i < PER_LANE; ++i) dst[i] = src[i];
#endif
}
