use thiserror::Error;

/// What the block manager and the cache storage refuse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CacheError {
    /// Not enough free blocks right now (the scheduler waits or preempts).
    #[error("out of KV cache blocks: {needed} needed, {free} free")]
    OutOfBlocks {
        /// Blocks the request needs from the free list.
        needed: usize,
        /// Blocks free.
        free: usize,
    },
    /// A cache shape with a zero or absurd size.
    #[error("invalid KV cache shape: {field} = {value} ({why})")]
    InvalidShape {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A write or read that does not fit the cache.
    #[error("KV cache access out of range: {what} is {value}, limit {limit}")]
    OutOfRange {
        /// What was out of range.
        what: &'static str,
        /// The value given.
        value: usize,
        /// The bound it had to respect.
        limit: usize,
    },
}
