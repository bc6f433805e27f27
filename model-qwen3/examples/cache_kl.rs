//! KL(bf16 cache || INT8 cache) per token and top-1 agreement over a long greedy generation, on a
//! random-weight model of a real Qwen3 shape, on the GPU.
//!
//! `cargo run --release -p model-qwen3 --features cuda --example cache_kl -- CONFIG_DIR [tokens] [std] [seed]`
//!
//! The bf16-cache run generates greedily from a fixed 64-token prompt; the INT8-cache run is fed
//! the same tokens (teacher forcing), and each step's two distributions are compared. Random
//! weights give flatter distributions than a trained model's: see docs/ACCURACY.md.

use std::path::PathBuf;

use nanovllm_cuda::Gpu;
use nanovllm_kv_cache::BlockManager;
use nanovllm_kv_quant::CacheDtype;
use nanovllm_qwen3::cuda::{GpuLimits, GpuQwen3};
use nanovllm_qwen3::{Qwen3Config, Qwen3Model, SeqInput, argmax, log_softmax};

const BLOCK: usize = 16;
const PROMPT: usize = 64;

/// Prefill `prompt`, then decode `steps` tokens chosen by `choose(step, logits)`; every step's logits.
fn run(
    model: &mut GpuQwen3,
    prompt: &[u32],
    steps: usize,
    mut choose: impl FnMut(usize, &[f32]) -> u32,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let num_blocks = (prompt.len() + steps).div_ceil(BLOCK) + 1;
    let mut blocks = BlockManager::new(num_blocks, BLOCK).expect("blocks");
    let (mut table, _) = blocks.allocate(prompt).expect("room");
    let mut tokens = prompt.to_vec();
    let first = SeqInput { tokens: prompt, start: 0, block_table: &table, logits: 1 };
    let mut logits = model.forward(&[first]).expect("prefill").remove(0);
    let mut all = Vec::new();
    for step in 0..steps {
        let next = choose(step, &logits);
        all.push(logits);
        tokens.push(next);
        blocks.may_append(&mut table, tokens.len()).expect("room");
        let input = SeqInput {
            tokens: &tokens[tokens.len() - 1..],
            start: tokens.len() - 1,
            block_table: &table,
            logits: 1,
        };
        logits = model.forward(&[input]).expect("decode").remove(0);
    }
    (tokens[prompt.len()..].to_vec(), all)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: cache_kl CONFIG_DIR [tokens] [std] [seed]"));
    let steps: usize = args.next().map_or(512, |a| a.parse().expect("tokens"));
    let std: f32 = args.next().map_or(0.02, |a| a.parse().expect("std"));
    let seed: u64 = args.next().map_or(0, |a| a.parse().expect("seed"));
    let config = Qwen3Config::from_file(&dir.join("config.json")).expect("config.json");
    let gpu = Gpu::open().expect("a GPU");
    let model = Qwen3Model::random(config.clone(), seed, std);
    let blocks = (PROMPT + steps).div_ceil(BLOCK) + 1;
    let limits =
        GpuLimits { max_tokens: PROMPT, max_seqs: 1, max_model_len: blocks * BLOCK, cuda_graphs: true };
    let load = |dtype| {
        let mut gpu_model = GpuQwen3::new(&gpu, &model, dtype, BLOCK, limits).expect("GPU model");
        gpu_model.allocate_cache(blocks).expect("KV cache");
        gpu_model
    };
    let (mut bf16, mut int8) = (load(CacheDtype::Bf16), load(CacheDtype::Int8));
    drop(model);
    let vocab = config.vocab_size as u64;
    let prompt: Vec<u32> = (0..PROMPT as u64).map(|i| ((i * 2_654_435_761 + seed) % vocab) as u32).collect();
    let (tokens, reference) = run(&mut bf16, &prompt, steps, |_, logits| argmax(logits));
    let (_, test) = run(&mut int8, &prompt, steps, |step, _| tokens[step]);
    let (mut kl, mut agree, mut entropy) = (0.0, 0, 0.0);
    for (r, t) in reference.iter().zip(&test) {
        let (lr, lt) = (log_softmax(r), log_softmax(t));
        kl += lr.iter().zip(&lt).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
        entropy -= lr.iter().map(|a| a.exp() * a).sum::<f64>();
        agree += usize::from(argmax(r) == argmax(t));
    }
    let n = reference.len() as f64;
    println!(
        "{}: {} layers, hidden {}, {}/{} heads of {}; weights N(0, {std}^2), seed {seed}; {steps} greedy tokens after a {PROMPT}-token prompt",
        dir.display(),
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim
    );
    println!(
        "mean KL(bf16 cache || int8 cache) {:.3e} nats/token; top-1 agreement {agree}/{} ({:.2}%); mean entropy of the bf16 distribution {:.2} nats",
        kl / n,
        reference.len(),
        100.0 * agree as f64 / n,
        entropy / n
    );
}
