// Prefill attention, flash-attention style, over the paged cache in place: a thread block takes
// 64 (query, head) rows of one kv head, PREFILL_QUERIES (64 / GROUP) consecutive positions of one
// sequence with all of that kv head's query heads, and streams the sequence's K/V through shared
// memory in tiles of KT keys, each loaded once for all 64 rows. Each row keeps its own causal
// context and online softmax. INT8 and FP8 codes become exact fp16 values as they are staged; the K scale
// multiplies the score, the V scale the probability (over the running maximum V scale, so that
// fp16 keeps it in range). INT4 codes are staged in dim order (their rows interleave the groups)
// times their group's scale over the power of two at least the row's largest (exact in fp16:
// int4_byte_to_f16x2), and that power of two plays the row scale's part. Output: normalized bf16, no splits.
// Defines: HEAD_DIM (32, 64, 128 or 256; 64 and up for INT4), GROUP (query heads per kv head, at
// most 8), QUANT (0/1: codes rather than bf16s), SCALED (0/1: bf16 scales beside the codes; 0 for
// FP8 codes of the values themselves, read as scales of 1), FP8 (0/1: the codes are E4M3), INT4
// (0/1: 4-bit codes, two a byte, a scale per group of 32 values),
// BLOCK_SIZE (slots per cache block, multiple of 16), KT (keys per tile: 32 or 64).
//
// Warp w owns rows 16w .. 16w + 15 (row r: query r / GROUP of the group, head r % GROUP) and
// computes S = Q K^T (Q as the MMA's A operand, K rows from shared memory as B) and O += P V (P from
// S's accumulators as A, V through ldmatrix.trans as B), the layout of FlashAttention-2. Lane
// (g, t) = (lane / 4, lane % 4) holds rows g and g + 8 of its warp.

#define PREFILL_WARPS 4
#define PREFILL_ROWS (16 * PREFILL_WARPS)
// KT: keys per shared-memory tile (a define: 32 or 64; warp 0 takes each key's scales)
#define LANE_KEYS (KT / 32)                  // keys whose row scales each lane of warp 0 loads
#define SMEM_STRIDE (HEAD_DIM + 8)           // 16-bit elements per staged row: no bank conflicts
#define QK_CHUNKS (HEAD_DIM / 16)            // k16 steps of S = Q K^T
#define O_TILES (HEAD_DIM / 8)               // n8 tiles of the output
#define UNITS (ROW_BYTES / 16)               // 16-byte loads per cache row

// Two 16-bit matrices of 8x8 from shared memory, transposed: the B operand of one m16n8k16 MMA.
__device__ __forceinline__ void ldmatrix_x2_trans(const unsigned short* row, unsigned int& b0, unsigned int& b1) {
    const unsigned int address = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(b0), "=r"(b1) : "r"(address));
}

#if INT4
// The power of two at least the largest finite scale of a row's groups (and the smallest normal):
// what INT4 rows are staged over, and what their scores and probabilities are multiplied by.
__device__ __forceinline__ float int4_row_scale(const bf16_t* scales) {
    float largest = FLT_MIN_NORMAL;
    #pragma unroll
    for (int g = 0; g < GROUPS; ++g) largest = fmaxf(largest, bf16_to_float(scales[g]));
    return pow2_at_least(largest);
}

// The two codes of byte 0 of `x` (low nibble, then high) as an fp16x2 of (code - 8) * ratio,
// exactly: `x` holds the byte in bytes 0 and 2, the low nibble is read from byte 0 (1024 + n, less
// 1032) and the high one from byte 2 (1024 + 16 n, less 1152: 16 times the code, so `ratio`'s high
// half is a sixteenth). A code of at most 3 bits times a bf16 ratio fits fp16's 11 (while the product
// is a normal fp16: ratios are at most 1, so only values far below their row's largest lose bits).
__device__ __forceinline__ unsigned int int4_byte_to_f16x2(unsigned int x, unsigned int ratio) {
    unsigned int r = sub_f16x2((x & 0x00f0000fu) | 0x64006400u, 0x64806408u);
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(r), "r"(ratio));
    return r;
}

