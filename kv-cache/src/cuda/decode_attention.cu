// Paged attention (decode, and prefill in query groups) on tensor cores, reading the cache in place. INT8 rows become exact fp16
// integers in registers (two byte permutes and a subtraction per four codes; keys skip the
// subtraction, their 1152 offset taken out once per row), FP8 rows exact fp16 values (the
// hardware's E4M3 conversion); the K scale is folded into the score and the V scale into the
// probability. bf16 rows go to the tensor cores as they are. INT4 rows interleave their groups
// (int4_row_offset in layout.cuh), so that a lane's span of a row holds an equal share of every group
// and each fp16x2 of codes is of one group: codes become fp16 integers plus a bias in one operation
// (int4_low_biased, int4_high_biased). Each group of keys has its own QK accumulator, whose chain
// starts at minus the bias times the group's sum of q, and a score is the accumulators times their
// groups' scales; values, less their bias, meet P times their group's scale (one copy of P per
// group, for the group's two m16 tiles).
// Defines: HEAD_DIM (32, 64, 128 or 256; 64 and up for INT4), GROUP (query heads per kv head, at
// most 8), QUANT (0/1: codes rather than bf16s), SCALED (0/1: bf16 scales beside the codes; 0 for
// FP8 codes of the values themselves, vLLM's per-tensor scale of 1.0, read as scales of 1), FP8
// (0/1: the codes are E4M3), INT4 (0/1: 4-bit codes, two a byte, a scale per group of 32 values),
// BLOCK_SIZE (slots per cache block, multiple of 16), THREADS (threads per block), MIN_BLOCKS
// (thread blocks per SM the register allocation must allow).
//
// Queries come in groups: up to QUERIES (8 / GROUP) consecutive query tokens of one sequence (a
// decode step has groups of one; a prefill chunk, groups of QUERIES consecutive positions), each with
// its own causal context length. The MMA's 8 columns are (query token, query head) rows, so a
// group's K/V rows are loaded once for all of its tokens and heads.
//
// Grid (max_splits, kv_heads, groups): a thread block takes `partition` key tokens (a multiple of
// 16, chosen per step so that small batches still fill the GPU; splits past a context read nothing)
// of one group's sequence for one kv head; its warps take tiles of 16 key tokens in turn, each with
// its own online softmax, and combine at the end. Per tile a warp computes S^T = K Q^T as m16n8k16
// MMAs (the tile's 16 keys are the MMA's rows, the 8 rows of the group its columns: no zero
// padding), turns the scores into P^T's operand with two 8x8 transposes (movmatrix), and computes
// O^T += V^T P^T. The reduce kernel combines the splits (log-sum-exp) into bf16.
//
// The online softmax rescales lazily (as FlashAttention-4 does): a row's running maximum moves only
// when a score exceeds it by more than TAU (log2 units), so probabilities stay below 2^TAU and most
// tiles rescale nothing; for quantized rows P is computed over a power of two at least as large as
// any V scale seen (so that P times a V scale fits fp16), which moves as rarely. One vote per tile decides whether anything moves.
//
// Lane roles in a warp: j = lane / 4, q = lane % 4. For QK, lane (j, q) loads key rows j and j + 8
// of the tile (the A operand's rows): the units i of KU bytes at row offset (4 i + q) KU (a quad
// covers a contiguous span, so every 32-byte sector is used whole); the MMA's k index is permuted so
// that the lane's elements are exactly its fragment (a dot product does not care about the order),
// and its B fragment is the same elements of query row j. Its scores are keys j and j + 8 of rows 2q
// and 2q + 1. For PV, lane (j, q) loads value rows 2q, 2q+1, 2q+8, 2q+9 (the keys of its P^T
// fragment), units at row offset (8 i + j) VU; output rows j and j + 8 of m-tile c are the two dims
// of its c-th pair (INT4: value_dims). The 32 scales of a tile (K and V of 16 tokens, each 32 contiguous bytes in the
// head-major scale planes) are loaded one per lane and passed around by shuffles (INT4: each lane
// loads every group's K and V scales of its keys j and j + 8, one load per row and plane). A tile's rows of
// one kv head are contiguous (layout.cuh), so each lane's loads are fixed offsets from the tile's
// start.

