// Where a (slot, kv head) row lies in a GPU cache plane, in rows of HEAD_DIM elements: each block
// holds its kv heads one after another, [block][kv_head][BLOCK_SIZE] rows, so that one head's tokens
// of a block are contiguous and a 16-token tile of one head is a single run of memory (the CPU cache
// keeps [slot][kv_head]; docs/perf-history.md, version 16, has the measurements).
// `cuda::cache_row` in mod.rs is the same function on the host. Needs BLOCK_SIZE (and HEAD_DIM,
// QUANT and INT4 for the sizes below).
//
// A row's size and scales, from the format defines (QUANT, INT4; as kv-quant's `RowLayout`): bits
// per code, bytes of a row's codes, and bf16 scales per row (a dummy 1 where there are none).
#define CODE_BITS (INT4 ? 4 : QUANT ? 8 : 16)
#define ROW_BYTES (HEAD_DIM * CODE_BITS / 8)
#define GROUPS (INT4 ? HEAD_DIM / 32 : 1)
__device__ __forceinline__ long long cache_row(long long slot, int kv_head, int kv_heads) {
    return (slot / BLOCK_SIZE * kv_heads + kv_head) * BLOCK_SIZE + slot % BLOCK_SIZE;
}
