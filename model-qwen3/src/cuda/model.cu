// The Qwen3 model's own kernels (the cache kernels live in kv-cache). Defines: HEAD_DIM, HIDDEN
// (hidden_size, a multiple of 4).
// The residual stream is f32; matrix inputs and outputs are bf16 (cuBLAS, f32 accumulation).

// out[t] = table[ids[t]]
// x[t] = embed[ids[t]] in f32. A tensor-parallel rank holds the rows vocab_start..+vocab_rows and
// writes zeros for other ids: the sum over the ranks is the embedding.
extern "C" __global__ void embedding(const int* __restrict__ ids, const bf16_t* __restrict__ table,
                                     float* __restrict__ x, int hidden, int vocab_start, int vocab_rows) {
    const long long t = blockIdx.x;
    const int local = ids[t] - vocab_start;
    const bool here = local >= 0 && local < vocab_rows;
    const bf16_t* row = table + (long long)(here ? local : 0) * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) x[t * hidden + i] = here ? bf16_to_float(row[i]) : 0.0f;
}

// Sums of each thread's value over the block, in a fixed order (so a row's result never varies
// from run to run), returned to every thread.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    T total = 0;
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += scratch[w];
    return total;
}

// Residual add, then RMSNorm: x[r] += delta[r] (if delta), out[i] = norm(x[rows[i]]) (rows: null for
// every row). One block of 128 threads per output row; each thread keeps its HIDDEN / 128 values in
// registers (16-byte loads of x, 8-byte loads of delta), so x is read once, and loads its weights
// beside them, so that they do not wait for the block's sum (a few rows: a round trip to memory less).
#define NORM_THREADS 128
#define NORM_VECTORS ((HIDDEN + 4 * NORM_THREADS - 1) / (4 * NORM_THREADS))
extern "C" __global__ void add_rms_norm(float* __restrict__ x, const bf16_t* __restrict__ delta,
                                        const int* __restrict__ rows, const float* __restrict__ weight,
                                        bf16_t* __restrict__ out, float eps) {
    __shared__ float scratch[32];
    start_next_kernel();  // a few blocks: the next kernel's may load their weights beside them
    float4 v[NORM_VECTORS], w[NORM_VECTORS];
    #pragma unroll
    for (int k = 0; k < NORM_VECTORS; ++k) {
        const int i = k * NORM_THREADS + threadIdx.x;  // in float4s
        if (4 * i < HIDDEN) w[k] = ((const float4*)weight)[i];
    }
    wait_for_previous_kernel();  // x and delta (a dependent launch: the weights went first)
    const long long r = rows ? rows[blockIdx.x] : blockIdx.x;
    float4* row = (float4*)(x + r * HIDDEN);
    float sum = 0.0f;
    #pragma unroll
    for (int k = 0; k < NORM_VECTORS; ++k) {
        const int i = k * NORM_THREADS + threadIdx.x;  // in float4s
        if (4 * i >= HIDDEN) break;
        v[k] = row[i];
        if (delta) {
            const uint2 d = *(const uint2*)(delta + r * HIDDEN + 4 * i);
            v[k].x += bf16_to_float((bf16_t)(d.x & 0xffffu)); v[k].y += bf16_to_float((bf16_t)(d.x >> 16));
            v[k].z += bf16_to_float((bf16_t)(d.y & 0xffffu)); v[k].w += bf16_to_float((bf16_t)(d.y >> 16));
            row[i] = v[k];
        }
        sum += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
    }
    const float inverse = rsqrtf(block_sum(sum, scratch) / HIDDEN + eps);
    #pragma unroll
    for (int k = 0; k < NORM_VECTORS; ++k) {
        const int i = k * NORM_THREADS + threadIdx.x;
        if (4 * i >= HIDDEN) break;
        const unsigned int lo = float_to_bf16(w[k].x * (v[k].x * inverse)) | (unsigned int)float_to_bf16(w[k].y * (v[k].y * inverse)) << 16;
        const unsigned int hi = float_to_bf16(w[k].z * (v[k].z * inverse)) | (unsigned int)float_to_bf16(w[k].w * (v[k].w * inverse)) << 16;
        *(uint2*)(out + (long long)blockIdx.x * HIDDEN + 4 * i) = make_uint2(lo, hi);
    }
}