// One 16-byte unit of an INT4 row, into the staged row in dim order as fp16 values of (code - 8)
// times its group's ratio (`ratios`: each group's, then a sixteenth of it, as int4_byte_to_f16x2
// takes them). The row interleaves its groups (int4_row_offset in layout.cuh): word W holds 4 dims of
// groups 2h and 2h + 1 (h = W % (G / 2), which is i % (G / 2) for the unit's word i: 4 is a multiple
// of G / 2), starting at dim 4 (W / (G / 2)) of each.
__device__ __forceinline__ void stage_int4_unit(uint4 codes, int unit, const unsigned int* ratios, unsigned short* row) {
    const unsigned int words[4] = {codes.x, codes.y, codes.z, codes.w};
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int pair = (4 * unit + i) / (GROUPS / 2), h = i % (GROUPS / 2);
        #pragma unroll
        for (int k = 0; k < 2; ++k) {  // group 2h + k: bytes k and k + 2 of the word
            const int group = 2 * h + k;
            const uint2 out = make_uint2(int4_byte_to_f16x2(__byte_perm(words[i], 0u, k * 0x101u), ratios[group]),
                                         int4_byte_to_f16x2(__byte_perm(words[i], 0u, (k + 2) * 0x101u), ratios[group]));
            *(uint2*)&row[32 * group + 4 * pair] = out;
        }
    }
}
#endif

#define PREFILL_THREADS (PREFILL_WARPS * 32)
#define TILE_UNITS ((KT * UNITS + PREFILL_THREADS - 1) / PREFILL_THREADS)  // units of K (and of V) per thread

// One thread's share of a tile, as loaded: unit i is the thread's (threadIdx.x + i * PREFILL_THREADS)-th
// of the tile's KT x UNITS, zeros past the context. INT4: each of its rows' group scales too. Lane l
// of warp 0 also holds the row scales of keys l, l + 32... (QUANT), which the scores and
// probabilities take.
struct TileLoads {
    uint4 k[TILE_UNITS], v[TILE_UNITS];
#if INT4
    bf16_t k_groups[TILE_UNITS][GROUPS], v_groups[TILE_UNITS][GROUPS];
    bf16_t k_row[LANE_KEYS][GROUPS], v_row[LANE_KEYS][GROUPS];
#elif QUANT
    float k_row[LANE_KEYS], v_row[LANE_KEYS];
#endif
};

