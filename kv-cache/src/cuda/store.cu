// Store a batch of tokens' K and V into the paged cache by slot, quantizing INT8 rows on the way.
// Defines: HEAD_DIM (32, 64, 128 or 256), INT8 (1: int8 codes + bf16 scales; 0: bf16 rows), ROWS.
// One warp per ROWS (token, kv head, K or V) rows, all loaded before any is stored; each lane owns
// HEAD_DIM/32 contiguous values of a row, read and written in one access each.

#define PER_LANE (HEAD_DIM / 32)

// An unsigned type of N bytes, for moving a lane's values in one access.
template <int N> struct Bytes;
template <> struct Bytes<1> { typedef unsigned char T; };
template <> struct Bytes<2> { typedef unsigned short T; };
template <> struct Bytes<4> { typedef unsigned int T; };
template <> struct Bytes<8> { typedef uint2 T; };
template <> struct Bytes<16> { typedef uint4 T; };
typedef typename Bytes<2 * PER_LANE>::T Bf16s;   // a lane's bf16 values
typedef typename Bytes<PER_LANE>::T Codes;       // a lane's INT8 codes

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
    const int lane = threadIdx.x & 31;
    // Row indices fit 32 bits (the launch counts them in a u32): 32-bit division is much cheaper.
    const unsigned int first = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * ROWS;
    const unsigned int rows = (unsigned int)num_tokens * kv_heads * 2;

    // Every row's loads first, so that a warp has ROWS of them in flight.
    union { Bf16s bits; bf16_t h[PER_LANE]; } in[ROWS];
    long long slot[ROWS];
    int head[ROWS];
    #pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const unsigned int row = first + r, token = (row >> 1) / kv_heads;
        head[r] = (int)((row >> 1) - token * kv_heads);
        slot[r] = -1;
        if (row >= rows) continue;
        in[r].bits = *(const Bf16s*)((row & 1 ? value : key) + (long long)token * src_stride + head[r] * HEAD_DIM + lane * PER_LANE);
        slot[r] = slots[token];
    }

    #pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        if (slot[r] < 0) continue;  // past the end or padding: the same for the whole warp
        const int is_value = (int)((first + r) & 1);
        const long long dst_row = slot[r] * kv_heads + head[r];
#if INT8
        float x[PER_LANE];
        float amax = 0.0f;
        bool finite = true;
        #pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            x[i] = bf16_to_float(in[r].h[i]);
            finite &= isfinite(x[i]);
            amax = fmaxf(amax, fabsf(x[i]));
        }
        #pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
        finite = __all_sync(0xffffffffu, finite);
        const bf16_t scale = finite ? kv_scale_from_amax(amax) : KV_BF16_NAN;
        const float step = bf16_to_float(scale);
        signed char* dst = (signed char*)(is_value ? value_cache : key_cache) + dst_row * HEAD_DIM + lane * PER_LANE;
        union { Codes bits; signed char c[PER_LANE]; } out;
        #pragma unroll
        for (int i = 0; i < PER_LANE; ++i) out.c[i] = (finite && step != 0.0f) ? kv_quantize(x[i], step) : 0;
        *(Codes*)dst = out.bits;
        if (lane == 0) (is_value ? value_scale : key_scale)[head[r] * num_slots + slot[r]] = scale;
#else
        bf16_t* dst = (bf16_t*)(is_value ? value_cache : key_cache) + dst_row * HEAD_DIM + lane * PER_LANE;
        *(Bf16s*)dst = in[r].bits;
#endif
    }
}
