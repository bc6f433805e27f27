// INT4 prefill attention (prefill_attention) emulated on the host, against the reference of
// int4_cache.h: one sequence's positions, each query seeing the positions up to its own, in query
// groups of 64 / GROUP. Built by scripts/emulate-kernels.sh with HEAD_DIM, GROUP, BLOCK_SIZE, KT;
// arguments: seed, sequence length.
#include "int4_build.h"
#include "prefill_attention.cu"
#include "int4_cache.h"

int main(int argc, char** argv) {
    std::mt19937 rng(std::stoul(argv[1]));
    const int len = std::atoi(argv[2]), kv_heads = 2, heads = kv_heads * GROUP;
    Int4Cache cache(rng, {len}, kv_heads);
    std::uniform_real_distribution<float> uniform(-3, 3);
    std::vector<uint16_t> q((size_t)len * heads * HEAD_DIM);
    for (auto& x : q) x = to_bf16(uniform(rng));
    std::vector<int> contexts(len);
    for (int i = 0; i < len; ++i) contexts[i] = i + 1;
    const int per_group = 64 / GROUP, groups = (len + per_group - 1) / per_group;
    std::vector<int> query_groups(groups + 1), group_tables(groups, 0);
    for (int i = 0; i <= groups; ++i) query_groups[i] = std::min(i * per_group, len);
    std::vector<uint16_t> out(q.size(), 0xffff);
    const int geometry[2] = {cache.max_blocks, 16};  // the split length is decode's
    const float softmax_scale = 1.0f / std::sqrt((float)HEAD_DIM);
    launch({(unsigned)groups, (unsigned)kv_heads, 1}, PREFILL_WARPS * 32, [&] {
        prefill_attention(q.data(), (long long)heads * HEAD_DIM, cache.rows[0].data(), cache.rows[1].data(),
                          cache.scales[0].data(), cache.scales[1].data(), cache.slots, cache.tables.data(),
                          geometry, contexts.data(), query_groups.data(), group_tables.data(), out.data(),
                          kv_heads, softmax_scale);
    });
    Error error;
    for (int i = 0; i < len; ++i)
        for (int head = 0; head < heads; ++head) {
            const size_t row = (size_t)i * heads + head;
            const auto want = cache.attend(&q[row * HEAD_DIM], 0, contexts[i], head / GROUP, softmax_scale);
            for (int d = 0; d < HEAD_DIM; ++d) error.add(from_bf16(out[row * HEAD_DIM + d]), want[d]);
        }
    char what[128];
    snprintf(what, sizeof what, "prefill HEAD_DIM %d GROUP %d BLOCK_SIZE %d KT %d, %d positions", HEAD_DIM, GROUP, BLOCK_SIZE, KT, len);
    return error.judge(what);
}