// Where position `pos` of the sequence lies in the cache: its slot, by the block table.
__device__ __forceinline__ long long slot_of(const int* table, int pos) {
    return (long long)table[pos / BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE;
}

// Issue the loads of the tile of keys [key0, key0 + KT) of a context of `context` keys.
__device__ __forceinline__ void load_tile(
    TileLoads& t, int key0, int context, const int* table, const unsigned char* key_cache,
    const unsigned char* value_cache, const bf16_t* key_scale, const bf16_t* value_scale, long long num_slots,
    int kv_head, int kv_heads)
{
    const int valid = min(context - key0, KT);
    #pragma unroll
    for (int i = 0; i < TILE_UNITS; ++i) {
        const int u = threadIdx.x + i * PREFILL_THREADS, key = u / UNITS, unit = u % UNITS;
        t.k[i] = t.v[i] = make_uint4(0u, 0u, 0u, 0u);
        const bool used = u < KT * UNITS && key < valid;
        const long long slot = used ? slot_of(table, key0 + key) : 0;
        if (used) {
            const long long at = cache_row(slot, kv_head, kv_heads) * ROW_BYTES + unit * 16;
            t.k[i] = *(const uint4*)(key_cache + at);
            t.v[i] = *(const uint4*)(value_cache + at);
        }
#if INT4
        #pragma unroll
        for (int g = 0; g < GROUPS; ++g) {
            const long long at = (kv_head * num_slots + slot) * GROUPS + g;
            t.k_groups[i][g] = used ? key_scale[at] : (bf16_t)0;
            t.v_groups[i][g] = used ? value_scale[at] : (bf16_t)0;
        }
#endif
    }
#if QUANT
    if (threadIdx.x < 32)
        #pragma unroll
        for (int r = 0; r < LANE_KEYS; ++r) {
            const int key = threadIdx.x + 32 * r;
            const bool used = key < valid;
            const long long slot = used ? slot_of(table, key0 + key) : 0;
#if INT4
            #pragma unroll
            for (int g = 0; g < GROUPS; ++g) {
                t.k_row[r][g] = used ? key_scale[(kv_head * num_slots + slot) * GROUPS + g] : (bf16_t)0;
                t.v_row[r][g] = used ? value_scale[(kv_head * num_slots + slot) * GROUPS + g] : (bf16_t)0;
            }
#elif SCALED
            t.k_row[r] = used ? bf16_to_float(key_scale[kv_head * num_slots + slot]) : 0.0f;
            t.v_row[r] = used ? bf16_to_float(value_scale[kv_head * num_slots + slot]) : 0.0f;
#else
            t.k_row[r] = t.v_row[r] = used ? 1.0f : 0.0f;
#endif
        }
#endif
}

// Stage a loaded tile of `valid` keys in shared memory as the MMAs take it: fp16 values for codes
// (INT4: over its row's power of two), and (QUANT) each key's row scales and the tile's largest V
// scale.
__device__ __forceinline__ void stage_tile(
    const TileLoads& t, int valid, unsigned short (*s_k)[SMEM_STRIDE], unsigned short (*s_v)[SMEM_STRIDE],
    float* s_ks, float* s_vs, float* s_tile_vs_max)
{
    #pragma unroll
    for (int i = 0; i < TILE_UNITS; ++i) {
        const int u = threadIdx.x + i * PREFILL_THREADS, key = u / UNITS, unit = u % UNITS;
        if (u >= KT * UNITS) break;
#if INT4
        // Each group's scale over the row's power of two (past the context: zeros).
        unsigned int k_ratio[GROUPS], v_ratio[GROUPS];
        float k_largest = FLT_MIN_NORMAL, v_largest = FLT_MIN_NORMAL;
        #pragma unroll
        for (int g = 0; g < GROUPS; ++g) {
            k_largest = fmaxf(k_largest, bf16_to_float(t.k_groups[i][g]));
            v_largest = fmaxf(v_largest, bf16_to_float(t.v_groups[i][g]));
        }
        const float k_inverse = key < valid ? pow2_inverse(pow2_at_least(k_largest)) : 0.0f;
        const float v_inverse = key < valid ? pow2_inverse(pow2_at_least(v_largest)) : 0.0f;
        #pragma unroll
        for (int g = 0; g < GROUPS; ++g) {
            const float k = bf16_to_float(t.k_groups[i][g]) * k_inverse;
            const float v = bf16_to_float(t.v_groups[i][g]) * v_inverse;
            k_ratio[g] = pack2(k, k * 0.0625f);
            v_ratio[g] = pack2(v, v * 0.0625f);
        }
        stage_int4_unit(t.k[i], unit, k_ratio, s_k[key]);
        stage_int4_unit(t.v[i], unit, v_ratio, s_v[key]);
#elif QUANT
        uint4 k_lo, k_hi, v_lo, v_hi;
        codes4_to_f16x2(t.k[i].x, k_lo.x, k_lo.y); codes4_to_f16x2(t.k[i].y, k_lo.z, k_lo.w);
        codes4_to_f16x2(t.k[i].z, k_hi.x, k_hi.y); codes4_to_f16x2(t.k[i].w, k_hi.z, k_hi.w);
        codes4_to_f16x2(t.v[i].x, v_lo.x, v_lo.y); codes4_to_f16x2(t.v[i].y, v_lo.z, v_lo.w);
        codes4_to_f16x2(t.v[i].z, v_hi.x, v_hi.y); codes4_to_f16x2(t.v[i].w, v_hi.z, v_hi.w);
        *(uint4*)&s_k[key][unit * 16] = k_lo; *(uint4*)&s_k[key][unit * 16 + 8] = k_hi;
        *(uint4*)&s_v[key][unit * 16] = v_lo; *(uint4*)&s_v[key][unit * 16 + 8] = v_hi;
#else
        *(uint4*)&s_k[key][unit * 8] = t.k[i];
        *(uint4*)&s_v[key][unit * 8] = t.v[i];
#endif
    }
#if QUANT
    if (threadIdx.x < 32) {
        float big = 0.0f;
        #pragma unroll
        for (int r = 0; r < LANE_KEYS; ++r) {
            const int key = threadIdx.x + 32 * r;
#if INT4
            const float ks = key < valid ? int4_row_scale(t.k_row[r]) : 0.0f;
            const float vs = key < valid ? int4_row_scale(t.v_row[r]) : 0.0f;
#else
            const float ks = t.k_row[r], vs = t.v_row[r];
#endif
            s_ks[key] = ks;
            s_vs[key] = vs;
            big = fmaxf(big, vs);
        }
        for (int offset = 16; offset > 0; offset >>= 1) big = fmaxf(big, __shfl_xor_sync(0xffffffffu, big, offset));
        if (threadIdx.x == 0) *s_tile_vs_max = big;
    }
#endif
}

extern "C" __global__ void __launch_bounds__(PREFILL_THREADS, 2) prefill_attention(
    const bf16_t* __restrict__ q,               // [queries][kv_heads * GROUP][HEAD_DIM], query stride q_stride
    long long q_stride,
    const unsigned char* __restrict__ key_cache,   // rows of HEAD_DIM elements, placed by cache_row (layout.cuh)
    const unsigned char* __restrict__ value_cache,
    const bf16_t* __restrict__ key_scale,       // [kv_heads][slots][GROUPS] (SCALED only)
    const bf16_t* __restrict__ value_scale,
    long long num_slots,
    const int* __restrict__ block_tables,       // [sequences][max_blocks]
    const int* __restrict__ geometry,           // [2]: max_blocks, then decode's split length (unused here)
    const int* __restrict__ context_lens,       // [queries]: a query's causal context
    const int* __restrict__ query_groups,       // [groups + 1]: each group's first query, then the end
    const int* __restrict__ group_tables,       // [groups]: the row of block_tables a group reads
    bf16_t* __restrict__ out,                   // [queries][kv_heads * GROUP][HEAD_DIM]
    int kv_heads, float softmax_scale)
{
    __shared__ __align__(16) unsigned short s_k[KT][SMEM_STRIDE];
    __shared__ __align__(16) unsigned short s_v[KT][SMEM_STRIDE];
    __shared__ float s_ks[KT], s_vs[KT], s_tile_vs_max;
    const int group = blockIdx.x, kv_head = blockIdx.y;
    const int first_query = query_groups[group], queries = query_groups[group + 1] - first_query;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int* table = block_tables + (long long)group_tables[group] * geometry[0];
    int context = 0;
    for (int i = 0; i < queries; ++i) context = max(context, context_lens[first_query + i]);

    // This lane's rows g and g + 8 of the warp: their query, head and causal context.
    int row_context[2], row_query[2], row_head[2];
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = 16 * warp + g + 8 * h, query = r / GROUP;
        row_query[h] = query < queries ? query : -1;
        row_head[h] = kv_head * GROUP + r % GROUP;
        row_context[h] = query < queries ? context_lens[first_query + query] : 0;
    }
    // Q fragments: a0 (row g, dims 2t, 2t+1 of chunk c), a1 (row g + 8), a2 and a3 (dims + 8).
    unsigned int qa[QK_CHUNKS][4];
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
        const bf16_t* qrow = q + (long long)(first_query + max(row_query[h], 0)) * q_stride
                             + (long long)row_head[h] * HEAD_DIM;
        #pragma unroll
        for (int c = 0; c < QK_CHUNKS; ++c)
            #pragma unroll
            for (int half = 0; half < 2; ++half) {
                unsigned int w = row_query[h] >= 0 ? *(const unsigned int*)(qrow + 16 * c + 2 * t + 8 * half) : 0u;
#if QUANT
                const float lo = fminf(fmaxf(bf16_to_float((bf16_t)(w & 0xffffu)), -65504.0f), 65504.0f);
                const float hi = fminf(fmaxf(bf16_to_float((bf16_t)(w >> 16)), -65504.0f), 65504.0f);
                w = pack2(lo, hi);
#endif
                qa[c][h + 2 * half] = w;
            }
    }

    float o[O_TILES][4];
    #pragma unroll
    for (int n = 0; n < O_TILES; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {KV_NEG_INF, KV_NEG_INF}, l[2] = {0.0f, 0.0f};  // l: this lane's keys only
    float vs_max = 0.0f;  // QUANT: the V scales are divided by this running maximum
    const float score_scale = softmax_scale * LOG2E;  // scores in log2 units: exp2 below

    // The next tile's rows (and scales), loaded into registers while the current one is computed
    // on, so that its two dependent loads (the block table, then the rows) wait behind the MMAs
    // rather than before them: TILE_UNITS 16-byte units of K and of V per thread.
    TileLoads next;
    if (context > 0) load_tile(next, 0, context, table, key_cache, value_cache, key_scale, value_scale, num_slots, kv_head, kv_heads);
    for (int key0 = 0; key0 < context; key0 += KT) {
        const int valid = min(context - key0, KT);
        __syncthreads();  // the previous tile is no longer read
        stage_tile(next, valid, s_k, s_v, s_ks, s_vs, &s_tile_vs_max);
        __syncthreads();
        if (key0 + KT < context)
            load_tile(next, key0 + KT, context, table, key_cache, value_cache, key_scale, value_scale, num_slots, kv_head, kv_heads);

        // S = Q K^T: s[n] holds rows g (0, 1) and g + 8 (2, 3) at keys 8n + 2t, 8n + 2t + 1.
        float s[KT / 8][4];
        #pragma unroll
        for (int n = 0; n < KT / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            #pragma unroll
            for (int c = 0; c < QK_CHUNKS; ++c) {
                const unsigned int b0 = *(const unsigned int*)&s_k[8 * n + g][16 * c + 2 * t];
                const unsigned int b1 = *(const unsigned int*)&s_k[8 * n + g][16 * c + 2 * t + 8];
                mma(s[n], qa[c][0], qa[c][1], qa[c][2], qa[c][3], b0, b1);
            }
        }
        float tile_max[2] = {KV_NEG_INF, KV_NEG_INF};
        #pragma unroll
        for (int n = 0; n < KT / 8; ++n)
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = 8 * n + 2 * t + (e & 1), h = e >> 1;
#if QUANT
                s[n][e] *= score_scale * s_ks[key];
#else
                s[n][e] *= score_scale;
#endif
                if (key0 + key >= row_context[h]) s[n][e] = KV_NEG_INF;
                tile_max[h] = fmaxf(tile_max[h], s[n][e]);
            }
        float alpha[2];
        #pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float m_new = fmaxf(m[h], quad_max(tile_max[h]));
            // -inf while a row has seen no key of its context: subtract 0, so alpha and p are 0.
            const float m_sub = m_new == KV_NEG_INF ? 0.0f : m_new;
            alpha[h] = exp2f(m[h] - m_sub);
            m[h] = m_new;
            l[h] *= alpha[h];
            #pragma unroll
            for (int n = 0; n < KT / 8; ++n)
                #pragma unroll
                for (int e = 2 * h; e < 2 * h + 2; ++e) {
                    s[n][e] = exp2f(s[n][e] - m_sub);
                    l[h] += s[n][e];
                }
        }
