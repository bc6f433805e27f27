// Paged attention (decode, and prefill in query groups) on tensor cores, reading the cache in place. INT8 rows become exact fp16
// integers in registers (two byte permutes and a subtraction per four codes); the K scale is folded
// into the score and the V scale into the probability. bf16 rows go to the tensor cores as they are.
// Defines: HEAD_DIM (32, 64, 128 or 256), GROUP (query heads per kv head, at most 8), INT8 (0/1),
// BLOCK_SIZE (slots per cache block, multiple of 16), THREADS (threads per block), MIN_BLOCKS
// (thread blocks per SM the register allocation must allow).
//
// Queries come in groups: up to QUERIES (8 / GROUP) consecutive query tokens of one sequence (a
// decode step has groups of one; a prefill chunk, groups of QUERIES consecutive positions), each with
// its own causal context length. The MMA's 8 useful rows are (query token, query head) pairs, so a
// group's K/V rows are loaded once for all of its tokens and heads.
//
// Grid (splits, kv_heads, groups): a thread block takes `partition` key tokens (a multiple of 16,
// chosen per launch so that small batches still fill the GPU) of one group's sequence for one kv
// head; its warps take tiles of 16 key tokens in turn, each with its own online softmax, and
// combine at the end. Per tile a warp computes S = Q K^T with the group's rows as the rows of an
// m16n8k16 MMA (rows 8..15 are zero) and O^T += V^T P^T, where the scores' accumulator layout is
// exactly the P^T operand's. The reduce kernel combines the splits (log-sum-exp) into bf16.
//
// Lane roles in a warp: j = lane / 4 (the row: query j / GROUP of the group, head j % GROUP),
// q = lane % 4. For QK, lane (j, q) loads key row j of each 8-token half of the tile: the units i of KU bytes at row offset (4 i + q) KU (a quad covers a
// contiguous span, so every 32-byte sector is used whole); the MMA's k index is permuted so that the
// lane's elements are exactly its fragment (a dot product does not care about the order). For PV,
// lane (j, q) loads value rows 2q, 2q+1, 2q+8, 2q+9 (the tokens whose scores it holds), units at row
// offset (8 i + j) VU; output rows j and j + 8 of m-tile c are the two dims of its c-th pair. The 32
// scales of a tile (K and V of 16 tokens, each 32 contiguous bytes in the head-major scale planes)
// are loaded one per lane and passed around by shuffles. Each load of a lane is one access, and
// each warp-wide load uses whole 32-byte sectors.

#define WARPS (THREADS / 32)
#define QUERIES (8 / GROUP)                 // query tokens per group
#define TILE 16
#define ELEM_BYTES (INT8 ? 1 : 2)
#define KB (HEAD_DIM / 4 * ELEM_BYTES)      // bytes of a key row a lane loads
#define VB (HEAD_DIM / 8 * ELEM_BYTES)      // ... of a value row
#define KU (KB < 16 ? KB : 16)              // bytes per copy
#define VU (VB < 16 ? VB : 16)
#define KW (KB / 4)                         // 32-bit words
#define VW (VB / 4)
#define ACC_STRIDE (HEAD_DIM + (INT8 ? 4 : 1)) // padded rows of the warps' outputs: fewer bank conflicts
#define CHUNKS (HEAD_DIM / 16)              // k16 steps of QK, and m16 tiles of PV

// BYTES (4, 8 or 16) as 32-bit words, in one access.
template <int BYTES>
__device__ __forceinline__ void load_bytes(const unsigned char* p, unsigned int* w) {
    if constexpr (BYTES == 16) {
        const uint4 v = *(const uint4*)p;
        w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
    } else if constexpr (BYTES == 8) {
        const uint2 v = *(const uint2*)p;
        w[0] = v.x; w[1] = v.y;
    } else {
        w[0] = *(const unsigned int*)p;
    }
}

// The first element of key word w of lane q (row offsets as in the header), and of value word w of
// lane j.
__device__ __forceinline__ int key_element(int w, int q) {
    return (((w / (KU / 4)) * 4 + q) * KU + (w % (KU / 4)) * 4) / ELEM_BYTES;
}
__device__ __forceinline__ int value_element(int w, int j) {
    return (((w / (VU / 4)) * 8 + j) * VU + (w % (VU / 4)) * 4) / ELEM_BYTES;
}

