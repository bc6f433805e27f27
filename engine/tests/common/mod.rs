//! Helpers shared by engine's integration tests: the HF-weights fixtures, their HF greedy
//! continuations, and engine settings with an exact KV budget.

use std::path::{Path, PathBuf};

use nanovllm::{CacheDtype, EngineConfig};
use serde_json::Value;

/// A fixture of model-qwen3. A machine with a GPU may run test binaries from a copy of the repository
/// where the build's path does not exist: then the path relative to the repository root.
pub(crate) fn fixture(name: &str) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if crate_dir.exists() { crate_dir.join("..") } else { PathBuf::from(".") };
    root.join("model-qwen3/tests/fixtures").join(name)
}

/// HF's prompts and greedy continuations for a fixture.
pub(crate) fn hf_greedy(name: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("hf_reference.json")).unwrap())
            .unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    reference["prompts"].as_array().unwrap().iter().map(|p| (ids(&p["prompt"]), ids(&p["greedy"]))).collect()
}

/// Engine settings for fixture `name` with a KV budget of exactly `kv_tokens` tokens.
pub(crate) fn settings(name: &str, dtype: CacheDtype, kv_tokens: usize) -> EngineConfig {
    let c = nanovllm_qwen3::Qwen3Config::from_file(&fixture(name).join("config.json")).unwrap();
    let config = EngineConfig {
        kv_cache_dtype: dtype,
        block_size: 16,
        max_num_batched_tokens: 128,
        ..EngineConfig::default()
    };
    EngineConfig { kv_cache_memory_bytes: Some(kv_tokens * config.kv_bytes_per_token(&c)), ..config }
}