// Per-head RMSNorm of q and k, then NeoX RoPE (cos and sin times rope_scale, YaRN's attention
// factor), in place on the packed qkv rows. Grid (tokens,
// heads in blocks of 4), a warp per head: lane l owns the pairs (d, d + HEAD_DIM / 2) for d = l,
// l + 32, ..., so the norm's sum is a warp shuffle, with no shared memory or barrier.
extern "C" __global__ void qk_norm_rope(bf16_t* __restrict__ qkv, const int* __restrict__ positions,
                                        const float* __restrict__ q_weight, const float* __restrict__ k_weight,
                                        const float* __restrict__ inv_freq, float rope_scale, int heads, int kv_heads,
                                        long long stride, float eps) {
    constexpr int HALF = HEAD_DIM / 2, PAIRS = (HALF + 31) / 32;
    const int lane = threadIdx.x % 32, head = blockIdx.y * (blockDim.x / 32) + threadIdx.x / 32;
    if (head >= heads + kv_heads) return;
    bf16_t* x = qkv + (long long)blockIdx.x * stride + (long long)head * HEAD_DIM;
    const float* w = head < heads ? q_weight : k_weight;
    float a[PAIRS], b[PAIRS], sum = 0.0f;
    #pragma unroll
    for (int p = 0; p < PAIRS; ++p) {
        const int d = lane + 32 * p;
        a[p] = d < HALF ? bf16_to_float(x[d]) : 0.0f;
        b[p] = d < HALF ? bf16_to_float(x[d + HALF]) : 0.0f;
        sum += a[p] * a[p] + b[p] * b[p];
    }
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    const float inverse = rsqrtf(sum / HEAD_DIM + eps), position = (float)positions[blockIdx.x];
    #pragma unroll
    for (int p = 0; p < PAIRS; ++p) {
        const int d = lane + 32 * p;
        if (d >= HALF) break;
        const float u = w[d] * (a[p] * inverse), v = w[d + HALF] * (b[p] * inverse);
        float s, c;
        sincosf(position * inv_freq[d], &s, &c);
        s *= rope_scale;
        c *= rope_scale;
        x[d] = float_to_bf16(u * c - v * s);
        x[d + HALF] = float_to_bf16(v * c + u * s);
    }
}

// silu(g) * u of the bf16 gate and up projections, as the model computes it on the CPU.
__device__ __forceinline__ bf16_t silu_times(bf16_t g, bf16_t u) {
    const float x = bf16_to_float(g);
    return float_to_bf16(x / (1.0f + expf(-x)) * bf16_to_float(u));
}

// out[t][i] = silu(gate_up[t][i]) * gate_up[t][inter + i]. Grid (tokens, chunks of 8 x blockDim
// values): each thread takes 8 consecutive values, in 16-byte loads when rows allow; no division.
extern "C" __global__ void silu_mul(const bf16_t* __restrict__ gate_up, bf16_t* __restrict__ out,
                                    int inter) {
    const int i0 = (blockIdx.y * blockDim.x + threadIdx.x) * 8;
    if (i0 >= inter) return;
    const bf16_t* gate = gate_up + (long long)blockIdx.x * 2 * inter + i0;
    const bf16_t* up = gate + inter;
    bf16_t* o = out + (long long)blockIdx.x * inter + i0;
    if (inter % 8 == 0) {
        union { uint4 v; bf16_t h[8]; } g, u, r;
        g.v = *(const uint4*)gate;
        u.v = *(const uint4*)up;
        #pragma unroll
        for (int k = 0; k < 8; ++k) r.h[k] = silu_times(g.h[k], u.h[k]);
        *(uint4*)o = r.v;
    } else {
        for (int k = 0; k < 8 && i0 + k < inter; ++k) o[k] = silu_times(gate[k], up[k]);
    }
}

// Sampling on the GPU by the Gumbel-max trick: argmax_i(logit_i / T + g_i), with g_i Gumbel noise
// from a counter-based hash of (seed, step, i), is a draw from softmax(logits / T); T = 0 is greedy.
// The noise depends only on the request's seed and position, never on the batch. One block per
// row; ties go to the lower token id. A tensor-parallel rank holds the logits of token ids
// vocab_start..+vocab_rows: it writes its best id and, when best_values is given, that id's score,
// and pick_best_shard chooses among the ranks; the noise is keyed by the global token id, so the
// draw is the one a single GPU makes. Per token: two rounds of a 32-bit hash keyed by the row's
// 64-bit key, and g = -log(-log(u)): the inner logarithm accurate (for u near 1, -log(u) is as
// small as 3e-8, below the fast logarithm's absolute error, which could make it 0 or negative and
// hand that token the draw), the outer one fast (its argument is positive, and an absolute error
// of 4e-7 in g is far below what a draw can resolve).
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// murmur3's finalizer: a bijection of 32-bit words that mixes every bit.
__device__ __forceinline__ unsigned int fmix32(unsigned int h) {
    h ^= h >> 16; h *= 0x85ebca6bu;
    h ^= h >> 13; h *= 0xc2b2ae35u;
    return h ^ (h >> 16);
}

__device__ __forceinline__ bool better(float v, int id, float best, int best_id) {
    return v > best || (v == best && id < best_id);
}

