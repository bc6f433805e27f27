//! The paged KV cache: a block allocator with prefix caching, and host-side storage generic over
//! the storage dtype (bf16, f16, or INT8 rows in the [`nanovllm_kv_quant`] format).
//!
//! This crate's one job is *where* each token's keys and values live. The cache is split into
//! blocks of `block_size` token slots; a sequence holds a [`BlockTable`] of blocks, and
//!
//! ```text
//! slot = block_table[pos / block_size] * block_size + pos % block_size
//! ```
//!
//! is the slot of its token `pos` (the invariant every kernel relies on). The [`BlockManager`]
//! hands out blocks, shares full blocks between sequences with the same prefix (chained xxh64 keys,
//! checked against the token ids), and never touches K/V data. [`KvCache`] holds the data of every
//! layer in a [`StorageDtype`]; it is the CPU model's cache, and its layout is the GPU cache's.
//!
//! # Example
//!
//! ```
//! use nanovllm_kv_cache::{BlockManager, CacheLayout, Int8, KvCache};
//!
//! let mut blocks = BlockManager::new(16, 4)?;
//! let prompt = [11, 12, 13, 14, 15, 16];
//! let (mut table, cached) = blocks.allocate(&prompt)?;
//! assert_eq!((table.len(), cached), (2, 0));
//!
//! // Store one layer's K/V for the prompt (2 kv heads of 8), quantized to INT8 on the way in.
//! let layout = CacheLayout { num_layers: 1, num_blocks: 16, block_size: 4, kv_heads: 2, head_dim: 8 };
//! let mut cache = KvCache::<Int8>::new(layout)?;
//! let slots = table.slot_mapping(0..prompt.len(), 4).expect("the table covers the prompt");
//! let keys: Vec<f32> = (0..prompt.len() * 16).map(|i| (i as f32).sin()).collect();
//! cache.write(0, &slots, &keys, &keys)?;
//! blocks.register_computed(&mut table, &prompt, prompt.len());
//!
//! // Attention reads rows in place: the INT8 scale is folded into the score.
//! let q = [1.0f32; 8];
//! let score = cache.key(0, &table, 5, 1)?.dot(&q);
//! let exact: f32 = keys[5 * 16 + 8..5 * 16 + 16].iter().sum();
//! assert!((score - exact).abs() < 0.05);
//!
//! // A second sequence with the same first block reuses it.
//! let (other, cached) = blocks.allocate(&[11, 12, 13, 14, 99])?;
//! assert_eq!(cached, 4);
//! assert_eq!(other.blocks()[0], table.blocks()[0]);
//! # Ok::<(), nanovllm_kv_cache::CacheError>(())
//! ```

mod block_manager;
mod block_table;
mod dtype;
mod error;
mod hash;
mod store;

pub use block_manager::BlockManager;
pub use block_table::{BlockId, BlockTable};
pub use dtype::{Bf16, F16, F32, Fp8, Fp8PerTokenHead, Int4, Int8, StorageDtype};
pub use error::CacheError;
pub use hash::block_hash;
pub use store::{CacheLayout, KvCache, Row};

#[cfg(feature = "cuda")]
pub mod cuda;