// The value dim of output row j (+1 for row j + 8) of m-tile c, for lane j.
__device__ __forceinline__ int value_dim(int c, int j) {
#if INT8
    return value_element(c / 2, j) + 2 * (c % 2);
#else
    return value_element(c, j);
#endif
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) decode_attention_partial(
    const bf16_t* __restrict__ q,               // [batch][kv_heads * GROUP][HEAD_DIM], batch stride q_stride
    long long q_stride,
    const unsigned char* __restrict__ key_cache,   // [slots][kv_heads][HEAD_DIM] elements
    const unsigned char* __restrict__ value_cache,
    const bf16_t* __restrict__ key_scale,       // [kv_heads][slots] (INT8 only)
    const bf16_t* __restrict__ value_scale,
    long long num_slots,
    const int* __restrict__ block_tables,       // [sequences][max_blocks]
    int max_blocks,
    const int* __restrict__ context_lens,       // [batch]: a query's causal context
    const int* __restrict__ query_groups,       // [groups + 1]: each group's first query, then the end
    const int* __restrict__ group_tables,       // [groups]: the row of block_tables a group reads
    float* __restrict__ partial_out,            // [batch][heads][max_splits][HEAD_DIM]
    float* __restrict__ partial_max,            // [batch][heads][max_splits], natural log units
    float* __restrict__ partial_sum,
    int kv_heads, int max_splits, int partition, float softmax_scale)
{
    const int split = blockIdx.x, kv_head = blockIdx.y;
    const int first_query = query_groups[blockIdx.z], queries = query_groups[blockIdx.z + 1] - first_query;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, j = lane / 4, qd = lane % 4;
    // This lane's row: query `query` of the group (if it exists), head `head` of the kv head.
    const int query = j / GROUP, head = j % GROUP;
    const bool row_used = j < QUERIES * GROUP && query < queries;
    const int row_context = row_used ? context_lens[first_query + query] : 0;
    int context = 0;
    for (int i = 0; i < queries; ++i) context = max(context, context_lens[first_query + i]);
    const int start = split * partition;
    if (start >= context) return;
    const int n = min(context - start, partition);
    // Keys of this split that this lane's row may see: [0, row_limit), split-relative.
    const int row_limit = min(row_context - start, n);
    const int* table = block_tables + (long long)group_tables[blockIdx.z] * max_blocks;
    const float score_scale = softmax_scale * LOG2E;  // scores in log2 units: exp2 below
    const int mine[4] = {2 * qd, 2 * qd + 1, 2 * qd + 8, 2 * qd + 9};  // this lane's score tokens
    const int tiles = (n + TILE - 1) / TILE;

    // Where this lane's bytes of this warp's k-th tile are.
    struct Tile { long long slot0; int first, valid; };  // first: the tile's first key, split-relative
    auto tile_at = [&](int k) {
        const int first = (warp + k * WARPS) * TILE, pos0 = start + first;
        return Tile{(long long)table[pos0 / BLOCK_SIZE] * BLOCK_SIZE + pos0 % BLOCK_SIZE, first, min(n - first, TILE)};
    };
    auto row_of = [&](const Tile& tile, int t) { return (tile.slot0 + t) * kv_heads + kv_head; };

    // Query fragments: row j (query `query`, head kv_head * GROUP + head), the four elements of chunk c that
    // this lane's keys hold (consecutive: one 8-byte load). Staging the rows through shared memory
    // first measured slower (docs/PERF.md).
    unsigned int qa[CHUNKS][2];
    {
        const bf16_t* qrow = q + (long long)(first_query + (row_used ? query : 0)) * q_stride
                             + (long long)(kv_head * GROUP + head) * HEAD_DIM;
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
            const int element = INT8 ? key_element(c, qd) : key_element(2 * c, qd);
            unsigned int w[2] = {0u, 0u};
            if (row_used) load_bytes<8>((const unsigned char*)(qrow + element), w);
            #pragma unroll
            for (int h = 0; h < 2; ++h) {
#if INT8
                const float lo = fminf(fmaxf(bf16_to_float((bf16_t)(w[h] & 0xffffu)), -65504.0f), 65504.0f);
                const float hi = fminf(fmaxf(bf16_to_float((bf16_t)(w[h] >> 16)), -65504.0f), 65504.0f);
                qa[c][h] = pack2(lo, hi);
#else
                qa[c][h] = w[h];
#endif
            }
        }
    }

    float acc[CHUNKS][4];
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.0f;
    float m = KV_NEG_INF, l = 0.0f;   // softmax state of row j (l: this lane's tokens only)
    float vs_max = 0.0f;              // INT8: the V scales are divided by this running maximum

    for (int k = 0; warp + k * WARPS < tiles; ++k) {
        const Tile tile = tile_at(k);
        const int valid = tile.valid;
        unsigned int kraw[2][KW], vraw[4][VW];
        #pragma unroll
        for (int h = 0; h < 2; ++h)
            #pragma unroll
            for (int i = 0; i < KB / KU; ++i) {
                unsigned int* w = &kraw[h][i * (KU / 4)];
                const int t = 8 * h + j;
                if (t < valid) load_bytes<KU>(key_cache + row_of(tile, t) * HEAD_DIM * ELEM_BYTES + (i * 4 + qd) * KU, w);
                else for (int x = 0; x < KU / 4; ++x) w[x] = 0u;
            }
        #pragma unroll
        for (int r = 0; r < 4; ++r)
            #pragma unroll
            for (int i = 0; i < VB / VU; ++i) {
                unsigned int* w = &vraw[r][i * (VU / 4)];
                const int t = mine[r];
                if (t < valid) load_bytes<VU>(value_cache + row_of(tile, t) * HEAD_DIM * ELEM_BYTES + (i * 8 + j) * VU, w);
                else for (int x = 0; x < VU / 4; ++x) w[x] = 0u;
            }
#if INT8
        // Lane L holds the scale of token L % 16: K for L < 16, V after.
        const long long scale_at = kv_head * num_slots + tile.slot0 + lane % 16;
        const float my_scale = lane % 16 < valid ? bf16_to_float((lane < 16 ? key_scale : value_scale)[scale_at]) : 0.0f;
#endif

        // S = Q K^T: s[h][0..1] are row j's scores of keys 8h + 2qd, 8h + 2qd + 1.
        float s[2][4];
        #pragma unroll
        for (int h = 0; h < 2; ++h) {
            s[h][0] = s[h][1] = s[h][2] = s[h][3] = 0.0f;
            #pragma unroll
            for (int c = 0; c < CHUNKS; ++c) {
#if INT8
                unsigned int b0, b1;
                int8x4_to_f16x2(kraw[h][c], b0, b1);
#else
                const unsigned int b0 = kraw[h][2 * c], b1 = kraw[h][2 * c + 1];
#endif
                mma(s[h], qa[c][0], 0u, qa[c][1], 0u, b0, b1);
            }
        }
        float score[4] = {s[0][0], s[0][1], s[1][0], s[1][1]};  // tokens mine[0..3]
#if INT8
        float kscale[4], vscale[4];
        #pragma unroll
        for (int r = 0; r < 4; ++r) {
            kscale[r] = __shfl_sync(0xffffffffu, my_scale, mine[r]);
            vscale[r] = __shfl_sync(0xffffffffu, my_scale, 16 + mine[r]);
        }
#endif
        float tile_max = KV_NEG_INF;
        #pragma unroll
        for (int r = 0; r < 4; ++r) {
#if INT8
            score[r] *= score_scale * kscale[r];
#else
            score[r] *= score_scale;
#endif
            if (tile.first + mine[r] >= row_limit) score[r] = KV_NEG_INF;
            tile_max = fmaxf(tile_max, score[r]);
        }
        const float m_new = fmaxf(m, quad_max(tile_max));
        // -inf while a row has seen no key of its context (a later query's keys, an unused row):
        // subtract 0 then, so that alpha and p are 0, not NaN.
        const float m_sub = m_new == KV_NEG_INF ? 0.0f : m_new;
        const float alpha = exp2f(m - m_sub);
        float p[4];
        #pragma unroll
        for (int r = 0; r < 4; ++r) p[r] = exp2f(score[r] - m_sub);
        l = l * alpha + (p[0] + p[1]) + (p[2] + p[3]);
        m = m_new;

        // The accumulator's columns are rows 2qd and 2qd + 1: their rescale factors live in the
        // lanes whose j is that row.
        float rescale_even = __shfl_sync(0xffffffffu, alpha, 8 * qd);
        float rescale_odd = __shfl_sync(0xffffffffu, alpha, 8 * qd + 4);
#if INT8
        const float vs_new = fmaxf(fmaxf(vs_max, FLT_MIN_NORMAL),
                                   quad_max(fmaxf(fmaxf(vscale[0], vscale[1]), fmaxf(vscale[2], vscale[3]))));
        const float ratio = vs_max / vs_new, inv = 1.0f / vs_new;
        vs_max = vs_new;
        rescale_even *= ratio;
        rescale_odd *= ratio;
        #pragma unroll
        for (int r = 0; r < 4; ++r) p[r] *= vscale[r] * inv;
#endif
        const unsigned int pb0 = pack2(p[0], p[1]), pb1 = pack2(p[2], p[3]);
        // Once the maxima settle, most tiles need no rescaling.
        if (__any_sync(0xffffffffu, rescale_even != 1.0f || rescale_odd != 1.0f)) {
            #pragma unroll
            for (int c = 0; c < CHUNKS; ++c) {
                acc[c][0] *= rescale_even; acc[c][1] *= rescale_odd;
                acc[c][2] *= rescale_even; acc[c][3] *= rescale_odd;
            }
        }

        // O^T += V^T P^T, one m16 tile of dims at a time.
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
#if INT8
            // Word c/2 of a row holds four dims; tile c takes the pair 2(c%2), 2(c%2)+1.
            const unsigned int sel = (c % 2) ? 0x7362u : 0x5140u;
            unsigned int a0, a1, a2, a3;
            int8x4_to_f16x2(__byte_perm(vraw[0][c / 2], vraw[1][c / 2], sel), a0, a1);
            int8x4_to_f16x2(__byte_perm(vraw[2][c / 2], vraw[3][c / 2], sel), a2, a3);
#else
            const unsigned int a0 = __byte_perm(vraw[0][c], vraw[1][c], 0x5410u);
            const unsigned int a1 = __byte_perm(vraw[0][c], vraw[1][c], 0x7632u);
            const unsigned int a2 = __byte_perm(vraw[2][c], vraw[3][c], 0x5410u);
            const unsigned int a3 = __byte_perm(vraw[2][c], vraw[3][c], 0x7632u);
#endif
            mma(acc[c], a0, a1, a2, a3, pb0, pb1);
        }
    }
    l = quad_sum(l);

    // Combine the warps: out = sum_w 2^(m_w - M) vs_w acc_w, sum = sum_w 2^(m_w - M) l_w.
    __shared__ float s_m[WARPS][8], s_l[WARPS][8], s_vs[WARPS];
    __shared__ float s_acc[WARPS][8][ACC_STRIDE];
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        const int d = value_dim(c, j);
        s_acc[warp][2 * qd][d] = acc[c][0];
        s_acc[warp][2 * qd + 1][d] = acc[c][1];
        s_acc[warp][2 * qd][d + 1] = acc[c][2];
        s_acc[warp][2 * qd + 1][d + 1] = acc[c][3];
    }
    if (qd == 0) { s_m[warp][j] = m; s_l[warp][j] = l; }
    if (lane == 0) s_vs[warp] = INT8 ? vs_max : 1.0f;
    __syncthreads();
    const int heads = kv_heads * GROUP;
    for (int i = threadIdx.x; i < queries * GROUP * HEAD_DIM; i += THREADS) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM, token = first_query + g / GROUP;
        if (start >= context_lens[token]) continue;  // a split past this query's context: never read
        float big = KV_NEG_INF;
        #pragma unroll
        for (int w = 0; w < WARPS; ++w) big = fmaxf(big, s_m[w][g]);
        float sum = 0.0f, total = 0.0f;
        #pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            const float weight = exp2f(s_m[w][g] - big);  // 0 for a warp that had no tile
            sum += weight * s_vs[w] * s_acc[w][g][d];
            total += weight * s_l[w][g];
        }
        const long long at = ((long long)token * heads + kv_head * GROUP + g % GROUP) * max_splits + split;
        partial_out[at * HEAD_DIM + d] = sum;
        if (d == 0) { partial_max[at] = big * LN2; partial_sum[at] = total; }
    }
}

