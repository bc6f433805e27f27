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

// An INT4 row's bytes interleave its groups (G = HEAD_DIM / 32 groups of 16 bytes, each byte two
// codes, low nibble first, as the CPU cache packs them): 4-byte word W of the row holds byte pair p
// = W / (G / 2) (bytes 2p and 2p + 1) of groups 2h and 2h + 1 (h = W % (G / 2)), as [2h's byte 2p,
// 2h+1's byte 2p, 2h's byte 2p + 1, 2h+1's byte 2p + 1]. So every decode lane's span of a row holds
// an equal share of every group (a key lane 4 bytes of each, a value lane 2), and each pair of
// nibbles the tensor cores take as an fp16x2 (bytes 0 and 2 of a word, or 1 and 3) is of one group:
// keys enter the MMA as plain codes, one accumulator per group, and its scale multiplies the sum.
// `cuda::int4_row_offset` in mod.rs is the same map on the host.
__device__ __forceinline__ int int4_row_offset(int group, int byte) {
    return 4 * ((byte / 2) * (HEAD_DIM / 64) + group / 2) + group % 2 + 2 * (byte % 2);
}
