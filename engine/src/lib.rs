//! The nanovllm engine: composes the Qwen3 model, the paged KV cache and the scheduler into an
//! [`LLM`] that takes prompts and returns completions, as nano-vllm's `LLM` does.
//!
//! This crate's one job is the composition: loading a model directory (or fetching a Hugging Face
//! model id), tokenizing and applying the chat template, running the scheduler's batches through
//! the model on the CPU or a GPU with the KV cache in the dtype chosen at run time, and sampling.
//! The default build needs no CUDA; the `cuda` feature adds the GPU backend (and still builds
//! without CUDA installed).
//!
//! # Example
//!
//! ```
//! use nanovllm::{EngineConfig, LLM, Prompt};
//! use nanovllm_qwen3::{GenerationConfig, Qwen3Config, Qwen3Model};
//! use nanovllm_scheduler::SamplingParams;
//!
//! let config = Qwen3Config::from_json_str(r#"{
//!     "model_type": "qwen3", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
//!     "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64, "vocab_size": 100,
//!     "max_position_embeddings": 256, "tie_word_embeddings": true
//! }"#)?;
//! let model = Qwen3Model::random(config, 0, 0.5);
//! let settings = EngineConfig { kv_cache_dtype: "int8".parse()?, block_size: 16, ..EngineConfig::default() };
//! let mut llm = LLM::new(model, GenerationConfig::default(), settings)?;
//! let prompts = vec![Prompt::Tokens(vec![1, 2, 3]), Prompt::Tokens(vec![4, 5])];
//! let outputs = llm.generate(prompts, &SamplingParams::greedy(8))?;
//! assert!(outputs.iter().all(|c| c.as_ref().unwrap().token_ids.len() == 8));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backend;
mod cache;
mod chat;
mod config;
mod error;
mod hub;
mod llm;
mod progress;
mod sample_text;
mod sampler;
mod tokenizer;

pub use backend::{Device, DeviceChoice, resolve_device};
pub use chat::{ChatTemplate, Message};
pub use config::{CacheFit, EngineConfig, parse_kv_cache_dtype};
pub use error::EngineError;
pub use hub::{Hub, resolve_model};
pub use llm::{Completion, EngineStats, LLM, LoadFormat, Prompt, StepOutput, StepToken};
pub use nanovllm_kv_quant::{CacheDtype, UnknownCacheDtype};
pub use nanovllm_qwen3::{
    GenerationConfig, LogitAdjustment, Qwen3Config, Sampled, TokenLogprobs, argmax, log_softmax,
};
pub use nanovllm_scheduler::{
    FinishReason, MAX_LOGPROBS, Phase, SamplingParams, ScheduleError, ScheduleStats, SchedulerConfig, SeqId,
    StepPolicy, StopReason, replay,
};
pub use progress::Progress;
pub use sample_text::SampleText;
pub use sampler::Sampler;
pub use tokenizer::{StreamDecoder, Tokenizer};
