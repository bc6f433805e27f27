//! Helpers shared by model-qwen3's integration tests.

use nanovllm_kv_cache::{BlockManager, BlockTable};
use nanovllm_qwen3::SeqInput;

/// One decode step for every sequence: append `next(length)` (a function of the sequence alone,
/// not of its place in the batch), make room for it, and return the inputs that compute it.
pub(crate) fn decode_step<'a>(
    tokens: &'a mut [Vec<u32>],
    tables: &'a mut [BlockTable],
    blocks: &mut BlockManager,
    next: impl Fn(usize) -> u32,
) -> Vec<SeqInput<'a>> {
    for (t, table) in tokens.iter_mut().zip(tables.iter_mut()) {
        t.push(next(t.len()));
        blocks.may_append(table, t.len()).unwrap();
    }
    tokens
        .iter()
        .zip(tables.iter())
        .map(|(t, table)| SeqInput {
            tokens: &t[t.len() - 1..],
            start: t.len() - 1,
            block_table: table,
            logits: 1,
        })
        .collect()
}
