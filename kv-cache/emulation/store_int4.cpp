// The INT4 store (store_kv) emulated on the host: rows of random bf16s over a wide range of
// magnitudes, a row holding NaN, one holding inf, a group of zeros, padding slots (-1, which leave
// some lanes of a warp idle); the bytes and scales it writes against int4.rs's rule restated here
// (scale bf16(amax / 7), 0 below the smallest normal f32, capped at 2^121, NaN for a row that is
// not finite; codes rint(x / scale) clamped to +-7, plus 8, 0 in a poisoned row), packed as the
// CPU cache packs them and placed by int4_row_offset. Built by scripts/emulate-kernels.sh with
// HEAD_DIM; argument: seed.
#define ROWS 1
#define ELEMS 32
#define THREADS 128
#define BLOCK_SIZE 16
#include "int4_build.h"
#define __syncwarp syncwarp_mask
#include "store.cu"
#include "int4_cache.h"

int main(int argc, char** argv) {
    std::mt19937 rng(std::stoul(argv[1]));
    std::uniform_real_distribution<float> uniform(-1, 1);
    const int kv_heads = 2, tokens = 37, groups = HEAD_DIM / 32, row_bytes = HEAD_DIM / 2, slots = 4 * BLOCK_SIZE;
    const long long stride = 3 * kv_heads * HEAD_DIM;  // K and V are slices of a QKV row
    std::vector<uint16_t> qkv(tokens * stride);
    for (auto& x : qkv) x = to_bf16(uniform(rng) * std::exp2((float)(rng() % 24) - 12));
    qkv[3 * stride + kv_heads * HEAD_DIM + 5] = 0x7fc0;                  // NaN in token 3's K, head 0
    qkv[4 * stride + HEAD_DIM + 5] = 0x7fc0;                             // NaN in token 4's q: not stored
    qkv[6 * stride + 2 * kv_heads * HEAD_DIM + 7] = 0x7f80;              // inf in token 6's V, head 0
    for (int d = 32; d < 64; ++d) qkv[5 * stride + kv_heads * HEAD_DIM + d] = 0;  // a group of zeros
    std::vector<int> free(slots);
    for (int i = 0; i < slots; ++i) free[i] = i;
    std::shuffle(free.begin(), free.end(), rng);
    std::vector<long long> slot(tokens);
    for (int t = 0; t < tokens; ++t) slot[t] = t % 5 == 2 ? -1 : free[t];
    std::vector<uint8_t> planes[2];
    std::vector<uint16_t> scales[2];
    for (int p = 0; p < 2; ++p) {
        planes[p].assign((size_t)slots * kv_heads * row_bytes, 0x5a);
        scales[p].assign((size_t)kv_heads * slots * groups, 0x1234);
    }
    const unsigned rows = tokens * kv_heads * 2, per_block = THREADS / 32 * ROWS * (32 / (HEAD_DIM / ELEMS));
    const uint16_t* key = qkv.data() + kv_heads * HEAD_DIM;  // after the query heads (here as many as kv heads)
    launch({(rows + per_block - 1) / per_block, 1, 1}, THREADS, [&] {
        store_kv(key, key + kv_heads * HEAD_DIM, stride, slot.data(), planes[0].data(), planes[1].data(),
                 scales[0].data(), scales[1].data(), slots, tokens, kv_heads);
    });
    int wrong = 0;
    for (int t = 0; t < tokens; ++t)
        for (int p = 0; p < 2; ++p)
            for (int h = 0; h < kv_heads && slot[t] >= 0; ++h) {
                const uint16_t* x = key + t * stride + p * kv_heads * HEAD_DIM + h * HEAD_DIM;
                bool finite = true;
                for (int d = 0; d < HEAD_DIM; ++d) finite &= std::isfinite(from_bf16(x[d]));
                std::vector<uint8_t> packed(row_bytes);
                for (int g = 0; g < groups; ++g) {
                    float amax = 0;
                    for (int d = 32 * g; d < 32 * g + 32; ++d) amax = std::max(amax, std::fabs(from_bf16(x[d])));
                    uint16_t s = to_bf16(amax / 7.0f);
                    if (from_bf16(s) < 1.17549435e-38f) s = 0;
                    if (s > 0x7c00) s = 0x7c00;
                    if (!finite) s = 0x7fc0;
                    if (scales[p][((size_t)h * slots + slot[t]) * groups + g] != s && wrong++ < 5)
                        printf("token %d plane %d head %d group %d: scale %04x, expected %04x\n", t, p, h, g,
                               scales[p][((size_t)h * slots + slot[t]) * groups + g], s);
                    for (int b = 0; b < 16; ++b) {
                        int code[2];
                        for (int k = 0; k < 2; ++k) {
                            const float v = from_bf16(x[32 * g + 2 * b + k]), step = from_bf16(s);
                            code[k] = !finite ? 0 : s == 0 ? 8 : (int)std::fmin(std::fmax(std::nearbyint(v / step), -7.f), 7.f) + 8;
                        }
                        packed[16 * g + b] = code[0] | (code[1] << 4);
                    }
                }
                const uint8_t* row = &planes[p][cache_row(slot[t], h, kv_heads) * row_bytes];
                for (int i = 0; i < row_bytes; ++i) {
                    const uint8_t got = row[int4_row_offset(i / 16, i % 16)];
                    if (got != packed[i] && wrong++ < 5)
                        printf("token %d plane %d head %d byte %d: %02x, expected %02x\n", t, p, h, i, got, packed[i]);
                }
            }
    for (int s = 0; s < slots; ++s) {  // slots no token names stay as they were
        bool named = false;
        for (long long x : slot) named |= x == s;
        for (int h = 0; h < kv_heads && !named; ++h)
            for (int i = 0; i < row_bytes; ++i)
                if (planes[0][cache_row(s, h, kv_heads) * row_bytes + i] != 0x5a && wrong++ < 5) printf("slot %d written\n", s);
    }
    printf("store HEAD_DIM %d: %d wrong bytes or scales\n", HEAD_DIM, wrong);
    return wrong != 0;
}