// The row's Gumbel score of token i (global id) with logit v: v / T plus the noise keyed by the
// row's (seed, step) and i; greedy when T = 0.
struct GumbelRow {
    float t, inverse_t;
    unsigned int key_lo, key_hi;
    __device__ GumbelRow(float temperature, unsigned long long seed, unsigned long long step) {
        t = temperature;
        inverse_t = t > 0.0f ? 1.0f / t : 0.0f;
        const unsigned long long key = mix64(seed ^ mix64(step + 0x9e3779b97f4a7c15ull));
        key_lo = (unsigned int)key;
        key_hi = (unsigned int)(key >> 32);
    }
    __device__ __forceinline__ float score(float v, int i) const {
        if (t > 0.0f) {
            const unsigned int bits = fmix32(fmix32((unsigned int)i ^ key_lo) + key_hi);
            const float u = ((float)(bits >> 8) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
            v = v * inverse_t - __logf(-logf(u));  // -logf(u) >= 2^-25 > 0
        }
        return v;
    }
};

// The block's best (score, id) of each thread's, ties to the lower id, in thread 0.
__device__ void block_best(float& best, int& best_i, float* s_value, int* s_index) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, offset);
        const int oi = __shfl_xor_sync(0xffffffffu, best_i, offset);
        if (better(ov, oi, best, best_i)) { best = ov; best_i = oi; }
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) { s_value[threadIdx.x / 32] = best; s_index[threadIdx.x / 32] = best_i; }
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 1; w < (blockDim.x + 31) / 32; ++w)
            if (better(s_value[w], s_index[w], best, best_i)) { best = s_value[w]; best_i = s_index[w]; }
}

__device__ float block_max(float v, float* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    float m = scratch[0];
    for (int w = 1; w < (blockDim.x + 31) / 32; ++w) m = fmaxf(m, scratch[w]);
    return m;
}

// Calls f(logit, local index) for every logit of the row, four per load where rows are 16-byte
// aligned (two loads in flight per thread), so that one block per row streams the logits.
template <typename F>
__device__ __forceinline__ void for_each_logit(const float* l, int vocab_rows, F f) {
    if (vocab_rows % 4 == 0) {
        const float4* l4 = (const float4*)l;
        #pragma unroll 2
        for (int q = threadIdx.x; q < vocab_rows / 4; q += blockDim.x) {
            const float4 v = l4[q];
            f(v.x, 4 * q); f(v.y, 4 * q + 1); f(v.z, 4 * q + 2); f(v.w, 4 * q + 3);
        }
    } else {
        for (int local = threadIdx.x; local < vocab_rows; local += blockDim.x) f(l[local], local);
    }
}

// Truncated sampling (min_p, top_k, top_p: the engine's order and tie rule, ties with the last
// token kept kept too). The kept tokens are those at or above a logit threshold; the Gumbel-max
// draw among them is a draw from the renormalized distribution. Finding the threshold reads the row
// three times: its maximum; the count and weight exp((v - max) / T) of the tokens within 2^j / 8
// of T below the maximum, for 12 levels j at once; then the tokens of the narrowest level that
// holds the answer are gathered (at most SAMPLE_CANDIDATES), sorted in shared memory, and the
// threshold and the draw are taken from them. When no level is narrow enough (a long top_k, or a
// flat distribution's nucleus), the threshold is found by bisection over the logits' order and
// the draw scans the row.
#define SAMPLE_CANDIDATES 2048
#define SAMPLE_LEVELS 12