// A sum or maximum over the block (HEAD_DIM threads), returned to every thread.
__device__ __forceinline__ float block_reduce(float x, bool is_max, float* scratch) {
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, x, offset);
        x = is_max ? fmaxf(x, other) : x + other;
    }
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
    __syncthreads();
    float r = scratch[0];
    for (int w = 1; w < HEAD_DIM / 32; ++w) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
    __syncthreads();  // scratch is reused
    return r;
}

// Combine the splits of each (query, head): out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
// The block's threads share the splits' weights (dynamic shared memory, max_splits floats), so that
// each thread's sum over the splits of its dim is independent loads, many in flight: one long
// context has hundreds of splits.
extern "C" __global__ void decode_attention_reduce(
    const float* __restrict__ partial_out, const float* __restrict__ partial_max,
    const float* __restrict__ partial_sum, const int* __restrict__ context_lens,
    bf16_t* __restrict__ out,                   // [batch][heads][HEAD_DIM]
    int heads, int max_splits, int partition)
{
    extern __shared__ float s_weight[];         // [max_splits]
    __shared__ float s_scratch[HEAD_DIM / 32];
    const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
    const int splits = (context_lens[b] + partition - 1) / partition;
    const long long base = ((long long)b * heads + h) * max_splits;
    float m = KV_NEG_INF;
    for (int s = d; s < splits; s += HEAD_DIM) m = fmaxf(m, partial_max[base + s]);
    m = block_reduce(m, true, s_scratch);
    float l = 0.0f;
    for (int s = d; s < splits; s += HEAD_DIM) {
        const float w = expf(partial_max[base + s] - m);
        s_weight[s] = w;
        l += w * partial_sum[base + s];
    }
    l = block_reduce(l, false, s_scratch);  // its barrier also publishes s_weight
    float o = 0.0f;
    #pragma unroll 8
    for (int s = 0; s < splits; ++s) o += s_weight[s] * partial_out[(base + s) * HEAD_DIM + d];
    // A query with no context (a padding row of a CUDA graph) reads nothing and gets zeros.
    out[((long long)b * heads + h) * HEAD_DIM + d] = float_to_bf16(l > 0.0f ? o / l : 0.0f);
}
