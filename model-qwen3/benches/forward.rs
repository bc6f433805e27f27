//! The CPU forward pass: one decode step over the paged cache per dtype (attention reading INT8
//! rows in place vs bf16 and f32), and a prefill chunk (the GEMM path).
//! `cargo bench -p model-qwen3`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use nanovllm_kv_cache::{Bf16, BlockManager, BlockTable, F32, Int8, KvCache, StorageDtype};
use nanovllm_qwen3::{Qwen3Config, Qwen3Model, SeqInput};
use std::hint::black_box;

const BLOCK: usize = 16;
const BATCH: usize = 8;
const CONTEXT: usize = 512;

fn model() -> Qwen3Model {
    let config = Qwen3Config::from_json_str(
        r#"{"model_type": "qwen3", "hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
            "num_key_value_heads": 4, "head_dim": 64, "intermediate_size": 1536, "vocab_size": 4096,
            "max_position_embeddings": 4096, "tie_word_embeddings": true}"#,
    )
    .expect("valid config");
    Qwen3Model::random(config, 0, 0.05)
}

/// A cache holding BATCH sequences of CONTEXT tokens, prefilled.
fn prefilled<T: StorageDtype>(model: &Qwen3Model) -> (KvCache<T>, Vec<Vec<u32>>, Vec<BlockTable>) {
    let blocks_needed = BATCH * (CONTEXT + 1).div_ceil(BLOCK);
    let mut manager = BlockManager::new(blocks_needed, BLOCK).expect("blocks");
    let mut cache = KvCache::<T>::new(model.cache_layout(blocks_needed, BLOCK)).expect("layout");
    let prompts: Vec<Vec<u32>> =
        (0..BATCH).map(|s| (0..CONTEXT as u32).map(|i| (i * 7 + s as u32) % 4096).collect()).collect();
    let mut tables = Vec::new();
    for prompt in &prompts {
        let mut with_next = prompt.clone();
        with_next.push(1);
        let (table, _) = manager.allocate(&with_next).expect("room");
        model
            .forward(&[SeqInput { tokens: prompt, start: 0, block_table: &table, logits: 0 }], &mut cache)
            .expect("prefill");
        tables.push(table);
    }
    (cache, prompts, tables)
}

fn decode_step<T: StorageDtype>(c: &mut Criterion, model: &Qwen3Model, name: &str) {
    let (mut cache, _, tables) = prefilled::<T>(model);
    let next = [1u32];
    c.bench_with_input(BenchmarkId::new("decode step, batch 8 x context 512", name), &(), |b, _| {
        b.iter(|| {
            let inputs: Vec<SeqInput> = tables
                .iter()
                .map(|t| SeqInput { tokens: &next, start: CONTEXT, block_table: t, logits: 1 })
                .collect();
            black_box(model.forward(&inputs, &mut cache).expect("decode"))
        })
    });
}

fn forward(c: &mut Criterion) {
    let model = model();
    decode_step::<F32>(c, &model, "f32");
    decode_step::<Bf16>(c, &model, "bf16");
    decode_step::<Int8>(c, &model, "int8");
    let (mut cache, prompts, tables) = prefilled::<Int8>(&model);
    c.bench_function("prefill chunk of 512 tokens (GEMM path), int8 cache", |b| {
        b.iter(|| {
            let input = SeqInput { tokens: &prompts[0], start: 0, block_table: &tables[0], logits: 1 };
            black_box(model.forward(&[input], &mut cache).expect("prefill"))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = forward
}
criterion_main!(benches);