// Logits as unsigned keys in the same order (for the bisection).
__device__ __forceinline__ unsigned int order_key(float v) {
    const unsigned int u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The largest threshold key x with at least `k` tokens (count) or `target` weight (weight) at or
// above it, among tokens at or above `floor_key`: 32 steps of bisection, one pass each.
__device__ unsigned int bisect_key(const float* l, int vocab_rows, unsigned int floor_key, bool by_weight,
                                   unsigned int k, float target, float m, float inverse_t, float* fscratch,
                                   unsigned int* uscratch) {
    unsigned int lo = floor_key, hi = 0xffffffffu;  // the answer is in [lo, hi]
    while (lo < hi) {
        const unsigned int mid = lo + (unsigned int)(((unsigned long long)hi - lo + 1) / 2);
        unsigned int count = 0;
        float weight = 0.0f;
        for_each_logit(l, vocab_rows, [&](float v, int) {
            if (order_key(v) >= mid) { ++count; weight += __expf((v - m) * inverse_t); }
        });
        const bool enough = by_weight ? block_sum(weight, fscratch) >= target : block_sum(count, uscratch) >= k;
        if (enough) lo = mid; else hi = mid - 1;
    }
    return lo;
}

__device__ void sample_truncated(const float* l, int vocab_rows, int vocab_start, const GumbelRow& g, int top_k,
                                 float top_p, float log_min_p, int* out_row) {
    __shared__ float s_cand_v[SAMPLE_CANDIDATES];
    __shared__ int s_cand_i[SAMPLE_CANDIDATES];
    __shared__ float s_fscratch[32];
    __shared__ unsigned int s_uscratch[32];
    __shared__ float s_value[32];
    __shared__ int s_index[32];
    __shared__ unsigned int s_count;
    __shared__ float s_threshold;
    const float t = g.t, inverse_t = g.inverse_t;
    float m = KV_NEG_INF;
    for_each_logit(l, vocab_rows, [&](float v, int) { m = fmaxf(m, v); });
    m = block_max(m, s_fscratch);
    // min_p keeps logits >= max + T ln(min_p), computed as the engine's CPU sampler does.
    const float floor = log_min_p > KV_NEG_INF ? __fadd_rn(m, __fmul_rn(t, log_min_p)) : KV_NEG_INF;
    float cut[SAMPLE_LEVELS];
    unsigned int count[SAMPLE_LEVELS + 1];
    float weight[SAMPLE_LEVELS + 1];
    #pragma unroll
    for (int j = 0; j < SAMPLE_LEVELS; ++j) {
        cut[j] = fmaxf(__fsub_rn(m, t * (0.125f * (float)(1 << j))), floor);
        count[j] = 0;
        weight[j] = 0.0f;
    }
    count[SAMPLE_LEVELS] = 0;
    weight[SAMPLE_LEVELS] = 0.0f;
    for_each_logit(l, vocab_rows, [&](float v, int) {
        if (v < floor || v == KV_NEG_INF) return;
        const float w = __expf((v - m) * inverse_t);
        #pragma unroll
        for (int j = 0; j < SAMPLE_LEVELS; ++j)
            if (v >= cut[j]) { ++count[j]; weight[j] += w; }
        ++count[SAMPLE_LEVELS];
        weight[SAMPLE_LEVELS] += w;
    });
    const unsigned int kept_all = block_sum(count[SAMPLE_LEVELS], s_uscratch);
    const float weight_all = block_sum(weight[SAMPLE_LEVELS], s_fscratch);
    const unsigned int k = top_k > 0 && (unsigned int)top_k < kept_all ? (unsigned int)top_k : 0;
    // The narrowest level that holds every token the truncation can keep: the top k, or (top_p
    // alone) weight past the nucleus's, with room for the sums' rounding.
    int level = -1;
    #pragma unroll
    for (int j = 0; j < SAMPLE_LEVELS; ++j) {
        const unsigned int c = block_sum(count[j], s_uscratch);
        const float w = block_sum(weight[j], s_fscratch);
        const bool holds = k > 0 ? c >= k : (top_p < 1.0f ? w >= top_p * weight_all * 1.001f : c == kept_all);
        if (level < 0 && holds && c <= SAMPLE_CANDIDATES) level = j;
    }
    float best = KV_NEG_INF;
    int best_i = 0x7fffffff;
    if (level >= 0) {
        // Gather, sort (largest logit first, ties to the lower id), cut, draw.
        float lcut = cut[0];
        #pragma unroll
        for (int j = 0; j < SAMPLE_LEVELS; ++j) if (j == level) lcut = cut[j];
        if (threadIdx.x == 0) s_count = 0;
        for (int c = threadIdx.x; c < SAMPLE_CANDIDATES; c += blockDim.x) { s_cand_v[c] = KV_NEG_INF; s_cand_i[c] = 0x7fffffff; }
        __syncthreads();
        for_each_logit(l, vocab_rows, [&](float v, int local) {
            if (v >= lcut && v >= floor && v > KV_NEG_INF) {
                const unsigned int at = atomicAdd(&s_count, 1u);
                if (at < SAMPLE_CANDIDATES) { s_cand_v[at] = v; s_cand_i[at] = vocab_start + local; }
            }
        });
        __syncthreads();
        for (int size = 2; size <= SAMPLE_CANDIDATES; size <<= 1)
            for (int stride = size >> 1; stride > 0; stride >>= 1) {
                for (int a = threadIdx.x; a < SAMPLE_CANDIDATES; a += blockDim.x) {
                    const int b = a ^ stride;
                    if (b > a) {
                        const bool descending = (a & size) == 0;
                        const bool a_first = better(s_cand_v[a], s_cand_i[a], s_cand_v[b], s_cand_i[b]);
                        if (a_first != descending) {
                            const float tv = s_cand_v[a]; s_cand_v[a] = s_cand_v[b]; s_cand_v[b] = tv;
                            const int ti = s_cand_i[a]; s_cand_i[a] = s_cand_i[b]; s_cand_i[b] = ti;
                        }
                    }
                }
                __syncthreads();
            }
        if (threadIdx.x == 0) {
            const unsigned int n = min(s_count, (unsigned int)SAMPLE_CANDIDATES);
            float threshold = floor;
            if (k > 0 && k <= n) threshold = fmaxf(threshold, s_cand_v[k - 1]);
            if (top_p < 1.0f) {
                double total = 0.0;
                if (k > 0) {
                    for (unsigned int c = 0; c < n && s_cand_v[c] >= threshold; ++c) total += __expf((s_cand_v[c] - m) * inverse_t);
                } else {
                    total = weight_all;
                }
                double cumulative = 0.0;
                for (unsigned int c = 0; c < n && s_cand_v[c] >= threshold; ++c) {
                    cumulative += __expf((s_cand_v[c] - m) * inverse_t);
                    if (cumulative >= (double)top_p * total) { threshold = s_cand_v[c]; break; }
                }
            }
            s_threshold = threshold;
        }
        __syncthreads();
        const float threshold = s_threshold;
        for (int c = threadIdx.x; c < SAMPLE_CANDIDATES; c += blockDim.x) {
            const float v = s_cand_v[c];
            if (v >= threshold && v > KV_NEG_INF) {
                const float score = g.score(v, s_cand_i[c]);
                if (better(score, s_cand_i[c], best, best_i)) { best = score; best_i = s_cand_i[c]; }
            }
        }
    } else {
        // Bisection for the threshold, then a draw over the whole row.
        unsigned int floor_key = order_key(floor);
        if (k > 0) floor_key = bisect_key(l, vocab_rows, floor_key, false, k, 0.0f, m, inverse_t, s_fscratch, s_uscratch);
        if (top_p < 1.0f) {
            float total = weight_all;
            if (k > 0) {
                float w = 0.0f;
                for_each_logit(l, vocab_rows, [&](float v, int) { if (order_key(v) >= floor_key) w += __expf((v - m) * inverse_t); });
                total = block_sum(w, s_fscratch);
            }
            floor_key = bisect_key(l, vocab_rows, floor_key, true, 0, top_p * total, m, inverse_t, s_fscratch, s_uscratch);
        }
        const float threshold = key_value(floor_key);
        for_each_logit(l, vocab_rows, [&](float v, int local) {
            if (v >= threshold && v > KV_NEG_INF) {
                const int i = vocab_start + local;
                const float score = g.score(v, i);
                if (better(score, i, best, best_i)) { best = score; best_i = i; }
            }
        });
    }
    block_best(best, best_i, s_value, s_index);
    if (threadIdx.x == 0) *out_row = best_i;
}

// top_ks, top_ps and log_min_ps may be null (no truncation); a row truncates when its top_k > 0,
// top_p < 1 or log_min_p > -inf, at a temperature above 0 (one GPU only: the ranks of a
// tensor-parallel group hold slices of the vocabulary, and the engine truncates on the host).
// Grid (rows, pieces): a few rows spread each row over `pieces` blocks, each drawing the best of
// one piece of the vocabulary (a multiple of 4 logits long) into out[piece * rows + row] (and its
// score into best_values), for pick_best_shard to choose among, as among tensor-parallel ranks. A
// row that truncates needs the whole row in one block: pieces is then 1.
extern "C" __global__ void __launch_bounds__(1024) sample_tokens(const float* __restrict__ logits, const float* __restrict__ temperatures,
                                         const unsigned long long* __restrict__ seeds,
                                         const unsigned long long* __restrict__ steps, int* __restrict__ out,
                                         float* __restrict__ best_values, int vocab_start, int vocab_rows,
                                         const int* __restrict__ top_ks, const float* __restrict__ top_ps,
                                         const float* __restrict__ log_min_ps) {
    __shared__ float s_value[32];
    __shared__ int s_index[32];
    const int row = blockIdx.x, rows = gridDim.x, piece = blockIdx.y;
    const GumbelRow g(temperatures[row], seeds[row], steps[row]);
    const float* l = logits + (long long)row * vocab_rows;
    const int top_k = top_ks ? top_ks[row] : 0;
    const float top_p = top_ps ? top_ps[row] : 1.0f;
    const float log_min_p = log_min_ps ? log_min_ps[row] : KV_NEG_INF;
    if (g.t > 0.0f && (top_k > 0 || top_p < 1.0f || log_min_p > KV_NEG_INF)) {
        sample_truncated(l, vocab_rows, vocab_start, g, top_k, top_p, log_min_p, out + row);
        return;
    }
    const int piece_rows = ((vocab_rows + gridDim.y - 1) / gridDim.y + 3) / 4 * 4, first = piece * piece_rows;
    float best = KV_NEG_INF;
    int best_i = 0x7fffffff;
    for_each_logit(l + first, max(min(piece_rows, vocab_rows - first), 0), [&](float v, int local) {
        const int i = vocab_start + first + local;
        const float score = g.score(v, i);
        if (better(score, i, best, best_i)) { best = score; best_i = i; }
    });
    block_best(best, best_i, s_value, s_index);
    if (threadIdx.x == 0) {
        out[piece * rows + row] = best_i;
        if (best_values) best_values[piece * rows + row] = best;
    }
}

// Penalties and masks before the draw (LogitAdjustment::apply, each operation rounded as the CPU
// rounds it): entry e changes token tokens[e] of row rows[e], keeping the value it replaces in
// saved[e]; with restore, it puts that value back, so that log-probabilities see the raw logits.
// A row lists each token once, so no two threads touch one logit.
extern "C" __global__ void adjust_logits(float* __restrict__ logits, const int* __restrict__ rows,
                                         const int* __restrict__ tokens, const float* __restrict__ repetitions,
                                         const float* __restrict__ subtracts, float* __restrict__ saved, int count,
                                         int vocab_rows, int restore) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= count) return;
    float* l = logits + (long long)rows[e] * vocab_rows + tokens[e];
    if (restore) { *l = saved[e]; return; }
    const float v = *l, r = repetitions[e];
    saved[e] = v;
    *l = __fsub_rn(v > 0.0f ? __fdiv_rn(v, r) : __fmul_rn(v, r), subtracts[e]);
}