#if QUANT
        const float vs_new = fmaxf(fmaxf(vs_max, FLT_MIN_NORMAL), s_tile_vs_max);
        const float ratio = vs_max / vs_new, inv = 1.0f / vs_new;
        vs_max = vs_new;
        alpha[0] *= ratio;
        alpha[1] *= ratio;
        #pragma unroll
        for (int n = 0; n < KT / 8; ++n)
            #pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] *= s_vs[8 * n + 2 * t + (e & 1)] * inv;
#endif
        #pragma unroll
        for (int n = 0; n < O_TILES; ++n) {
            o[n][0] *= alpha[0]; o[n][1] *= alpha[0];
            o[n][2] *= alpha[1]; o[n][3] *= alpha[1];
        }
        // O += P V, sixteen keys at a time: P's A fragments are S's accumulators as they stand.
        #pragma unroll
        for (int kc = 0; kc < KT / 16; ++kc) {
            const unsigned int a0 = pack2(s[2 * kc][0], s[2 * kc][1]);
            const unsigned int a1 = pack2(s[2 * kc][2], s[2 * kc][3]);
            const unsigned int a2 = pack2(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            const unsigned int a3 = pack2(s[2 * kc + 1][2], s[2 * kc + 1][3]);
            // Lanes 0-7 address keys 16kc + 0..7, lanes 8-15 keys 16kc + 8..15 (others: ignored).
            const unsigned short* v_row = &s_v[16 * kc + (lane % 16)][0];
            #pragma unroll
            for (int n = 0; n < O_TILES; ++n) {
                unsigned int b0, b1;
                ldmatrix_x2_trans(v_row + 8 * n, b0, b1);
                mma(o[n], a0, a1, a2, a3, b0, b1);
            }
        }
    }

    const float sum[2] = {quad_sum(l[0]), quad_sum(l[1])};  // every lane shuffles, then unused rows stop
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (row_query[h] < 0) continue;
        const float scale = (QUANT ? vs_max : 1.0f) / sum[h];
        bf16_t* row = out + ((long long)(first_query + row_query[h]) * kv_heads * GROUP + row_head[h]) * HEAD_DIM;
        #pragma unroll
        for (int n = 0; n < O_TILES; ++n) {
            const unsigned int lo = float_to_bf16(o[n][2 * h] * scale);
            const unsigned int hi = float_to_bf16(o[n][2 * h + 1] * scale);
            *(unsigned int*)(row + 8 * n + 2 * t) = lo | (hi << 16);
        }
    }
}
