//! A sequence's blocks, and the slots its tokens live in.

/// Index of a block in the cache.
pub type BlockId = u32;

/// The blocks one sequence holds, in token order: token `pos` lives in block
/// `blocks[pos / block_size]` at offset `pos % block_size`, that is in slot
/// `blocks[pos / block_size] * block_size + pos % block_size`.
///
/// Only the [`BlockManager`](crate::BlockManager) creates, grows and empties a table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub(crate) blocks: Vec<BlockId>,
    /// Leading blocks whose content is final and registered in the prefix cache: shared blocks
    /// are always among them, so every block from here on is held by this sequence alone.
    pub(crate) num_hashed: usize,
}

impl BlockTable {
    /// The block ids, in token order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is held (a waiting or finished sequence).
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Leading blocks that are full, final and findable by other sequences' prefixes.
    pub fn num_hashed(&self) -> usize {
        self.num_hashed
    }

    /// The slot of token `pos`, or `None` past the blocks held.
    pub fn slot(&self, pos: usize, block_size: usize) -> Option<usize> {
        let block = *self.blocks.get(pos / block_size)?;
        Some(block as usize * block_size + pos % block_size)
    }

    /// The slots of tokens `positions`, as the store kernels take them (`None` if any is past the
    /// blocks held).
    pub fn slot_mapping(&self, positions: std::ops::Range<usize>, block_size: usize) -> Option<Vec<usize>> {
        positions.map(|pos| self.slot(pos, block_size)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_invariant() {
        let table = BlockTable { blocks: vec![7, 2, 5], num_hashed: 0 };
        assert_eq!(table.slot(0, 4), Some(28));
        assert_eq!(table.slot(5, 4), Some(9));
        assert_eq!(table.slot(11, 4), Some(23));
        assert_eq!(table.slot(12, 4), None);
        assert_eq!(table.slot_mapping(3..6, 4), Some(vec![31, 8, 9]));
        assert_eq!(table.slot_mapping(10..13, 4), None);
    }
}