// Log-probabilities from the raw logits (log-softmax, vLLM's default) for each row with
// counts[row] >= 0: the sampled token's, and the counts[row] most likely tokens' (ties to the lower
// id), written at top_*[row * widest + j]. The top tokens come by repeated block argmax over each
// thread's best token not yet taken: only the thread whose token was taken rescans its share of
// the row, so n tokens cost two passes over the row plus n short ones.
extern "C" __global__ void __launch_bounds__(1024) token_logprobs(const float* __restrict__ logits,
                                          const int* __restrict__ sampled, const int* __restrict__ counts,
                                          int vocab_rows, int widest, float* __restrict__ chosen,
                                          int* __restrict__ top_ids, float* __restrict__ top_logprobs) {
    __shared__ float s_scratch[32];
    __shared__ float s_value[32];
    __shared__ int s_index[32];
    __shared__ int s_taken;
    const int row = blockIdx.x, n = counts[row];
    if (n < 0) return;
    const float* l = logits + (long long)row * vocab_rows;
    float m = KV_NEG_INF;
    for_each_logit(l, vocab_rows, [&](float v, int) { m = fmaxf(m, v); });
    m = block_max(m, s_scratch);
    float sum = 0.0f;
    for_each_logit(l, vocab_rows, [&](float v, int) { sum += __expf(v - m); });
    const float log_total = m + logf(block_sum(sum, s_scratch));
    if (threadIdx.x == 0) chosen[row] = l[sampled[row]] - log_total;
    // This thread's best token below (bound, bound_i) in the order of `better`.
    float bound = -KV_NEG_INF;
    int bound_i = -1;
    auto best_below = [&](float& best, int& best_i) {
        best = KV_NEG_INF;
        best_i = 0x7fffffff;
        for_each_logit(l, vocab_rows, [&](float v, int i) {
            if (better(bound, bound_i, v, i) && better(v, i, best, best_i)) { best = v; best_i = i; }
        });
    };
    float mine, reduced;
    int mine_i, reduced_i;
    best_below(mine, mine_i);
    for (int j = 0; j < n; ++j) {
        reduced = mine;
        reduced_i = mine_i;
        block_best(reduced, reduced_i, s_value, s_index);
        if (threadIdx.x == 0) {
            s_taken = reduced_i;
            top_ids[(long long)row * widest + j] = reduced_i;
            top_logprobs[(long long)row * widest + j] = l[reduced_i] - log_total;
        }
        __syncthreads();
        if (s_taken >= vocab_rows) break;  // every token taken (n > vocab_rows)
        if (mine_i == s_taken) {
            bound = mine;
            bound_i = mine_i;
            best_below(mine, mine_i);
        }
    }
}