#define WARPS (THREADS / 32)
#define QUERIES (8 / GROUP)                 // query tokens per group
#define TILE 16
#define KB (HEAD_DIM / 4 * CODE_BITS / 8)   // bytes of a key row a lane loads
#define VB (HEAD_DIM / 8 * CODE_BITS / 8)   // ... of a value row
#define KU (KB < 16 ? KB : 16)              // bytes per copy
#define VU (VB < 16 ? VB : 16)
#define KW (KB / 4)                         // 32-bit words
#define VW (VB / 4)
#define ACC_STRIDE (HEAD_DIM + (QUANT ? 4 : 1)) // padded rows of the warps' outputs: fewer bank conflicts
#define TAU 8.0f                            // lazy rescaling: probabilities stay below 2^TAU
#define CHUNKS (HEAD_DIM / 16)              // k16 steps of QK, and m16 tiles of PV
#define HALF_GROUPS (GROUPS / 2)            // INT4: the groups whose bytes share a row's word

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

// The row's word that is key word w of lane q (row offsets as in the header), and value word w of
// lane j; the first element of each in an uninterleaved row.
__device__ __forceinline__ int key_word(int w, int q) { return ((w / (KU / 4)) * 4 + q) * (KU / 4) + w % (KU / 4); }
__device__ __forceinline__ int value_word(int w, int j) { return ((w / (VU / 4)) * 8 + j) * (VU / 4) + w % (VU / 4); }
__device__ __forceinline__ int key_element(int w, int q) { return key_word(w, q) * 32 / CODE_BITS; }
__device__ __forceinline__ int value_element(int w, int j) { return value_word(w, j) * 32 / CODE_BITS; }

// The value dims of output rows j and j + 8 of m-tile c, for lane j.
__device__ __forceinline__ int2 value_dims(int c, int j) {
#if INT4
    // Tiles 2g and 2g + 1 are group g, byte pair j of it (value word g / 2 of lane j: bytes g % 2 and
    // g % 2 + 2): low nibbles in tile 2g, high ones in 2g + 1.
    const int d = 32 * (c / 2) + 4 * j + c % 2;
    return make_int2(d, d + 2);
#elif QUANT
    // Word c/2 of a row holds four dims; tile c takes the pair 2(c%2), 2(c%2)+1.
    const int d = value_element(c / 2, j) + 2 * (c % 2);
    return make_int2(d, d + 1);
#else
    const int d = value_element(c, j);
    return make_int2(d, d + 1);
#endif
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) decode_attention_partial(
    const bf16_t* __restrict__ q,               // [batch][kv_heads * GROUP][HEAD_DIM], batch stride q_stride
    long long q_stride,
    const unsigned char* __restrict__ key_cache,   // rows of HEAD_DIM elements, placed by cache_row (layout.cuh)
    const unsigned char* __restrict__ value_cache,
    const bf16_t* __restrict__ key_scale,       // [kv_heads][slots][GROUPS] (SCALED only)
    const bf16_t* __restrict__ value_scale,
    long long num_slots,
    const int* __restrict__ block_tables,       // [sequences][max_blocks]
    const int* __restrict__ geometry,           // [2]: max_blocks, then the split length (keys, a multiple of 16)
    const int* __restrict__ context_lens,       // [batch]: a query's causal context
    const int* __restrict__ query_groups,       // [groups + 1]: each group's first query, then the end
    const int* __restrict__ group_tables,       // [groups]: the row of block_tables a group reads
    bf16_t* __restrict__ out,                   // [batch][heads][HEAD_DIM], written here when max_splits is 1
    float* __restrict__ partial_out,            // [batch][heads][max_splits][HEAD_DIM]
    float* __restrict__ partial_max,            // [batch][heads][max_splits], natural log units
    float* __restrict__ partial_sum,
    int kv_heads, int max_splits, float softmax_scale)
{
    const int split = blockIdx.x, kv_head = blockIdx.y;
    const int first_query = query_groups[blockIdx.z], queries = query_groups[blockIdx.z + 1] - first_query;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, j = lane / 4, qd = lane % 4;
    // The tables' width and the split length come from the device, so that a CUDA graph's replay
    // can split its contexts by their own length within the grid it was captured with; their
    // loads run beside the group's, adding none to the chain before the first tile.
    const int max_blocks = geometry[0], partition = geometry[1];
    const int start = split * partition;
    // Everything that depends only on the group is loaded before its context length is known: the
    // q fragments and the block id of this warp's first tile, so that fewer dependent loads stand
    // between the launch and the first tile's K/V (measured 1-3% faster where a launch is one wave).
    const int* table = block_tables + (long long)group_tables[blockIdx.z] * max_blocks;
    const int first_entry = (start + warp * TILE) / BLOCK_SIZE;
    const int first_block = first_entry < max_blocks ? table[first_entry] : 0;
    auto row_used = [&](int r) { return r < QUERIES * GROUP && r / GROUP < queries; };
    unsigned int qb[CHUNKS][2];
    // Query fragments (the B operand): row j, the four elements of chunk c that this lane's keys hold
    // (consecutive: one 8-byte load; INT4: two chunks' elements, interleaved). Staging the rows
    // through shared memory first measured slower (the git history of docs/PERF.md has the
    // measurement).
    {
        const bool used = row_used(j);
        const bf16_t* qrow = q + (long long)(first_query + (used ? j / GROUP : 0)) * q_stride
                             + (long long)(kv_head * GROUP + j % GROUP) * HEAD_DIM;
        // A bf16 of q in the MMA's input type: fp16 for codes (clamped to its range).
        auto operand = [](unsigned int bits) {
            return fminf(fmaxf(bf16_to_float((bf16_t)bits), -65504.0f), 65504.0f);
        };
#if INT4
        // Chunks 2g (low nibbles) and 2g + 1 (high) are group g. Its codes lie in this lane's key
        // words g / 2 and g / 2 + G / 2 (HALF_GROUPS), byte pair p = key_word / (G / 2) of the group
        // in each: dims 32 g + 4 p + 0..3, the low nibbles even. B register i is word i's: q at 32 g
        // + 4 p + t and + 2 + t for chunk 2g + t.
        #pragma unroll
        for (int g = 0; g < GROUPS; ++g)
            #pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int pair = key_word(g / 2 + i * HALF_GROUPS, qd) / HALF_GROUPS;
                unsigned int w[2] = {0u, 0u};
                if (used) load_bytes<8>((const unsigned char*)(qrow + 32 * g + 4 * pair), w);
                qb[2 * g][i] = pack2(operand(w[0] & 0xffffu), operand(w[1] & 0xffffu));
                qb[2 * g + 1][i] = pack2(operand(w[0] >> 16), operand(w[1] >> 16));
            }
#else
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
            const int element = QUANT ? key_element(c, qd) : key_element(2 * c, qd);
            unsigned int w[2] = {0u, 0u};
            if (used) load_bytes<8>((const unsigned char*)(qrow + element), w);
            #pragma unroll
            for (int h = 0; h < 2; ++h)
                qb[c][h] = QUANT ? pack2(operand(w[h] & 0xffffu), operand(w[h] >> 16)) : w[h];
        }
