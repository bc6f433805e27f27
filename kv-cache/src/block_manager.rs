//! The paged block allocator with prefix caching (nano-vllm's `BlockManager`, minus its bugs).

use std::collections::HashMap;

use hashlink::LinkedHashSet;

use crate::{BlockId, BlockTable, CacheError, block_hash};

/// Hands out fixed-size blocks of KV slots to sequences, shares full blocks between sequences
/// with the same prefix, and keeps freed blocks findable until they are reused.
///
/// Semantics follow nano-vllm, with these differences:
/// - allocating and freeing are O(1) per block (nano-vllm removes from a deque in O(n));
/// - a block is registered in the prefix cache only once its K/V are computed
///   ([`register_computed`](Self::register_computed)), so a chunked prefill never serves
///   another sequence a block that is still empty;
/// - the block holding a prompt's last token is never taken from the cache, so prefill always
///   computes at least one token (nano-vllm issue #144 crashed on a fully cached prompt);
/// - [`can_allocate`](Self::can_allocate) counts cache hits on blocks in use as free of cost;
/// - a reused block drops its old prefix-cache entry.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    ref_counts: Vec<u32>,
    /// The prefix key of each block whose content is final; kept after the block is freed.
    hashes: Vec<Option<u64>>,
    /// `[block][offset]` token ids, valid for blocks with a hash: the collision check.
    tokens: Vec<u32>,
    /// Free blocks, oldest-freed first: the front is reused (and its cached prefix evicted) first.
    free: LinkedHashSet<BlockId>,
    cached: HashMap<u64, BlockId>,
}