// Tensor parallelism: each rank's candidate per row, gathered rank after rank ([world][rows]); the
// token is the best score, ties to the lower id, as on one GPU.
extern "C" __global__ void pick_best_shard(const int* __restrict__ ids, const float* __restrict__ values,
                                           int* __restrict__ out, int rows, int world) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    float best = values[row];
    int best_i = ids[row];
    for (int r = 1; r < world; ++r)
        if (better(values[r * rows + row], ids[r * rows + row], best, best_i)) {
            best = values[r * rows + row];
            best_i = ids[r * rows + row];
        }
    out[row] = best_i;
}

// Dummy weights drawn in place: the values `DummyWeights::read` draws on the host (source.rs), bit
// for bit. The same SplitMix hash of (stream, index / 2) gives two uniforms, and Box-Muller two
// normals, through the same polynomial logarithm, sine and cosine; every operation is rounded as
// on the host (the __f*_rn intrinsics keep NVRTC from fusing a multiply and an add that the host
// keeps apart, and the constants fold to the same floats). out[i] is the matrix's value at
// (row0 + i / cols) * width + col0 + i % cols, in bf16 (round to nearest even, as the host's
// upload converts).
__device__ float dummy_ln(float x) {
    const unsigned int bits = __float_as_uint(x);
    float m = __uint_as_float((bits & 0x007fffffu) | 0x3f800000u);
    int e = (int)((bits >> 23) & 0xffu) - 127;
    if (m > 1.41421356237309504880f) {
        m = __fmul_rn(m, 0.5f);
        e += 1;
    }
    const float s = __fdiv_rn(__fsub_rn(m, 1.0f), __fadd_rn(m, 1.0f));
    const float z = __fmul_rn(s, s);
    float p = __fmaf_rn(z, 1.0f / 9.0f, 1.0f / 7.0f);
    p = __fmaf_rn(z, p, 1.0f / 5.0f);
    p = __fmaf_rn(z, p, 1.0f / 3.0f);
    p = __fmaf_rn(z, p, 1.0f);
    return __fmaf_rn((float)e, 0.693147180559945309417f, __fmul_rn(__fadd_rn(s, s), p));
}