#endif
    }
    int context = 0;
    for (int i = 0; i < queries; ++i) context = max(context, context_lens[first_query + i]);
    const int heads = kv_heads * GROUP;
    if (start >= context) {
        // A group with no context (padding rows of a CUDA graph) reads nothing and gets zeros; with
        // more than one split, the reduce kernel writes them.
        if (max_splits == 1)
            for (int i = threadIdx.x; i < queries * GROUP * HEAD_DIM; i += THREADS) {
                const int g = i / HEAD_DIM, token = first_query + g / GROUP;
                out[((long long)token * heads + kv_head * GROUP + g % GROUP) * HEAD_DIM + i % HEAD_DIM] = 0;
            }
        return;
    }
    const int n = min(context - start, partition);
    // Row r of the group: query r / GROUP (if it exists), head r % GROUP of the kv head. Keys of this
    // split that it may see: [0, limit), split-relative.
    auto row_limit = [&](int r) {
        return row_used(r) ? min(context_lens[first_query + r / GROUP] - start, n) : 0;
    };
    const int limit[2] = {row_limit(2 * qd), row_limit(2 * qd + 1)};  // this lane's score rows
    const float score_scale = softmax_scale * LOG2E;  // scores in log2 units: exp2 below
    const int tiles = (n + TILE - 1) / TILE;

    // This warp's k-th tile: where its rows start (one block, one kv head: contiguous).
    struct Tile { const unsigned char* key; const unsigned char* value; long long slot0; int first, valid; };
    auto tile_at = [&](int k) {
        const int first = (warp + k * WARPS) * TILE, pos0 = start + first;
        const int block = k == 0 ? first_block : table[pos0 / BLOCK_SIZE];
        const long long slot0 = (long long)block * BLOCK_SIZE + pos0 % BLOCK_SIZE;
        const long long at = cache_row(slot0, kv_head, kv_heads) * ROW_BYTES;
        return Tile{key_cache + at, value_cache + at, slot0, first, min(n - first, TILE)};
    };
    const int key_lane = j * ROW_BYTES + qd * KU;        // key row j, this lane's first unit
    const int value_lane = 2 * qd * ROW_BYTES + j * VU;  // value row 2q
    const int value_rows[4] = {0, 1, 8, 9};             // value rows 2q + these

    // Where each tile's QK chain starts. INT8 keys enter the MMA as x + 1152 (no subtraction per
    // code), so the chain starts at -1152 * (sum of the row's q), computed by the same MMA once.
    float s_start[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#if QUANT && KEY_CODES_BIASED
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
        mma(s_start, INT8_F16_BIAS, INT8_F16_BIAS, INT8_F16_BIAS, INT8_F16_BIAS, qb[c][0], qb[c][1]);
    #pragma unroll
    for (int e = 0; e < 4; ++e) s_start[e] = -s_start[e];
#endif
#if INT4
    // INT4 keys enter as code + 1032 (low nibbles) and code + 72 (high): each group's chain starts
    // at minus those biases times its sums of q, the same for every key row (columns 2q and 2q + 1).
    float group_start[GROUPS][2];
    #pragma unroll
    for (int g = 0; g < GROUPS; ++g) {
        float bias[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma(bias, INT4_LOW_BIAS, INT4_LOW_BIAS, INT4_LOW_BIAS, INT4_LOW_BIAS, qb[2 * g][0], qb[2 * g][1]);
        mma(bias, INT4_HIGH_BIAS, INT4_HIGH_BIAS, INT4_HIGH_BIAS, INT4_HIGH_BIAS, qb[2 * g + 1][0], qb[2 * g + 1][1]);
        group_start[g][0] = -bias[0];
        group_start[g][1] = -bias[1];
    }
#endif

    float acc[CHUNKS][4];
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.0f;
    // Softmax state of rows 2q and 2q + 1: the (lazy) maximum, what exp2 subtracts (0 while a row
    // has seen no key; QUANT: plus log2 vs_norm), and the sum of this lane's keys' probabilities.
    float m[2] = {KV_NEG_INF, KV_NEG_INF}, m_sub[2] = {0.0f, 0.0f}, l[2] = {0.0f, 0.0f};
    // QUANT: P is computed times 1 / vs_norm (exp2 subtracts its log2 too), so that P times a V scale
    // stays within fp16 with no multiplication of the scales; l sums P itself.
    float vs_norm = 0.0f;

    for (int k = 0; warp + k * WARPS < tiles; ++k) {
        const Tile tile = tile_at(k);
        const int valid = tile.valid;
        // Scaled rows past the context in the last tile are read anyway (they lie in the sequence's
        // block, and codes are always finite, FP8 ones never NaN): their scales are 0 and their scores masked, so no
        // load needs a predicate. bf16 rows and unscaled FP8 rows there may hold anything, NaN included: not read.
        constexpr bool read_all = SCALED;
        unsigned int kraw[2][KW], vraw[4][VW];
        #pragma unroll
        for (int h = 0; h < 2; ++h)
            #pragma unroll
            for (int i = 0; i < KB / KU; ++i) {
                unsigned int* w = &kraw[h][i * (KU / 4)];
                if (read_all || 8 * h + j < valid) load_bytes<KU>(tile.key + key_lane + h * 8 * ROW_BYTES + i * 4 * KU, w);
                else for (int x = 0; x < KU / 4; ++x) w[x] = 0u;
            }
        #pragma unroll
        for (int r = 0; r < 4; ++r)
            #pragma unroll
            for (int i = 0; i < VB / VU; ++i) {
                unsigned int* w = &vraw[r][i * (VU / 4)];
                if (read_all || 2 * qd + value_rows[r] < valid)
                    load_bytes<VU>(tile.value + value_lane + value_rows[r] * ROW_BYTES + i * 8 * VU, w);
                else for (int x = 0; x < VU / 4; ++x) w[x] = 0u;
            }
#if INT4
        // Every group's K and V scales of keys j and j + 8 (this lane's scores): one load per row and
        // plane. V scales past the context are 0 (their probabilities are 0 and a stale scale may be
        // NaN); K ones there only meet masked scores.
        float kscale[2][GROUPS], vscale[2][GROUPS];
        #pragma unroll
        for (int h = 0; h < 2; ++h) {
            const long long at = (kv_head * num_slots + tile.slot0 + j + 8 * h) * GROUPS;
            unsigned int kw[HALF_GROUPS], vw[HALF_GROUPS];
            load_bytes<2 * GROUPS>((const unsigned char*)(key_scale + at), kw);
            load_bytes<2 * GROUPS>((const unsigned char*)(value_scale + at), vw);
            const bool inside = j + 8 * h < valid;
            #pragma unroll
            for (int i = 0; i < HALF_GROUPS; ++i) {
                const unsigned int v = inside ? vw[i] : 0u;
                kscale[h][2 * i] = __uint_as_float(kw[i] << 16);
                kscale[h][2 * i + 1] = __uint_as_float(kw[i] & 0xffff0000u);
                vscale[h][2 * i] = __uint_as_float(v << 16);
                vscale[h][2 * i + 1] = __uint_as_float(v & 0xffff0000u);
            }
        }
        float v_lane_max = 0.0f;
        #pragma unroll
        for (int g = 0; g < GROUPS; ++g) v_lane_max = fmaxf(v_lane_max, fmaxf(vscale[0][g], vscale[1][g]));
#elif QUANT
        // Lane L holds the scale of token L % 16: K for L < 16, V after.
        const long long scale_at = kv_head * num_slots + tile.slot0 + lane % 16;
        const float my_scale = lane % 16 >= valid ? 0.0f
                               : SCALED ? bf16_to_float((lane < 16 ? key_scale : value_scale)[scale_at]) : 1.0f;
#endif

        // S^T = K Q^T: score[0..1] are keys j, score[2..3] keys j + 8, of rows 2q and 2q + 1.
        float score[4];
#if INT4
        // One chain per group, its two chunks from key words g / 2 and g / 2 + G / 2 (bytes g % 2 and
        // g % 2 + 2 of each: shifted down for odd groups), then times the group's scales.
        #pragma unroll
        for (int g = 0; g < GROUPS; ++g) {
            const int shift = 8 * (g % 2);
            const unsigned int j0 = kraw[0][g / 2] >> shift, j1 = kraw[0][g / 2 + HALF_GROUPS] >> shift;
            const unsigned int j8 = kraw[1][g / 2] >> shift, j9 = kraw[1][g / 2 + HALF_GROUPS] >> shift;
            const float chain_start[4] = {group_start[g][0], group_start[g][1], group_start[g][0], group_start[g][1]};
            float dot[4];
            mma_from(dot, chain_start, int4_low_biased(j0), int4_low_biased(j8), int4_low_biased(j1), int4_low_biased(j9),
                     qb[2 * g][0], qb[2 * g][1]);
            mma(dot, int4_high_biased(j0), int4_high_biased(j8), int4_high_biased(j1), int4_high_biased(j9),
                qb[2 * g + 1][0], qb[2 * g + 1][1]);
            #pragma unroll
            for (int e = 0; e < 4; ++e) score[e] = g == 0 ? dot[e] * kscale[e / 2][g] : fmaf(dot[e], kscale[e / 2][g], score[e]);
        }
#else
        // Two chains of MMAs, so that one waits on the other less.
        float s[4] = {s_start[0], s_start[1], s_start[2], s_start[3]}, s_odd[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
#if QUANT
            unsigned int a0, a1, a2, a3;
            key_codes4_to_f16x2(kraw[0][c], a0, a2);
            key_codes4_to_f16x2(kraw[1][c], a1, a3);
#else
            const unsigned int a0 = kraw[0][2 * c], a1 = kraw[1][2 * c];
            const unsigned int a2 = kraw[0][2 * c + 1], a3 = kraw[1][2 * c + 1];
#endif
            mma(c % 2 ? s_odd : s, a0, a1, a2, a3, qb[c][0], qb[c][1]);
        }
        #pragma unroll
        for (int e = 0; e < 4; ++e) score[e] = s[e] + s_odd[e];
#endif
#if QUANT && !INT4
        const float kscale[2] = {__shfl_sync(0xffffffffu, my_scale, j), __shfl_sync(0xffffffffu, my_scale, j + 8)};
        const float vscale[2] = {__shfl_sync(0xffffffffu, my_scale, 16 + j), __shfl_sync(0xffffffffu, my_scale, 24 + j)};
#endif
        bool grow = false;  // does a row's maximum or the V-scale bound move?
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int key = j + 8 * (e / 2), row = e % 2;
#if QUANT && !INT4
            score[e] *= score_scale * kscale[e / 2];
#else
            score[e] *= score_scale;  // INT4: the groups' scales are in already
#endif
            if (tile.first + key >= limit[row]) score[e] = KV_NEG_INF;
            grow |= score[e] > m[row] + TAU;
        }
#if INT4
        grow |= v_lane_max > vs_norm;
#elif QUANT
        grow |= fmaxf(vscale[0], vscale[1]) > vs_norm;
#endif
        if (__any_sync(0xffffffffu, grow)) {
            // Rows' maxima over the tile (the 8 lanes of a q hold its 16 keys), and the rescale.
            float alpha[2];
            #pragma unroll
            for (int row = 0; row < 2; ++row) {
                float tile_max = fmaxf(score[row], score[row + 2]);
                #pragma unroll
                for (int offset = 4; offset < 32; offset *= 2)
                    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
                const float m_new = fmaxf(m[row], tile_max);
                // Nothing accumulated yet while the maximum was -inf: nothing to rescale.
                alpha[row] = m[row] == KV_NEG_INF ? 1.0f : fast_exp2(m[row] - m_new);
                m[row] = m_new;
                m_sub[row] = m_new == KV_NEG_INF ? 0.0f : m_new;
                l[row] *= alpha[row];
            }
#if QUANT
            // The lanes of a j hold the same keys' scales.
#if INT4
            float vs_max = v_lane_max;
#else
            float vs_max = fmaxf(vscale[0], vscale[1]);
#endif
            #pragma unroll
            for (int offset = 4; offset < 32; offset *= 2)
                vs_max = fmaxf(vs_max, __shfl_xor_sync(0xffffffffu, vs_max, offset));
            const float bound = pow2_at_least(fmaxf(fmaxf(vs_max, vs_norm), FLT_MIN_NORMAL));
            const float ratio = vs_norm == 0.0f ? 1.0f : vs_norm * pow2_inverse(bound);  // exact
            vs_norm = bound;
            alpha[0] *= ratio;
            alpha[1] *= ratio;
            m_sub[0] += pow2_log2(bound);
            m_sub[1] += pow2_log2(bound);
#endif
            #pragma unroll
            for (int c = 0; c < CHUNKS; ++c) {
                acc[c][0] *= alpha[0]; acc[c][1] *= alpha[1];
                acc[c][2] *= alpha[0]; acc[c][3] *= alpha[1];
            }
        }
        float p[4];
        #pragma unroll
        for (int e = 0; e < 4; ++e) p[e] = fast_exp2(score[e] - m_sub[e % 2]);
#if QUANT
        l[0] = fmaf(p[2], vs_norm, fmaf(p[0], vs_norm, l[0]));
        l[1] = fmaf(p[3], vs_norm, fmaf(p[1], vs_norm, l[1]));
#else
        l[0] += p[0] + p[2];
        l[1] += p[1] + p[3];
#endif
        // P^T's fragment: the 8x8 blocks of keys 0..7 and 8..15, transposed (INT4: one per group,
        // P times the group's V scales over their bound).
#if INT4
        unsigned int pb[GROUPS][2];
        #pragma unroll
        for (int g = 0; g < GROUPS; ++g) {
            pb[g][0] = transpose8x8(pack2(p[0] * vscale[0][g], p[1] * vscale[0][g]));
            pb[g][1] = transpose8x8(pack2(p[2] * vscale[1][g], p[3] * vscale[1][g]));
        }
#else
#if QUANT
        #pragma unroll
        for (int e = 0; e < 4; ++e) p[e] *= vscale[e / 2];
#endif
        const unsigned int pb0 = transpose8x8(pack2(p[0], p[1])), pb1 = transpose8x8(pack2(p[2], p[3]));
#endif

        // O^T += V^T P^T, one m16 tile of dims at a time.
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
#if INT4
            // Group g = c / 2 (value_dims): bytes g % 2 and g % 2 + 2 of value word g / 2 of rows 2q
            // and 2q + 1 (then + 8), as [row 2q's, its second, row 2q+1's, its second]: a pair of
            // nibbles is one dim of both rows, the second bytes' after a shift. Low nibbles in tile
            // 2g, high ones in 2g + 1; each less its bias.
            const int g = c / 2;
            const unsigned int sel = g % 2 ? 0x7531u : 0x6420u;
            const unsigned int rows01 = __byte_perm(vraw[0][g / 2], vraw[1][g / 2], sel);
            const unsigned int rows89 = __byte_perm(vraw[2][g / 2], vraw[3][g / 2], sel);
            auto biased = [&](unsigned int x) { return c % 2 ? int4_high_biased(x) : int4_low_biased(x); };
            const unsigned int bias = c % 2 ? INT4_HIGH_BIAS : INT4_LOW_BIAS;
            const unsigned int pb0 = pb[g][0], pb1 = pb[g][1];
            const unsigned int a0 = sub_f16x2(biased(rows01), bias), a1 = sub_f16x2(biased(rows01 >> 8), bias);
            const unsigned int a2 = sub_f16x2(biased(rows89), bias), a3 = sub_f16x2(biased(rows89 >> 8), bias);
#elif QUANT
            // Word c/2 of a row holds four dims; tile c takes the pair 2(c%2), 2(c%2)+1.
            const unsigned int sel = (c % 2) ? 0x7362u : 0x5140u;
            unsigned int a0, a1, a2, a3;
            codes4_to_f16x2(__byte_perm(vraw[0][c / 2], vraw[1][c / 2], sel), a0, a1);
            codes4_to_f16x2(__byte_perm(vraw[2][c / 2], vraw[3][c / 2], sel), a2, a3);
#else
            const unsigned int a0 = __byte_perm(vraw[0][c], vraw[1][c], 0x5410u);
            const unsigned int a1 = __byte_perm(vraw[0][c], vraw[1][c], 0x7632u);
            const unsigned int a2 = __byte_perm(vraw[2][c], vraw[3][c], 0x5410u);
            const unsigned int a3 = __byte_perm(vraw[2][c], vraw[3][c], 0x7632u);
#endif
            mma(acc[c], a0, a1, a2, a3, pb0, pb1);
        }
    }
    #pragma unroll
    for (int row = 0; row < 2; ++row)
        #pragma unroll
        for (int offset = 4; offset < 32; offset *= 2) l[row] += __shfl_xor_sync(0xffffffffu, l[row], offset);

    // Combine the warps: out = sum_w 2^(m_w - M) vs_w acc_w, sum = sum_w 2^(m_w - M) l_w.
    __shared__ float s_m[WARPS][8], s_l[WARPS][8], s_vs[WARPS];
    __shared__ float s_acc[WARPS][8][ACC_STRIDE];
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        const int2 d = value_dims(c, j);
        s_acc[warp][2 * qd][d.x] = acc[c][0];
        s_acc[warp][2 * qd + 1][d.x] = acc[c][1];
        s_acc[warp][2 * qd][d.y] = acc[c][2];
        s_acc[warp][2 * qd + 1][d.y] = acc[c][3];
    }
    if (j == 0) {
        s_m[warp][2 * qd] = m[0]; s_l[warp][2 * qd] = l[0];
        s_m[warp][2 * qd + 1] = m[1]; s_l[warp][2 * qd + 1] = l[1];
    }
    if (lane == 0) s_vs[warp] = QUANT ? vs_norm : 1.0f;
    __syncthreads();
    for (int i = threadIdx.x; i < queries * GROUP * HEAD_DIM; i += THREADS) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM, token = first_query + g / GROUP;
        const long long row = (long long)token * heads + kv_head * GROUP + g % GROUP;
        if (start >= context_lens[token]) {  // a split past this query's context: never read
            if (max_splits == 1) out[row * HEAD_DIM + d] = 0;
            continue;
        }
        float big = KV_NEG_INF;
        #pragma unroll
        for (int w = 0; w < WARPS; ++w) big = fmaxf(big, s_m[w][g]);
        float sum = 0.0f, total = 0.0f;
        #pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            const float weight = fast_exp2(s_m[w][g] - big);  // 0 for a warp that had no tile
            sum += weight * s_vs[w] * s_acc[w][g][d];
            total += weight * s_l[w][g];
        }
        if (max_splits == 1) {  // the whole context: the output itself, no reduce kernel
            out[row * HEAD_DIM + d] = float_to_bf16(__fdividef(sum, total));  // rounded to bf16 anyway
            continue;
        }
        const long long at = row * max_splits + split;
        partial_out[at * HEAD_DIM + d] = sum;
        if (d == 0) { partial_max[at] = big * LN2; partial_sum[at] = total; }
    }
}

