// INT4 decode attention (decode_attention_partial, whose last block of each (group, kv head)
// combines the splits when a context takes more than one) emulated on the host, against the
// reference of int4_cache.h: sequences of several lengths, each query its own group, blocks in a
// random order. It launches twice on the same workspace, as the engine does layer after layer:
// the counts must be back at zero and the second result the same. Built by
// scripts/emulate-kernels.sh with HEAD_DIM, GROUP, BLOCK_SIZE, THREADS; arguments: seed, split
// length, and how many more splits the grid has than the contexts need (as a CUDA graph captured
// for longer ones launches it).
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
    std::vector<float> part_out((size_t)batch * heads * HEAD_DIM * splits, NAN);
    std::vector<float> part_max((size_t)batch * heads * splits, NAN), part_sum = part_max;
    std::vector<int> arrivals((size_t)batch * kv_heads, 0);
    const float softmax_scale = 1.0f / std::sqrt((float)HEAD_DIM);
    block_order.seed(std::stoul(argv[1]));
    std::vector<std::vector<uint16_t>> outs;
    for (int round = 0; round < 2; ++round) {
        // Unwritten outputs stay NaN; partial results past each context are never written (NaN).
        std::vector<uint16_t> out((size_t)batch * heads * HEAD_DIM, 0xffff);
        launch({(unsigned)splits, (unsigned)kv_heads, (unsigned)batch}, THREADS, [&] {
            decode_attention_partial(q.data(), (long long)heads * HEAD_DIM, cache.rows[0].data(), cache.rows[1].data(),
                                     cache.scales[0].data(), cache.scales[1].data(), cache.slots, cache.tables.data(),
                                     geometry, lens.data(), query_groups.data(), group_tables.data(), out.data(),
                                     part_out.data(), part_max.data(), part_sum.data(), arrivals.data(), kv_heads,
                                     splits, softmax_scale);
        });
        if (std::any_of(arrivals.begin(), arrivals.end(), [](int n) { return n != 0; })) {
            std::printf("FAILED: a launch left its counts of finished blocks non-zero\n");
            return 1;
        }
        outs.push_back(out);
    }
    if (outs[0] != outs[1]) {
        std::printf("FAILED: a second launch on the same workspace differs\n");
        return 1;
    }
    Error error;
    for (int b = 0; b < batch; ++b)
        for (int head = 0; head < heads; ++head) {
            const size_t row = (size_t)b * heads + head;
            const auto want = cache.attend(&q[row * HEAD_DIM], b, lens[b], head / GROUP, softmax_scale);
            for (int d = 0; d < HEAD_DIM; ++d) error.add(from_bf16(outs[0][row * HEAD_DIM + d]), want[d]);
        }
    char what[128];
    snprintf(what, sizeof what, "decode HEAD_DIM %d GROUP %d BLOCK_SIZE %d THREADS %d, %d split(s)", HEAD_DIM, GROUP,
             BLOCK_SIZE, THREADS, splits);
    return error.judge(what);
}
