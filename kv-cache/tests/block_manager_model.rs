//! A state-machine property test of the block manager: random interleavings of allocate, compute
//! (prefill chunks), append (decode), and free, over prompts that share prefixes, checked after
//! every step against a model of what each slot holds.

use nanovllm_kv_cache::{BlockManager, BlockTable};
use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Debug, Clone)]
enum Op {
    /// A new sequence: a shared stem (to make prefix hits) and its own tail.
    Start { stem: Index, stem_len: usize, tail: Vec<u32> },
    /// Compute the K/V of up to `tokens` more tokens of a sequence (a prefill chunk).
    Compute { seq: Index, tokens: usize },
    /// Generate one token for a fully computed sequence.
    Append { seq: Index, token: u32 },
    /// The sequence finishes or is preempted.
    Free { seq: Index },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<Index>(), 0usize..40, prop::collection::vec(0u32..3, 0..12))
            .prop_map(|(stem, stem_len, tail)| Op::Start { stem, stem_len, tail }),
        (any::<Index>(), 1usize..20).prop_map(|(seq, tokens)| Op::Compute { seq, tokens }),
        (any::<Index>(), 0u32..3).prop_map(|(seq, token)| Op::Append { seq, token }),
        any::<Index>().prop_map(|seq| Op::Free { seq }),
    ]
}

struct Live {
    tokens: Vec<u32>,
    table: BlockTable,
    computed: usize,
}

/// The manager, the live sequences, and what each slot really holds (the token whose K/V were
/// written there), as the model would have written it.
struct World {
    manager: BlockManager,
    live: Vec<Live>,
    slots: Vec<Option<u32>>,
    stems: Vec<Vec<u32>>,
}

impl World {
    fn block_size(&self) -> usize {
        self.manager.block_size()
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Start { stem, stem_len, tail } => {
                let stem = stem.get(&self.stems);
                let mut tokens: Vec<u32> = stem[..stem_len.min(stem.len())].to_vec();
                tokens.extend(tail);
                if tokens.is_empty() {
                    return Ok(());
                }
                let could = self.manager.can_allocate(&tokens);
                match self.manager.allocate(&tokens) {
                    Ok((table, cached)) => {
                        prop_assert!(could, "allocate succeeded where can_allocate said no");
                        prop_assert!(cached < tokens.len(), "at least one token is computed");
                        prop_assert_eq!(table.len(), tokens.len().div_ceil(self.block_size()));
                        for (pos, &token) in tokens.iter().enumerate().take(cached) {
                            let slot = table.slot(pos, self.block_size()).unwrap();
                            prop_assert_eq!(
                                self.slots[slot],
                                Some(token),
                                "cache hit on wrong K/V at {}",
                                pos
                            );
                        }
                        self.live.push(Live { tokens, table, computed: cached });
                    }
                    Err(_) => prop_assert!(!could, "can_allocate said yes but allocate failed"),
                }
            }
            Op::Compute { seq, tokens } => {
                if self.live.is_empty() {
                    return Ok(());
                }
                let bs = self.block_size();
                let index = seq.index(self.live.len());
                let seq = &mut self.live[index];
                let end = (seq.computed + tokens).min(seq.tokens.len());
                for pos in seq.computed..end {
                    let slot = seq.table.slot(pos, bs).unwrap();
                    let block = seq.table.blocks()[pos / bs];
                    prop_assert_eq!(self.manager.ref_count(block), 1, "writing into a shared block");
                    self.slots[slot] = Some(seq.tokens[pos]);
                }
                seq.computed = end;
                self.manager.register_computed(&mut seq.table, &seq.tokens, end);
            }
            Op::Append { seq, token } => {
                if self.live.is_empty() {
                    return Ok(());
                }
                let index = seq.index(self.live.len());
                let seq = &mut self.live[index];
                if seq.computed < seq.tokens.len() {
                    return Ok(());
                }
                let len = seq.tokens.len() + 1;
                if self.manager.can_append(&seq.table, len) {
                    self.manager.may_append(&mut seq.table, len).unwrap();
                    seq.tokens.push(token);
                } else {
                    prop_assert!(self.manager.may_append(&mut seq.table, len).is_err());
                }
            }
            Op::Free { seq } => {
                if self.live.is_empty() {
                    return Ok(());
                }
                let mut seq = self.live.swap_remove(seq.index(self.live.len()));
                self.manager.deallocate(&mut seq.table);
                prop_assert!(seq.table.is_empty());
            }
        }
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let total = self.manager.num_blocks();
        let mut holders = vec![0u32; total];
        for seq in &self.live {
            prop_assert!(seq.table.len() * self.block_size() >= seq.tokens.len());
            for &block in seq.table.blocks() {
                holders[block as usize] += 1;
            }
        }
        let mut free = 0;
        for (block, &held_by) in holders.iter().enumerate() {
            let count = self.manager.ref_count(block as u32);
            prop_assert_eq!(count, held_by, "ref count of block {}", block);
            free += usize::from(count == 0);
            if let Some(tokens) = self.manager.cached_tokens(block as u32) {
                let start = block * self.block_size();
                let held: Vec<Option<u32>> = self.slots[start..start + self.block_size()].to_vec();
                let claimed: Vec<Option<u32>> = tokens.iter().copied().map(Some).collect();
                prop_assert_eq!(held, claimed, "cached block {} holds other tokens", block);
            }
        }
        prop_assert_eq!(free, self.manager.num_free_blocks(), "free + used = total");
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn the_block_manager_never_leaks_or_corrupts(
        num_blocks in 1usize..24,
        block_size in 1usize..6,
        stems in prop::collection::vec(prop::collection::vec(0u32..3, 40), 1..4),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut world = World {
            manager: BlockManager::new(num_blocks, block_size).unwrap(),
            live: Vec::new(),
            slots: vec![None; num_blocks * block_size],
            stems,
        };
        for op in ops {
            world.apply(op)?;
            world.check_invariants()?;
        }
        let mut live = std::mem::take(&mut world.live);
        for seq in &mut live {
            world.manager.deallocate(&mut seq.table);
        }
        prop_assert_eq!(world.manager.num_free_blocks(), num_blocks, "everything freed at the end");
    }
}