impl BlockManager {
    /// A manager of `num_blocks` blocks of `block_size` slots each, all free.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self, CacheError> {
        if num_blocks == 0 || num_blocks > BlockId::MAX as usize {
            return Err(CacheError::InvalidShape {
                field: "num_blocks",
                value: num_blocks,
                why: "must be between 1 and 2^32 - 1",
            });
        }
        if block_size == 0 {
            return Err(CacheError::InvalidShape {
                field: "block_size",
                value: 0,
                why: "must be at least 1",
            });
        }
        Ok(BlockManager {
            block_size,
            ref_counts: vec![0; num_blocks],
            hashes: vec![None; num_blocks],
            tokens: vec![0; num_blocks * block_size],
            free: (0..num_blocks as BlockId).collect(),
            cached: HashMap::new(),
        })
    }

    /// Slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks managed, free or not.
    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks no sequence holds (some of them still findable by prefix).
    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Sequences holding `block`.
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block as usize]
    }

    /// The token ids `block` is registered under in the prefix cache, if it is.
    pub fn cached_tokens(&self, block: BlockId) -> Option<&[u32]> {
        self.hashes[block as usize].map(|_| self.block_tokens(block))
    }

    /// Blocks that `num_tokens` tokens occupy.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// Whether [`allocate`](Self::allocate) of `tokens` would succeed now.
    pub fn can_allocate(&self, tokens: &[u32]) -> bool {
        self.fresh_blocks_needed(tokens, &self.cached_prefix(tokens)) <= self.free.len()
    }

    /// Blocks for a sequence about to be prefilled: the longest cached prefix of whole blocks
    /// (never the block of the last token), then fresh blocks. Returns the table and the number of
    /// tokens whose K/V are already in the cache.
    pub fn allocate(&mut self, tokens: &[u32]) -> Result<(BlockTable, usize), CacheError> {
        let hits = self.cached_prefix(tokens);
        let needed = self.fresh_blocks_needed(tokens, &hits);
        if needed > self.free.len() {
            return Err(CacheError::OutOfBlocks { needed, free: self.free.len() });
        }
        let num_cached_tokens = hits.len() * self.block_size;
        let num_hashed = hits.len();
        let mut blocks = hits;
        for &block in &blocks {
            if self.ref_counts[block as usize] == 0 {
                self.free.remove(&block);
            }
            self.ref_counts[block as usize] += 1;
        }
        while blocks.len() < self.blocks_for(tokens.len()) {
            blocks.push(self.take_free_block());
        }
        Ok((BlockTable { blocks, num_hashed }, num_cached_tokens))
    }

    /// Whether a sequence holding `table` can grow to `num_tokens` tokens now.
    pub fn can_append(&self, table: &BlockTable, num_tokens: usize) -> bool {
        self.blocks_for(num_tokens).saturating_sub(table.len()) <= self.free.len()
    }

    /// Grow `table` so that it has a slot for each of `num_tokens` tokens.
    pub fn may_append(&mut self, table: &mut BlockTable, num_tokens: usize) -> Result<(), CacheError> {
        let needed = self.blocks_for(num_tokens).saturating_sub(table.len());
        if needed > self.free.len() {
            return Err(CacheError::OutOfBlocks { needed, free: self.free.len() });
        }
        for _ in 0..needed {
            table.blocks.push(self.take_free_block());
        }
        Ok(())
    }

    /// Record that the first `num_computed` of `tokens` now have their K/V in the cache: every
    /// block they fill becomes findable by other sequences' prefixes.
    pub fn register_computed(&mut self, table: &mut BlockTable, tokens: &[u32], num_computed: usize) {
        let full = (num_computed.min(tokens.len()) / self.block_size).min(table.len());
        while table.num_hashed < full {
            let index = table.num_hashed;
            let block = table.blocks[index];
            let previous = index.checked_sub(1).and_then(|i| self.hashes[table.blocks[i] as usize]);
            let content = &tokens[index * self.block_size..(index + 1) * self.block_size];
            let hash = block_hash(previous, content);
            self.hashes[block as usize] = Some(hash);
            self.block_tokens_mut(block).copy_from_slice(content);
            self.cached.insert(hash, block);
            table.num_hashed += 1;
        }
    }

    /// A table for a copy of a sequence whose first `num_tokens` tokens are computed (a sibling
    /// forked after its parent's prefill, for vLLM's `n`): the full blocks are shared, and the
    /// partly filled last block, if any, becomes a fresh block of the copy's own, whose contents the
    /// caller copies from the parent's (the returned pair: from, to), as vLLM's copy-on-write does.
    /// Fails, changing nothing, when no block is free for that copy or the full blocks are not all
    /// registered as computed (only those may be shared).
    pub fn fork(
        &mut self,
        table: &BlockTable,
        num_tokens: usize,
    ) -> Result<(BlockTable, Option<(BlockId, BlockId)>), CacheError> {
        let full = num_tokens / self.block_size;
        let partial = !num_tokens.is_multiple_of(self.block_size);
        if full > table.num_hashed || table.len() < self.blocks_for(num_tokens) {
            return Err(CacheError::OutOfRange {
                what: "computed tokens to fork",
                value: num_tokens,
                limit: table.num_hashed * self.block_size,
            });
        }
        if partial && self.free.is_empty() {
            return Err(CacheError::OutOfBlocks { needed: 1, free: 0 });
        }
        let mut blocks = table.blocks[..full].to_vec();
        for &block in &blocks {
            self.ref_counts[block as usize] += 1;
        }
        let copy = partial.then(|| {
            let to = self.take_free_block();
            blocks.push(to);
            (table.blocks[full], to)
        });
        Ok((BlockTable { blocks, num_hashed: full }, copy))
    }

    /// Forget every cached prefix (vLLM's `reset_prefix_cache`): needed when the cache's contents
    /// were written outside this manager. Blocks in use keep their contents and ref counts.
    pub fn reset_prefix_cache(&mut self) {
        for (block, hash) in self.hashes.iter_mut().enumerate() {
            if self.ref_counts[block] == 0 {
                *hash = None;
            }
        }
        let hashes = &self.hashes;
        self.cached.retain(|_, block| hashes[*block as usize].is_some());
    }

    /// Release a sequence's blocks. Blocks no longer held go to the back of the free list, last
    /// block first, so a prefix outlives the tail that extended it.
    pub fn deallocate(&mut self, table: &mut BlockTable) {
        for &block in table.blocks.iter().rev() {
            let count = &mut self.ref_counts[block as usize];
            *count -= 1;
            if *count == 0 {
                self.free.insert(block);
            }
        }
        table.blocks.clear();
        table.num_hashed = 0;
    }

    /// The registered blocks matching `tokens`' leading whole blocks, stopping before the block
    /// that holds the last token.
    fn cached_prefix(&self, tokens: &[u32]) -> Vec<BlockId> {
        let mut hits = Vec::new();
        let mut previous = None;
        for (index, content) in tokens.chunks_exact(self.block_size).enumerate() {
            if (index + 1) * self.block_size >= tokens.len() {
                break;
            }
            let hash = block_hash(previous, content);
            match self.cached.get(&hash) {
                Some(&block) if self.cached_tokens(block) == Some(content) => hits.push(block),
                _ => break,
            }
            previous = Some(hash);
        }
        hits
    }

    /// Free-list blocks an allocation would consume: the misses, plus hits on freed blocks.
    fn fresh_blocks_needed(&self, tokens: &[u32], hits: &[BlockId]) -> usize {
        let revived = hits.iter().filter(|&&b| self.ref_counts[b as usize] == 0).count();
        self.blocks_for(tokens.len()) - hits.len() + revived
    }

    /// Take the oldest free block for new content, dropping what it cached. Callers check first
    /// that the free list is long enough.
    fn take_free_block(&mut self) -> BlockId {
        let block = self.free.pop_front().expect("callers check the free list first");
        if let Some(hash) = self.hashes[block as usize].take()
            && self.cached.get(&hash) == Some(&block)
        {
            self.cached.remove(&hash);
        }
        self.ref_counts[block as usize] = 1;
        block
    }

    fn block_tokens(&self, block: BlockId) -> &[u32] {
        let start = block as usize * self.block_size;
        &self.tokens[start..start + self.block_size]
    }

    fn block_tokens_mut(&mut self, block: BlockId) -> &mut [u32] {
        let start = block as usize * self.block_size;
        &mut self.tokens[start..start + self.block_size]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    /// Allocate and mark the whole prompt computed, as a finished prefill does.
    fn prefill(manager: &mut BlockManager, prompt: &[u32]) -> (BlockTable, usize) {
        let (mut table, cached) = manager.allocate(prompt).unwrap();
        manager.register_computed(&mut table, prompt, prompt.len());
        (table, cached)
    }

    #[test]
    fn a_fork_shares_the_full_blocks_and_copies_the_partial_one() {
        let mut m = BlockManager::new(8, 4).unwrap();
        let (mut parent, _) = prefill(&mut m, &tokens(0..10));
        let (mut child, copy) = m.fork(&parent, 10).unwrap();
        assert_eq!(child.blocks()[..2], parent.blocks()[..2]);
        assert_eq!(copy, Some((parent.blocks()[2], child.blocks()[2])));
        assert_ne!(child.blocks()[2], parent.blocks()[2]);
        assert_eq!(child.num_hashed(), 2);
        assert_eq!(m.ref_count(parent.blocks()[0]), 2);
        assert_eq!(m.num_free_blocks(), 8 - 4);
        // A prompt of whole blocks shares them all and copies nothing.
        let (aligned, _) = prefill(&mut m, &tokens(50..54));
        let (mut twin, copy) = m.fork(&aligned, 4).unwrap();
        assert_eq!((twin.blocks(), copy), (aligned.blocks(), None));
        m.deallocate(&mut twin);
        m.deallocate(&mut child);
        m.deallocate(&mut parent);
        assert_eq!(m.ref_count(aligned.blocks()[0]), 1);
        assert_eq!(m.num_free_blocks(), 8 - 1);
    }

    #[test]
    fn a_fork_refuses_uncomputed_blocks_and_a_full_cache() {
        let mut m = BlockManager::new(3, 4).unwrap();
        let (table, _) = m.allocate(&tokens(0..10)).unwrap();
        assert!(matches!(m.fork(&table, 10), Err(CacheError::OutOfRange { .. })), "not registered yet");
        let mut m = BlockManager::new(3, 4).unwrap();
        let (table, _) = prefill(&mut m, &tokens(0..10));
        assert_eq!(m.fork(&table, 10), Err(CacheError::OutOfBlocks { needed: 1, free: 0 }));
        assert_eq!(m.ref_count(table.blocks()[0]), 1, "a refused fork changes nothing");
    }

    #[test]
    fn a_shared_prefix_is_served_from_the_cache() {
        let mut m = BlockManager::new(8, 4).unwrap();
        let (a, cached) = prefill(&mut m, &tokens(0..10));
        assert_eq!(cached, 0);
        let mut b_prompt = tokens(0..8);
        b_prompt.extend([100, 101, 102]);
        let (b, cached) = prefill(&mut m, &b_prompt);
        assert_eq!(cached, 8);
        assert_eq!(a.blocks()[..2], b.blocks()[..2]);
        assert_ne!(a.blocks()[2], b.blocks()[2]);
        assert_eq!(m.ref_count(a.blocks()[0]), 2);
        assert_eq!(m.num_free_blocks(), 8 - 4);
    }

    #[test]
    fn the_last_token_is_always_computed() {
        let mut m = BlockManager::new(8, 4).unwrap();
        let prompt = tokens(0..8);
        prefill(&mut m, &prompt);
        let (_, cached) = prefill(&mut m, &prompt);
        assert_eq!(cached, 4, "the block holding the last token is computed again");
    }

    #[test]
    fn uncomputed_blocks_are_not_served() {
        let mut m = BlockManager::new(8, 4).unwrap();
        let prompt = tokens(0..12);
        let (mut a, _) = m.allocate(&prompt).unwrap();
        assert_eq!(m.allocate(&prompt).unwrap().1, 0, "nothing computed yet");
        m.register_computed(&mut a, &prompt, 5);
        assert_eq!(a.num_hashed(), 1);
        assert_eq!(m.allocate(&prompt).unwrap().1, 4);
    }

    #[test]
    fn freed_blocks_are_revived_until_reused() {
        let mut m = BlockManager::new(4, 4).unwrap();
        let prompt = tokens(0..9);
        let (mut a, _) = prefill(&mut m, &prompt);
        m.deallocate(&mut a);
        assert_eq!(m.num_free_blocks(), 4);
        let (b, cached) = prefill(&mut m, &prompt);
        assert_eq!(cached, 8);
        assert_eq!(m.num_free_blocks(), 1);
        assert!(b.blocks().iter().all(|&blk| m.ref_count(blk) == 1));
    }

    #[test]
    fn reuse_evicts_the_oldest_freed_and_keeps_prefixes_longest() {
        let mut m = BlockManager::new(3, 2).unwrap();
        let (mut a, _) = prefill(&mut m, &tokens(0..5));
        let held = a.blocks().to_vec();
        m.deallocate(&mut a);
        // The tail block was freed first, so it is reused first; the prefix blocks stay cached.
        let (b, _) = m.allocate(&[50]).unwrap();
        assert_eq!(b.blocks(), &held[2..]);
        assert_eq!(m.cached_tokens(held[0]), Some(&[0, 1][..]));
        assert_eq!(m.cached_tokens(held[1]), Some(&[2, 3][..]));
    }

    #[test]
    fn a_hash_collision_is_not_a_hit() {
        let mut m = BlockManager::new(8, 2).unwrap();
        let prompt = [1, 2, 3];
        let (a, _) = prefill(&mut m, &prompt);
        // Forge a collision: point block [1, 2]'s key at a block holding other tokens.
        let block = a.blocks()[0];
        m.block_tokens_mut(block).copy_from_slice(&[9, 9]);
        assert_eq!(m.allocate(&prompt).unwrap().1, 0);
    }

    #[test]
    fn can_allocate_counts_hits_on_blocks_in_use_as_free() {
        let mut m = BlockManager::new(4, 4).unwrap();
        let prompt = tokens(0..13);
        let (_a, _) = prefill(&mut m, &prompt);
        assert_eq!(m.num_free_blocks(), 0);
        assert!(!m.can_allocate(&prompt), "one fresh block for the last token is still needed");
        let mut m = BlockManager::new(5, 4).unwrap();
        let (_a, _) = prefill(&mut m, &prompt);
        assert!(m.can_allocate(&prompt));
        assert_eq!(m.allocate(&prompt).unwrap().1, 12);
    }

    #[test]
    fn append_takes_a_block_only_at_a_boundary() {
        let mut m = BlockManager::new(2, 4).unwrap();
        let (mut a, _) = prefill(&mut m, &tokens(0..4));
        assert!(m.can_append(&a, 5));
        m.may_append(&mut a, 4).unwrap();
        assert_eq!(a.len(), 1);
        m.may_append(&mut a, 5).unwrap();
        assert_eq!(a.len(), 2);
        assert!(!m.can_append(&a, 9));
        assert_eq!(m.may_append(&mut a, 9), Err(CacheError::OutOfBlocks { needed: 1, free: 0 }));
    }

    #[test]
    fn block_size_one_works() {
        let mut m = BlockManager::new(4, 1).unwrap();
        let (mut a, _) = prefill(&mut m, &[7, 8]);
        m.may_append(&mut a, 3).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(prefill(&mut m, &[7, 8]).1, 1);
    }

    #[test]
    fn reset_forgets_freed_prefixes_only() {
        let mut m = BlockManager::new(8, 2).unwrap();
        let (mut a, _) = prefill(&mut m, &tokens(0..5));
        let (_b, _) = prefill(&mut m, &tokens(10..15));
        m.deallocate(&mut a);
        m.reset_prefix_cache();
        assert_eq!(m.allocate(&tokens(0..5)).unwrap().1, 0, "the freed prefix is forgotten");
        assert_eq!(m.allocate(&tokens(10..15)).unwrap().1, 4, "the live one is kept");
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(matches!(
            BlockManager::new(0, 16),
            Err(CacheError::InvalidShape { field: "num_blocks", .. })
        ));
        assert!(matches!(
            BlockManager::new(16, 0),
            Err(CacheError::InvalidShape { field: "block_size", .. })
        ));
    }
}
