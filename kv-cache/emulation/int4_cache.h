// The emulation tests' INT4 cache: random codes and group scales for a few sequences' blocks, the
// rows placed as the GPU places them (cache_row, int4_row_offset), stale slots past a context with
// NaN scales; and the reference: attention in double over the values the codes stand for.
// Needs HEAD_DIM, BLOCK_SIZE and layout.cuh.
#pragma once
#include <cstdio>
#include <random>

inline uint16_t to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    return (u + 0x7fff + ((u >> 16) & 1)) >> 16;
}
inline float from_bf16(uint16_t b) { return __uint_as_float((unsigned)b << 16); }

struct Int4Cache {
    int kv_heads, slots, max_blocks;
    std::vector<int> tables;           // [sequences][max_blocks]
    std::vector<uint8_t> codes[2];     // K, V: [slot][kv_head][dim], one code (1..15) a byte
    std::vector<uint16_t> scales[2];   // [kv_head][slot][group], as the GPU keeps them
    std::vector<uint8_t> rows[2];      // the GPU planes

    Int4Cache(std::mt19937& rng, const std::vector<int>& lens, int kv_heads) : kv_heads(kv_heads) {
        const int groups = HEAD_DIM / 32, row_bytes = HEAD_DIM / 2;
        int needed = 0;
        max_blocks = 0;
        for (int len : lens) {
            needed += (len + BLOCK_SIZE - 1) / BLOCK_SIZE;
            max_blocks = std::max(max_blocks, (len + BLOCK_SIZE - 1) / BLOCK_SIZE);
        }
        const int num_blocks = needed + 2;
        slots = num_blocks * BLOCK_SIZE;
        std::vector<int> free(num_blocks);
        for (int i = 0; i < num_blocks; ++i) free[i] = i;
        std::shuffle(free.begin(), free.end(), rng);
        tables.assign(lens.size() * max_blocks, 0);
        for (size_t s = 0, next = 0; s < lens.size(); ++s)
            for (int b = 0; b < (lens[s] + BLOCK_SIZE - 1) / BLOCK_SIZE; ++b) tables[s * max_blocks + b] = free[next++];
        std::uniform_int_distribution<int> code(1, 15);
        std::uniform_real_distribution<float> scale(0.01f, 1.0f);
        for (int p = 0; p < 2; ++p) {
            codes[p].resize((size_t)slots * kv_heads * HEAD_DIM);
            for (auto& c : codes[p]) c = code(rng);
            scales[p].resize((size_t)kv_heads * slots * groups);
            for (size_t i = 0; i < scales[p].size(); ++i)  // groups of unlike scales
                scales[p][i] = to_bf16(scale(rng) * (i % groups == 1 ? 8.0f : 1.0f));
            rows[p].assign((size_t)slots * kv_heads * row_bytes, 0);
            for (int s = 0; s < slots; ++s)
                for (int h = 0; h < kv_heads; ++h) {
                    const uint8_t* c = &codes[p][((size_t)s * kv_heads + h) * HEAD_DIM];
                    uint8_t* row = &rows[p][cache_row(s, h, kv_heads) * row_bytes];
                    for (int b = 0; b < row_bytes; ++b) row[int4_row_offset(b / 16, b % 16)] = c[2 * b] | (c[2 * b + 1] << 4);
                }
        }
        // The last slot of each sequence's last block, past its context: a stale, poisoned row.
        for (size_t s = 0; s < lens.size(); ++s) {
            if (lens[s] % BLOCK_SIZE == 0) continue;
            const int slot = tables[s * max_blocks + lens[s] / BLOCK_SIZE] * BLOCK_SIZE + BLOCK_SIZE - 1;
            for (int p = 0; p < 2; ++p)
                for (int h = 0; h < kv_heads; ++h)
                    for (int g = 0; g < groups; ++g) scales[p][((size_t)h * slots + slot) * groups + g] = 0x7fc0;
        }
    }

    // Element `dim` of K (plane 0) or V (1) at position `pos` of sequence `seq`, kv head `h`.
    double value(int plane, int seq, int pos, int h, int dim) const {
        const int slot = tables[seq * max_blocks + pos / BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE;
        const double step = from_bf16(scales[plane][((size_t)h * slots + slot) * (HEAD_DIM / 32) + dim / 32]);
        return (codes[plane][((size_t)slot * kv_heads + h) * HEAD_DIM + dim] - 8) * step;
    }

    // Softmax attention of query `q` (HEAD_DIM bf16s) over positions [0, context) of sequence `seq`.
    std::vector<double> attend(const uint16_t* q, int seq, int context, int h, double softmax_scale) const {
        std::vector<double> p(context), out(HEAD_DIM, 0.0);
        double top = -1e300, sum = 0;
        for (int t = 0; t < context; ++t) {
            double dot = 0;
            for (int d = 0; d < HEAD_DIM; ++d) dot += value(0, seq, t, h, d) * from_bf16(q[d]);
            p[t] = dot * softmax_scale;
            top = std::max(top, p[t]);
        }
        for (auto& x : p) sum += (x = std::exp(x - top));
        for (int t = 0; t < context; ++t)
            for (int d = 0; d < HEAD_DIM; ++d) out[d] += p[t] / sum * value(1, seq, t, h, d);
        return out;
    }
};

// Relative L2 error, accumulated; reports and judges at the end.
struct Error {
    double err = 0, norm = 0;
    bool finite = true;
    void add(double got, double want) {
        finite &= std::isfinite(got);
        err += (got - want) * (got - want);
        norm += want * want;
    }
    // bf16 outputs round at 2^-9; the bound leaves room for fp16 operands and fp32 sums.
    int judge(const char* what) const {
        const double rel = std::sqrt(err / norm);
        printf("%s: relative L2 %.2e%s\n", what, rel, finite ? "" : " (NaN or inf in the output)");
        return finite && rel < 5e-3 ? 0 : 1;
    }
};
