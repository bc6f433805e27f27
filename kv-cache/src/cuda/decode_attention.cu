// Paged decode attention reading the cache in place: INT8 rows are dequantized in registers (the K
// scale folded into the score, the V scale into the probability), bf16 rows from the same source.
// Defines: HEAD_DIM, GROUP (query heads per kv head), INT8 (0/1), BLOCK_SIZE (slots per cache
// block), PARTITION (tokens per split), THREADS (threads per block).
//
// Grid (splits, kv_heads, batch): each block takes PARTITION tokens of one sequence for one kv
// head, and all GROUP query heads that share it, so each K/V row is read once. Pass 1 writes the
// scores to shared memory, then softmax statistics, then pass 2 sums the values. The reduce kernel
// combines the splits (log-sum-exp) into bf16 outputs.

#define ELEM_BYTES (INT8 ? 1 : 2)
#define VALS (16 / ELEM_BYTES)                 // values per thread per row: one 16-byte load
#define TPT (HEAD_DIM / VALS)                  // threads per row
#define TOKENS_PER_PASS (THREADS / TPT)
#define WARPS (THREADS / 32)

// One 16-byte slice of a row as floats (unscaled codes for INT8).
__device__ __forceinline__ void load_slice(const void* cache, long long row, int part, float* out) {
    const uint4 raw = *((const uint4*)((const char*)cache + (row * HEAD_DIM + part * VALS) * ELEM_BYTES));
    const unsigned int words[4] = {raw.x, raw.y, raw.z, raw.w};
#if INT8
    #pragma unroll
    for (int i = 0; i < 16; ++i) out[i] = (float)(signed char)((words[i / 4] >> (8 * (i % 4))) & 0xffu);
#else
    #pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = bf16_to_float((bf16_t)((words[i / 2] >> (16 * (i % 2))) & 0xffffu));
#endif
}

__device__ __forceinline__ long long cache_row(const int* table, int pos, int kv_heads, int kv_head) {
    const long long slot = (long long)table[pos / BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE;
    return slot * kv_heads + kv_head;
}

__device__ float block_reduce(float x, bool is_max, float* scratch) {
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, x, offset);
        x = is_max ? fmaxf(x, other) : x + other;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x / 32] = x;
    __syncthreads();
    x = scratch[0];
    for (int w = 1; w < WARPS; ++w) x = is_max ? fmaxf(x, scratch[w]) : x + scratch[w];
    return x;
}