// sin and cos of 2 pi * turn / 2^24: the quadrant from the top two bits, Taylor series in t^2.
__device__ float2 dummy_sin_cos_turn(unsigned int turn) {
    const float t = __fmul_rn(__fdiv_rn((float)(turn & 0x3fffffu), 4194304.0f), 1.57079632679489661923f);
    const float z = __fmul_rn(t, t);
    float s = __fmaf_rn(z, 1.0f / 6227020800.0f, -1.0f / 39916800.0f);
    s = __fmaf_rn(z, s, 1.0f / 362880.0f);
    s = __fmaf_rn(z, s, -1.0f / 5040.0f);
    s = __fmaf_rn(z, s, 1.0f / 120.0f);
    s = __fmaf_rn(z, s, -1.0f / 6.0f);
    s = __fmaf_rn(z, s, 1.0f);
    const float sin = __fmul_rn(t, s);
    float c = __fmaf_rn(z, -1.0f / 87178291200.0f, 1.0f / 479001600.0f);
    c = __fmaf_rn(z, c, -1.0f / 3628800.0f);
    c = __fmaf_rn(z, c, 1.0f / 40320.0f);
    c = __fmaf_rn(z, c, -1.0f / 720.0f);
    c = __fmaf_rn(z, c, 1.0f / 24.0f);
    c = __fmaf_rn(z, c, -0.5f);
    const float cos = __fmaf_rn(z, c, 1.0f);
    switch (turn >> 22) {
        case 0: return make_float2(sin, cos);
        case 1: return make_float2(cos, -sin);
        case 2: return make_float2(-sin, -cos);
        default: return make_float2(-cos, sin);
    }
}

extern "C" __global__ void draw_dummy(bf16_t* __restrict__ out, unsigned long long stream, long long width,
                                      long long row0, long long col0, long long rows, long long cols, float std) {
    const long long total = rows * cols;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const unsigned long long index = (unsigned long long)((row0 + i / cols) * width + col0 + i % cols);
        const unsigned long long bits = mix64((stream ^ (index >> 1)) + 0x9e3779b97f4a7c15ull);
        const float u1 = __fdiv_rn(__fadd_rn((float)(bits >> 40), 1.0f), 16777216.0f);
        const float radius = __fmul_rn(std, __fsqrt_rn(__fmul_rn(-2.0f, dummy_ln(u1))));
        const float2 sin_cos = dummy_sin_cos_turn((unsigned int)(bits & 0xffffffu));
        out[i] = float_to_bf16(__fmul_rn(radius, (index & 1) ? sin_cos.x : sin_cos.y));
    }
}

// A linear layer for a decode step of a few tokens: y[t][n] = sum_k x[t][k] * w[n][k] for t <
// tokens (at most GEMV_MAX_TOKENS), bf16 in and out, f32 sums; k a multiple of 8. Such a step reads
// the whole weight matrix for a few dot products, so it is bound by the weight's bytes and by how
// many of them are in flight: SPLIT warps (1, 2 or 4) take one output row, side by side in
// 512-byte pieces, and each lane issues GEMV_LOADS 16-byte loads before it multiplies any
// (GEMV_LOADS x 512 bytes in flight a warp); x, a few KB that every warp reads, comes through L1.
// The split warps' sums meet in shared memory. A block holds WARPS warps.
//
// SILU: w is the MLP's [gate | up] (n = 2 x inter rows) and y[t][i] = silu(gate_i) * up_i, of the
// projections rounded to bf16 as silu_mul reads them: a block's rows go in pairs (gate row i, up
// row inter + i), so the gate_up activations and silu_mul's launch are never needed.
#define GEMV_MAX_TOKENS 4
#define GEMV_LOADS 8
__device__ __forceinline__ float dot8_bf16(uint4 a, uint4 b, float sum) {
    const unsigned int av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        sum = fmaf(__uint_as_float(av[i] << 16), __uint_as_float(bv[i] << 16), sum);
        sum = fmaf(__uint_as_float(av[i] & 0xffff0000u), __uint_as_float(bv[i] & 0xffff0000u), sum);
    }
    return sum;
}

