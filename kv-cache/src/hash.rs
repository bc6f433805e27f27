//! The prefix-cache key of a full block.

use xxhash_rust::xxh64::Xxh64;

/// The chained hash of a full block: xxh64 over the previous block's hash (8 bytes, little-endian;
/// absent for the first block) followed by the block's token ids (4 bytes each, little-endian).
///
/// Chaining makes the key stand for the whole prefix up to and including this block, as in
/// nano-vllm, so equal keys mean equal prefixes (up to collisions, which the block manager rules
/// out by comparing token ids).
pub fn block_hash(previous: Option<u64>, tokens: &[u32]) -> u64 {
    let mut hasher = Xxh64::new(0);
    if let Some(previous) = previous {
        hasher.update(&previous.to_le_bytes());
    }
    for token in tokens {
        hasher.update(&token.to_le_bytes());
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_depends_on_the_prefix() {
        let a = block_hash(None, &[1, 2, 3, 4]);
        assert_eq!(a, block_hash(None, &[1, 2, 3, 4]));
        assert_ne!(a, block_hash(None, &[1, 2, 3, 5]));
        assert_ne!(block_hash(Some(a), &[5, 6, 7, 8]), block_hash(Some(a ^ 1), &[5, 6, 7, 8]));
        assert_ne!(block_hash(Some(a), &[5, 6, 7, 8]), block_hash(None, &[5, 6, 7, 8]));
    }
}