extern "C" __global__ void __launch_bounds__(THREADS) decode_attention_partial(
    const bf16_t* __restrict__ q,               // [batch][kv_heads * GROUP][HEAD_DIM], batch stride q_stride
    long long q_stride,
    const void* __restrict__ key_cache,         // [slots][kv_heads][HEAD_DIM]
    const void* __restrict__ value_cache,
    const bf16_t* __restrict__ key_scale,       // [slots][kv_heads] (INT8 only)
    const bf16_t* __restrict__ value_scale,
    const int* __restrict__ block_tables,       // [batch][max_blocks]
    int max_blocks,
    const int* __restrict__ context_lens,       // [batch]
    float* __restrict__ partial_out,            // [batch][heads][max_splits][HEAD_DIM]
    float* __restrict__ partial_max,            // [batch][heads][max_splits]
    float* __restrict__ partial_sum,
    int kv_heads, int max_splits, float softmax_scale)
{
    const int split = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
    const int start = split * PARTITION;
    const int context = context_lens[b];
    if (start >= context) return;
    const int n = min(context - start, PARTITION);
    const int heads = kv_heads * GROUP;

    __shared__ float s_q[GROUP][HEAD_DIM];
    __shared__ float s_p[GROUP][PARTITION];
    __shared__ float s_stats[2][GROUP];
    __shared__ float s_scratch[WARPS];
    __shared__ float s_acc[WARPS][GROUP][HEAD_DIM];

    for (int i = threadIdx.x; i < GROUP * HEAD_DIM; i += THREADS) {
        const int g = i / HEAD_DIM;
        s_q[g][i % HEAD_DIM] = bf16_to_float(q[(long long)b * q_stride + (kv_head * GROUP + g) * HEAD_DIM + i % HEAD_DIM]) * softmax_scale;
    }
    __syncthreads();

    const int group = threadIdx.x / TPT;   // which token of the pass
    const int part = threadIdx.x % TPT;    // which 16-byte slice of the row
    const int* table = block_tables + (long long)b * max_blocks;

    // Pass 1: scores. The thread's slice of every query head stays in registers; each iteration
    // has two rows in flight. Every lane of a warp runs the same iterations (the shuffles need
    // them all); lanes past the end compute on zeros and write nothing.
    float qr[GROUP][VALS];
    #pragma unroll
    for (int g = 0; g < GROUP; ++g)
        #pragma unroll
        for (int i = 0; i < VALS; ++i) qr[g][i] = s_q[g][part * VALS + i];
    for (int base = 0; base < n; base += 2 * TOKENS_PER_PASS) {
        int t[2];
        long long row[2];
        float k[2][VALS];
        #pragma unroll
        for (int u = 0; u < 2; ++u) {
            t[u] = base + u * TOKENS_PER_PASS + group;
            row[u] = 0;
            if (t[u] < n) {
                row[u] = cache_row(table, start + t[u], kv_heads, kv_head);
                load_slice(key_cache, row[u], part, k[u]);
            } else {
                #pragma unroll
                for (int i = 0; i < VALS; ++i) k[u][i] = 0.0f;
            }
        }
        #pragma unroll
        for (int u = 0; u < 2; ++u) {
#if INT8
            const float scale = (part == 0 && t[u] < n) ? bf16_to_float(key_scale[row[u]]) : 1.0f;
#else
            const float scale = 1.0f;
#endif
            #pragma unroll
            for (int g = 0; g < GROUP; ++g) {
                float sum = 0.0f;
                #pragma unroll
                for (int i = 0; i < VALS; ++i) sum += qr[g][i] * k[u][i];
                #pragma unroll
                for (int offset = TPT / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
                if (part == 0 && t[u] < n) s_p[g][t[u]] = sum * scale;
            }
        }
    }
    __syncthreads();

    // Softmax statistics of this split, per query head; s_p becomes exp(score - max).
    for (int g = 0; g < GROUP; ++g) {
        float m = KV_NEG_INF;
        for (int t = threadIdx.x; t < n; t += THREADS) m = fmaxf(m, s_p[g][t]);
        m = block_reduce(m, true, s_scratch);
        float l = 0.0f;
        for (int t = threadIdx.x; t < n; t += THREADS) {
            const float p = expf(s_p[g][t] - m);
            s_p[g][t] = p;
            l += p;
        }
        l = block_reduce(l, false, s_scratch);
        if (threadIdx.x == 0) { s_stats[0][g] = m; s_stats[1][g] = l; }
    }
    __syncthreads();

    // Pass 2: probability-weighted values.
    float acc[GROUP][VALS];
    #pragma unroll
    for (int g = 0; g < GROUP; ++g)
        #pragma unroll
        for (int i = 0; i < VALS; ++i) acc[g][i] = 0.0f;
    for (int base = 0; base < n; base += 2 * TOKENS_PER_PASS) {
        #pragma unroll
        for (int u = 0; u < 2; ++u) {
            const int t = base + u * TOKENS_PER_PASS + group;
            if (t >= n) continue;
            const long long row = cache_row(table, start + t, kv_heads, kv_head);
            float v[VALS];
            load_slice(value_cache, row, part, v);
#if INT8
            const float scale = bf16_to_float(value_scale[row]);
#else
            const float scale = 1.0f;
#endif
            #pragma unroll
            for (int g = 0; g < GROUP; ++g) {
                const float p = s_p[g][t] * scale;
                #pragma unroll
                for (int i = 0; i < VALS; ++i) acc[g][i] += p * v[i];
            }
        }
    }
    // Sum the tokens of the pass within the warp (lanes with the same slice), then across warps.
    #pragma unroll
    for (int offset = TPT; offset < 32; offset <<= 1)
        #pragma unroll
        for (int g = 0; g < GROUP; ++g)
            #pragma unroll
            for (int i = 0; i < VALS; ++i) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], offset);
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (lane < TPT) {
        #pragma unroll
        for (int g = 0; g < GROUP; ++g)
            #pragma unroll
            for (int i = 0; i < VALS; ++i) s_acc[warp][g][lane * VALS + i] = acc[g][i];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < GROUP * HEAD_DIM; i += THREADS) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM;
        float sum = 0.0f;
        for (int w = 0; w < WARPS; ++w) sum += s_acc[w][g][d];
        const long long at = ((long long)b * heads + kv_head * GROUP + g) * max_splits + split;
        partial_out[at * HEAD_DIM + d] = sum;
        if (d == 0) { partial_max[at] = s_stats[0][g]; partial_sum[at] = s_stats[1][g]; }
    }
}

// Combine the splits of each (sequence, query head): out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
extern "C" __global__ void decode_attention_reduce(
    const float* __restrict__ partial_out, const float* __restrict__ partial_max,
    const float* __restrict__ partial_sum, const int* __restrict__ context_lens,
    bf16_t* __restrict__ out,                   // [batch][heads][HEAD_DIM]
    int heads, int max_splits)
{
    const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
    const int splits = (context_lens[b] + PARTITION - 1) / PARTITION;
    const long long base = ((long long)b * heads + h) * max_splits;
    float m = KV_NEG_INF;
    for (int s = 0; s < splits; ++s) m = fmaxf(m, partial_max[base + s]);
    float l = 0.0f, o = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const float w = expf(partial_max[base + s] - m);
        l += w * partial_sum[base + s];
        o += w * partial_out[(base + s) * HEAD_DIM + d];
    }
    out[((long long)b * heads + h) * HEAD_DIM + d] = float_to_bf16(o / l);
}
