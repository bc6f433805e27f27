//! The nanovllm engine: composes the Qwen3 model, the paged KV cache and the scheduler into an
//! LLM that takes prompts and returns generated text.
//!
//! Empty for now: the engine comes with the end-to-end issue.
