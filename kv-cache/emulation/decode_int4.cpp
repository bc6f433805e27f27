// INT4 decode attention (decode_attention_partial, then decode_attention_reduce when a context
// takes more than one split) emulated on the host, against the reference of int4_cache.h:
// sequences of several lengths, each query its own group. The reduce kernel runs in both of its
// shapes (each row's dims in one block, or over blocks of 32). Built by scripts/emulate-kernels.sh
// with HEAD_DIM, GROUP, BLOCK_SIZE, THREADS; arguments: seed, split length, and how many more
// splits the grid has than the contexts need (as a CUDA graph captured for longer ones launches
// it).
#define MIN_BLOCKS 1
#include "int4_build.h"
#include "decode_attention.cu"
#include "int4_cache.h"

int main(int argc, char** argv) {
    std::mt19937 rng(std::stoul(argv[1]));
    const int partition = std::atoi(argv[2]), extra_splits = std::atoi(argv[3]);
    const std::vector<int> lens = {1, 17, 40, 77};
    const int kv_heads = 2, heads = kv_heads * GROUP, batch = lens.size();
    Int4Cache cache(rng, lens, kv_heads);
    std::uniform_real_distribution<float> uniform(-3, 3);
    std::vector<uint16_t> q((size_t)batch * heads * HEAD_DIM);
    for (auto& x : q) x = to_bf16(uniform(rng));
    std::vector<int> query_groups(batch + 1), group_tables(batch);
    for (int i = 0; i <= batch; ++i) query_groups[i] = i;
    for (int i = 0; i < batch; ++i) group_tables[i] = i;
    const int splits = (*std::max_element(lens.begin(), lens.end()) + partition - 1) / partition + extra_splits;
    const int geometry[2] = {cache.max_blocks, partition};
    std::vector<uint16_t> out((size_t)batch * heads * HEAD_DIM, 0xffff);
    std::vector<float> part_out(out.size() * splits, NAN), part_max((size_t)batch * heads * splits, NAN), part_sum = part_max;
    const float softmax_scale = 1.0f / std::sqrt((float)HEAD_DIM);
    launch({(unsigned)splits, (unsigned)kv_heads, (unsigned)batch}, THREADS, [&] {
        decode_attention_partial(q.data(), (long long)heads * HEAD_DIM, cache.rows[0].data(), cache.rows[1].data(),
                                 cache.scales[0].data(), cache.scales[1].data(), cache.slots, cache.tables.data(),
                                 geometry, lens.data(), query_groups.data(), group_tables.data(), out.data(),
                                 part_out.data(), part_max.data(), part_sum.data(), kv_heads, splits, softmax_scale);
    });
    // With more than one split the partial kernel leaves out bf16 outputs: the reduce kernel
    // writes them, one thread group per 8 splits as the launch sizes it, from partial results of
    // which those past each context were never written (NaN).
    std::vector<std::vector<uint16_t>> outs;
    if (splits == 1) outs.push_back(out);
    for (int dims : {HEAD_DIM, 32}) {
        if (splits == 1) break;
        const unsigned groups = std::clamp((splits + 7) / 8, 1, 512 / dims);
        std::vector<uint16_t> reduced(out.size(), 0xffff);
        launch({(unsigned)heads, (unsigned)batch, (unsigned)(HEAD_DIM / dims)}, {(unsigned)dims, groups, 1}, [&] {
            decode_attention_reduce(part_out.data(), part_max.data(), part_sum.data(), lens.data(), geometry,
                                    reduced.data(), heads, splits);
        });
        outs.push_back(reduced);
    }
    Error error;
    for (const auto& got : outs)
        for (int b = 0; b < batch; ++b)
            for (int head = 0; head < heads; ++head) {
                const size_t row = (size_t)b * heads + head;
                const auto want = cache.attend(&q[row * HEAD_DIM], b, lens[b], head / GROUP, softmax_scale);
                for (int d = 0; d < HEAD_DIM; ++d) error.add(from_bf16(got[row * HEAD_DIM + d]), want[d]);
            }
    char what[128];
    snprintf(what, sizeof what, "decode HEAD_DIM %d GROUP %d BLOCK_SIZE %d THREADS %d, %d split(s)", HEAD_DIM, GROUP,
             BLOCK_SIZE, THREADS, splits);
    return error.judge(what);
}
