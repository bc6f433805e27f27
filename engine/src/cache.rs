//! The KV cache in the dtype chosen at run time.

use nanovllm_kv_cache::{Bf16, CacheLayout, F16, F32, Fp8, Fp8PerTokenHead, Int4, Int8, KvCache};
use nanovllm_kv_quant::CacheDtype;
use nanovllm_qwen3::{ModelError, Qwen3Model, SeqInput};

use crate::EngineError;

/// A `KvCache` of any storage dtype: the model's forward pass is generic over the dtype, and this
/// is the one place the runtime choice becomes a type.
#[derive(Debug)]
pub(crate) enum AnyCache {
    Bf16(KvCache<Bf16>),
    F16(KvCache<F16>),
    Int8(KvCache<Int8>),
    Fp8PerTokenHead(KvCache<Fp8PerTokenHead>),
    Fp8(KvCache<Fp8>),
    Int4(KvCache<Int4>),
    F32(KvCache<F32>),
}

impl AnyCache {
    pub(crate) fn new(dtype: CacheDtype, layout: CacheLayout) -> Result<Self, EngineError> {
        Ok(match dtype {
            CacheDtype::Bf16 => AnyCache::Bf16(KvCache::new(layout)?),
            CacheDtype::F16 => AnyCache::F16(KvCache::new(layout)?),
            CacheDtype::Int8 => AnyCache::Int8(KvCache::new(layout)?),
            CacheDtype::Fp8PerTokenHead => AnyCache::Fp8PerTokenHead(KvCache::new(layout)?),
            CacheDtype::Fp8 => AnyCache::Fp8(KvCache::new(layout)?),
            CacheDtype::Int4 => AnyCache::Int4(KvCache::new(layout)?),
            CacheDtype::F32 => AnyCache::F32(KvCache::new(layout)?),
        })
    }

    /// Copy block `from` into block `to` (a forked sequence's partly filled block).
    pub(crate) fn copy_block(&mut self, from: usize, to: usize) -> Result<(), EngineError> {
        match self {
            AnyCache::Bf16(cache) => cache.copy_block(from, to)?,
            AnyCache::F16(cache) => cache.copy_block(from, to)?,
            AnyCache::Int8(cache) => cache.copy_block(from, to)?,
            AnyCache::Fp8PerTokenHead(cache) => cache.copy_block(from, to)?,
            AnyCache::Fp8(cache) => cache.copy_block(from, to)?,
            AnyCache::Int4(cache) => cache.copy_block(from, to)?,
            AnyCache::F32(cache) => cache.copy_block(from, to)?,
        }
        Ok(())
    }

    pub(crate) fn forward(
        &mut self,
        model: &Qwen3Model,
        inputs: &[SeqInput<'_>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        match self {
            AnyCache::Bf16(cache) => model.forward(inputs, cache),
            AnyCache::F16(cache) => model.forward(inputs, cache),
            AnyCache::Int8(cache) => model.forward(inputs, cache),
            AnyCache::Fp8PerTokenHead(cache) => model.forward(inputs, cache),
            AnyCache::Fp8(cache) => model.forward(inputs, cache),
            AnyCache::Int4(cache) => model.forward(inputs, cache),
            AnyCache::F32(cache) => model.forward(inputs, cache),
        }
    }
}
