//! The Qwen3 model: its Hugging Face config, its safetensors weights, and its forward pass over the
//! paged KV cache, on the CPU.
//!
//! This crate's one job is the model's math. It knows the cache only through
//! [`nanovllm_kv_cache::KvCache`] and block tables; scheduling and sampling live elsewhere. The CPU forward
//! pass computes in f32 (weights widened once at load), and is the reference the GPU path and the
//! INT8 cache are measured against; with an f32 cache it matches HF transformers' fp32 logits.
//!
//! # Example
//!
//! ```
//! use nanovllm_kv_cache::{BlockManager, F32, KvCache};
//! use nanovllm_qwen3::{Qwen3Config, Qwen3Model, SeqInput};
//!
//! let config = Qwen3Config::from_json_str(r#"{
//!     "model_type": "qwen3", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
//!     "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64, "vocab_size": 100,
//!     "max_position_embeddings": 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
//!     "tie_word_embeddings": true
//! }"#)?;
//! let model = Qwen3Model::random(config, 0, 0.1);
//! let mut blocks = BlockManager::new(8, 4)?;
//! let mut cache = KvCache::<F32>::new(model.cache_layout(8, 4))?;
//! let prompt = [1, 2, 3, 4, 5];
//! let (table, _) = blocks.allocate(&prompt)?;
//! let logits = model.forward(&[SeqInput { tokens: &prompt, start: 0, block_table: &table, logits: 1 }], &mut cache)?;
//! assert_eq!(logits[0].len(), 100);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod forward;
mod logits;
mod model;
mod source;
pub mod tensor_parallel;
mod weights;

pub use config::{GenerationConfig, Qwen3Config, Yarn};
pub use error::ModelError;
pub use forward::SeqInput;
pub use logits::{LogitAdjustment, Sampled, TokenLogprobs, argmax, log_softmax};
pub use model::Qwen3Model;
pub use source::{DummyMatrix, DummyWeights, WeightSource, tensor_shapes};
pub use weights::{Checkpoint, SafetensorsIndex};

impl Qwen3Model {
    /// The shape of a KV cache of `num_blocks` blocks of `block_size` for this model.
    pub fn cache_layout(&self, num_blocks: usize, block_size: usize) -> nanovllm_kv_cache::CacheLayout {
        self.config.cache_layout(num_blocks, block_size)
    }
}

impl Qwen3Config {
    /// The shape of a KV cache of `num_blocks` blocks of `block_size` for this model (a shard's:
    /// its kv heads).
    pub fn cache_layout(&self, num_blocks: usize, block_size: usize) -> nanovllm_kv_cache::CacheLayout {
        let c = self;
        nanovllm_kv_cache::CacheLayout {
            num_layers: c.num_hidden_layers,
            num_blocks,
            block_size,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        }
    }
}