// A sum or maximum over the block's threads, returned to every thread.
__device__ __forceinline__ float block_reduce(float x, bool is_max, float* scratch) {
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, x, offset);
        x = is_max ? fmaxf(x, other) : x + other;
    }
    const int tid = threadIdx.y * blockDim.x + threadIdx.x, warps = blockDim.x * blockDim.y / 32;
    if (tid % 32 == 0) scratch[tid / 32] = x;
    __syncthreads();
    float r = scratch[0];
    for (int w = 1; w < warps; ++w) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
    __syncthreads();  // scratch is reused
    return r;
}

#define MAX_REDUCE_THREADS 512
#define REDUCE_PREFETCH 8

// Combine the splits of each (query, head): out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
// Grid (heads, batch, dim blocks), block (dims, groups): a few long contexts split their dims over
// several blocks so that more SMs share the loads. Thread (d, r) sums dim d over splits r, r +
// groups, ...; its first REDUCE_PREFETCH loads are issued before the splits' weights are known, so
// that they wait for memory together with the maxima and sums (one round trip, not two).
extern "C" __global__ void decode_attention_reduce(
    const float* __restrict__ partial_out, const float* __restrict__ partial_max,
    const float* __restrict__ partial_sum, const int* __restrict__ context_lens,
    const int* __restrict__ geometry,           // as the partial kernel's: [1] is the split length
    bf16_t* __restrict__ out,                   // [batch][heads][HEAD_DIM]
    int heads, int max_splits)
{
    extern __shared__ float s_weight[];         // [2][max_splits]: each split's maximum, then weight; its sum
    float* s_split_sum = s_weight + max_splits;
    __shared__ float s_scratch[32];
    __shared__ float s_sums[MAX_REDUCE_THREADS];
    const int h = blockIdx.x, b = blockIdx.y, x = threadIdx.x, r = threadIdx.y;
    const int dims = blockDim.x, groups = blockDim.y, d = blockIdx.z * dims + x;
    const int tid = r * dims + x, threads = dims * groups;
    start_next_kernel();  // a few blocks: the next kernel's may load their weights beside them
    const int partition = geometry[1], splits = (context_lens[b] + partition - 1) / partition;
    const long long base = ((long long)b * heads + h) * max_splits;
    wait_for_previous_kernel();  // the partial kernel's results
    float early[REDUCE_PREFETCH];
    #pragma unroll
    for (int i = 0; i < REDUCE_PREFETCH; ++i) {
        const int s = r + i * groups;
        early[i] = s < splits ? partial_out[(base + s) * HEAD_DIM + d] : 0.0f;
    }
    // The maxima and sums load together (one round trip, not two), kept in shared memory for the
    // weights.
    float m = KV_NEG_INF;
    for (int s = tid; s < splits; s += threads) {
        const float split_max = partial_max[base + s];
        s_split_sum[s] = partial_sum[base + s];
        s_weight[s] = split_max;
        m = fmaxf(m, split_max);
    }
    m = block_reduce(m, true, s_scratch);
    float l = 0.0f;
    for (int s = tid; s < splits; s += threads) {
        const float w = expf(s_weight[s] - m);
        s_weight[s] = w;
        l += w * s_split_sum[s];
    }
    l = block_reduce(l, false, s_scratch);  // its barrier also publishes s_weight
    float o = 0.0f;
    #pragma unroll
    for (int i = 0; i < REDUCE_PREFETCH; ++i) {
        const int s = r + i * groups;
        if (s < splits) o += s_weight[s] * early[i];
    }
    for (int s = r + REDUCE_PREFETCH * groups; s < splits; s += groups)
        o += s_weight[s] * partial_out[(base + s) * HEAD_DIM + d];
    s_sums[tid] = o;
    __syncthreads();
    if (r != 0) return;
    o = 0.0f;
    for (int g = 0; g < groups; ++g) o += s_sums[g * dims + x];
    // A query with no context (a padding row of a CUDA graph) reads nothing and gets zeros.
    out[((long long)b * heads + h) * HEAD_DIM + d] = float_to_bf16(l > 0.0f ? o / l : 0.0f);
}
