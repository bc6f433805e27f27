//! The Qwen3 model: its config, its weights and its forward pass over the paged KV cache.
//!
//! Empty for now: the CPU forward pass comes with the end-to-end issue.