template <int SPLIT, int WARPS, bool SILU>
__device__ __forceinline__ void gemv(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                                     bf16_t* __restrict__ y, int tokens, int n, int k) {
    static_assert(!SILU || (WARPS / SPLIT) % 2 == 0, "SILU pairs a block's rows");
    __shared__ float partial[WARPS][GEMV_MAX_TOKENS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int slot = warp / SPLIT, part = warp % SPLIT;  // the block's row this warp sums, its piece
    constexpr int OUTPUTS_PER_BLOCK = WARPS / SPLIT / (SILU ? 2 : 1);
    const int outputs = SILU ? n / 2 : n;
    const long long output = (long long)blockIdx.x * OUTPUTS_PER_BLOCK + (SILU ? slot / 2 : slot);
    const long long row = SILU ? output + (slot % 2) * (long long)outputs : output;
    const int vectors = k / 8;
    const bool active = output < outputs;
    start_next_kernel();
    const uint4* weights = (const uint4*)(w + row * k);
    const uint4* xs = (const uint4*)x;
    uint4 wv[GEMV_LOADS];
    auto load_weights = [&](int base) {
        #pragma unroll
        for (int u = 0; u < GEMV_LOADS; ++u) {
            const int i = base + 32 * SPLIT * u;
            wv[u] = i < vectors ? __ldcs(weights + i) : make_uint4(0u, 0u, 0u, 0u);
        }
    };
    // The weights are the model's, written by no kernel: their first loads go out before the wait
    // for the kernel ahead (a dependent launch), beside it.
    int base = part * 32 + lane;
    if (active) load_weights(base);
    wait_for_previous_kernel();
    float acc[GEMV_MAX_TOKENS] = {};
    while (active && base < vectors) {
        #pragma unroll
        for (int u = 0; u < GEMV_LOADS; ++u) {
            const int i = base + 32 * SPLIT * u;
            if (i >= vectors) break;
            #pragma unroll
            for (int t = 0; t < GEMV_MAX_TOKENS; ++t)
                if (t < tokens) acc[t] = dot8_bf16(wv[u], __ldg(xs + (long long)t * vectors + i), acc[t]);
        }
        base += 32 * SPLIT * GEMV_LOADS;
        if (base < vectors) load_weights(base);
    }
    constexpr bool DIRECT = SPLIT == 1 && !SILU;  // a warp's sum is the output
    #pragma unroll
    for (int t = 0; t < GEMV_MAX_TOKENS; ++t) {
        if (t >= tokens) break;
        float sum = acc[t];
        #pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        if (lane != 0) continue;
        if (DIRECT) {
            if (active) y[(long long)t * n + row] = float_to_bf16(sum);
        } else {
            partial[warp][t] = sum;
        }
    }
    if (DIRECT) return;
    __syncthreads();
    // The first warp of a row (of a pair's gate row, SILU) writes its output for each token.
    if (part != 0 || (SILU && slot % 2 != 0) || !active || lane >= tokens) return;
    float sum = 0.0f;
    #pragma unroll
    for (int p = 0; p < SPLIT; ++p) sum += partial[warp + p][lane];
    if (SILU) {
        float up = 0.0f;
        #pragma unroll
        for (int p = 0; p < SPLIT; ++p) up += partial[warp + SPLIT + p][lane];
        y[(long long)lane * outputs + output] = silu_times(float_to_bf16(sum), float_to_bf16(up));
    } else {
        y[(long long)lane * n + row] = float_to_bf16(sum);
    }
}

// One build per count of warps a row, plain and SILU; ops.rs names them and knows their WARPS.
#define GEMV_BUILD(name, SPLIT, WARPS, SILU)                                                         \
    extern "C" __global__ void __launch_bounds__(32 * WARPS)                                         \
    name(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w, bf16_t* __restrict__ y,         \
         int tokens, int n, int k) {                                                                \
        gemv<SPLIT, WARPS, SILU>(x, w, y, tokens, n, k);                                             \
    }
GEMV_BUILD(gemv_bf16, 1, 4, false)
GEMV_BUILD(gemv_bf16_split2, 2, 4, false)
GEMV_BUILD(gemv_bf16_split4, 4, 4, false)
GEMV_BUILD(gemv_silu_bf16, 1, 4, true)
GEMV_BUILD(gemv_silu_bf16_split2, 2, 4, true)
GEMV_BUILD(gemv_silu_bf16_split4, 4, 8, true)
