//! The whole engine on the GPU (`--features cuda`), both cache dtypes, against HF transformers'
//! greedy continuations, in a batch that exercises prefix-cache hits, chunked prefill, preemption
//! and decode replayed from CUDA graphs; and the engine split over two GPUs (tensor parallelism)
//! against HF on the trained KJV model. `#[ignore]`d: on a machine with a GPU,
//! `cargo test --release -p nanovllm --features cuda --test gpu_engine -- --ignored` (`--skip
//! two_gpus` on one GPU), or the test binary it builds, run with `--ignored`.
#![cfg(feature = "cuda")]

mod common;
mod kjv_reference;

use std::sync::{Mutex, MutexGuard, PoisonError};

use common::{fixture, hf_greedy, settings};
use nanovllm::{CacheDtype, Device, DeviceChoice, EngineConfig, LLM, LoadFormat, Prompt, SamplingParams};

const FIXTURE: &str = "head-dim-128";

/// A turn on the GPUs, one test at a time: the harness runs tests in parallel threads, and one
/// test's allocations break another's CUDA graph capture in the same context (seen in gpu_model).
fn turn() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_engine_on_the_gpu_follows_hf_greedy_with_prefix_hits_preemption_and_graphs() {
    let _turn = turn();
    if let Err(e) = nanovllm::resolve_device(DeviceChoice::Cuda) {
        panic!("this test needs a CUDA GPU: {e}");
    }
    // Prompts whose HF greedy continuations have no close call: prompt 2's first token has a top-2
    // margin of 0.014, inside bf16 activations' noise (measured on the H200 when the GPU model was first checked).
    let cases: Vec<(Vec<u32>, Vec<u32>)> =
        hf_greedy(FIXTURE).into_iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, c)| c).collect();
    for dtype in [CacheDtype::Bf16, CacheDtype::Int8] {
        // Three copies of every prompt in one batch, chunks of 64 tokens, a cache of 512 tokens for
        // about 900: later copies hit the prefix cache, long prompts are chunked, sequences are
        // preempted and recomputed.
        let settings = EngineConfig {
            device: Device::Cuda,
            max_num_batched_tokens: 64,
            ..settings(FIXTURE, dtype, 512)
        };
        let mut llm = LLM::load(&fixture(FIXTURE), settings, LoadFormat::Safetensors).unwrap();
        eprintln!("{}", llm.describe_cache());
        let prompts: Vec<Prompt> =
            (0..3).flat_map(|_| cases.iter().map(|(p, _)| Prompt::Tokens(p.clone()))).collect();
        let prompt_tokens: usize =
            prompts.len() / cases.len() * cases.iter().map(|(p, _)| p.len()).sum::<usize>();
        let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(24) };
        let outputs = llm.generate(prompts, &params).unwrap();
        let stats = llm.stats().clone();
        eprintln!(
            "{dtype}: {} of {prompt_tokens} prompt tokens computed (the rest prefix-cache hits), {} preemptions",
            stats.schedule.prefill_tokens,
            llm.scheduler().num_preemptions()
        );
        assert!(stats.schedule.prefill_tokens < prompt_tokens, "{dtype}: no prefix-cache hit");
        assert!(llm.scheduler().num_preemptions() > 0, "{dtype}: the budget is meant to preempt");
        assert!(llm.describe_cache().contains("CUDA graphs for"), "{dtype}: decode is meant to use graphs");
        // bf16 reproduces HF exactly; INT8 rounds K/V, so a later close call may go the other way
        // (on the CPU too: docs/ACCURACY.md): its every output must agree for 16 tokens or more.
        let leading: Vec<usize> = outputs
            .iter()
            .zip(cases.iter().cycle())
            .map(|(o, (_, hf))| {
                o.as_ref().unwrap().token_ids.iter().zip(hf).take_while(|(a, b)| a == b).count()
            })
            .collect();
        eprintln!(
            "{dtype}: tokens agreeing with HF before the first difference, per output: {leading:?} of 24"
        );
        let needed = if dtype == CacheDtype::Bf16 { 24 } else { 16 };
        assert!(leading.iter().all(|&n| n >= needed), "{dtype}: {leading:?}");
    }
}

/// Tensor parallelism through the whole engine: the trained KJV model (4 query heads on
/// 2 kv heads: one kv head per GPU) on 1 and on 2 GPUs, both cache dtypes, its prompts twice over
/// in a cache too small for them all (preemption and recompute), decode in CUDA graphs; every
/// output against HF's greedy tokens up to HF's first close call. The margin is wider than the
/// CPU test's (0.05): GPU logits carry bf16 activations' noise, about 2% of the largest logit.
#[test]
#[ignore = "needs two CUDA GPUs"]
fn the_engine_tensor_parallel_over_two_gpus_writes_hfs_greedy_text_until_a_close_call() {
    let _turn = turn();
    let gpus = nanovllm_cuda::Gpu::count().unwrap_or(0);
    assert!(gpus >= 2, "this test needs two CUDA GPUs; this machine has {gpus}");
    const NOISE: f64 = 0.1;
    let cases: Vec<kjv_reference::Case> =
        kjv_reference::hf_cases().into_iter().chain(kjv_reference::hf_cases()).collect();
    let c = nanovllm_qwen3::Qwen3Config::from_file(&kjv_reference::model_dir().join("config.json")).unwrap();
    for world in [1, 2] {
        for dtype in [CacheDtype::Bf16, CacheDtype::Int8] {
            // 12 blocks of 16 tokens per GPU for 8 sequences of about 55 tokens.
            let config = EngineConfig {
                device: Device::Cuda,
                tensor_parallel_size: world,
                kv_cache_dtype: dtype,
                block_size: 16,
                max_model_len: Some(64),
                ..EngineConfig::default()
            };
            let config = EngineConfig {
                kv_cache_memory_bytes: Some(12 * 16 * config.kv_bytes_per_token(&c)),
                ..config
            };
            let mut llm = LLM::load(&kjv_reference::model_dir(), config, LoadFormat::Safetensors).unwrap();
            eprintln!("{}", llm.describe_cache());
            let outputs = kjv_reference::generate(&mut llm, &cases);
            let preemptions = llm.scheduler().num_preemptions();
            let leading: Vec<usize> = outputs
                .iter()
                .zip(&cases)
                .map(|(o, case)| o.iter().zip(&case.greedy).take_while(|(a, b)| a == b).count())
                .collect();
            let needed: Vec<usize> =
                cases.iter().map(|case| kjv_reference::comparable(case, NOISE)).collect();
            eprintln!(
                "{world} GPU(s), {dtype}: {preemptions} preemptions; tokens agreeing with HF {leading:?}, needed {needed:?}"
            );
            assert!(preemptions > 0, "{world} GPU(s), {dtype}: the budget is meant to preempt");
            assert!(
                leading.iter().zip(&needed).all(|(l, n)| l >= n),
                "{world} GPU(s) {dtype}: differs from HF"
            );
            assert!(needed.iter().sum::<usize>() >= 100, "too few comparable tokens to mean anything");
        }
    }
}
