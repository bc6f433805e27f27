//! Tensor parallelism on the CPU: ranks as threads exchanging activations in memory, each
//! with its shard of the weights and of the KV cache (its kv heads), must compute together the
//! logits of the unsharded model: prefill of several sequences, then decode steps, for f32 and
//! INT8 caches, at 2 and 4 ranks.

mod common;

use nanovllm_kv_cache::{BlockManager, BlockTable, F32, Int8, KvCache, StorageDtype};
use nanovllm_qwen3::tensor_parallel::{NoCollective, ThreadGroup};
use nanovllm_qwen3::{ModelError, Qwen3Config, Qwen3Model, SeqInput};

const BLOCK_SIZE: usize = 16;
const NUM_BLOCKS: usize = 64;

fn model(tied: bool) -> Qwen3Model {
    let config = Qwen3Config::from_json_str(&format!(
        r#"{{"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
            "num_key_value_heads": 4, "head_dim": 16, "intermediate_size": 96, "vocab_size": 256,
            "max_position_embeddings": 512, "tie_word_embeddings": {tied}}}"#
    ))
    .unwrap();
    Qwen3Model::random(config, 7, 0.2)
}

/// Logits of every step: a batched prefill of `prompts`, then `steps` decode steps that append a
/// token that depends on the sequence alone. `forward` runs one step on one rank's model and cache.
fn run<T: StorageDtype>(
    model: &Qwen3Model,
    prompts: &[Vec<u32>],
    steps: usize,
    mut forward: impl FnMut(&[SeqInput<'_>], &mut KvCache<T>) -> Vec<Vec<f32>>,
) -> Vec<Vec<f32>> {
    let mut cache = KvCache::<T>::new(model.cache_layout(NUM_BLOCKS, BLOCK_SIZE)).unwrap();
    let mut blocks = BlockManager::new(NUM_BLOCKS, BLOCK_SIZE).unwrap();
    let mut tokens: Vec<Vec<u32>> = prompts.to_vec();
    let mut tables: Vec<BlockTable> = tokens.iter().map(|t| blocks.allocate(t).unwrap().0).collect();
    let mut all = Vec::new();
    let inputs: Vec<SeqInput> = tokens
        .iter()
        .zip(&tables)
        .map(|(t, table)| SeqInput { tokens: t, start: 0, block_table: table, logits: 1 })
        .collect();
    all.extend(forward(&inputs, &mut cache));
    for _ in 0..steps {
        let inputs =
            common::decode_step(&mut tokens, &mut tables, &mut blocks, |len| (len as u32 * 37 + 5) % 256);
        all.extend(forward(&inputs, &mut cache));
    }
    all
}

/// Every rank's logits, from `world` threads each running its shard.
fn sharded<T: StorageDtype>(whole: &Qwen3Model, world: usize, prompts: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let ranks = ThreadGroup::ranks(world);
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(rank, group)| {
                let shard = whole.shard(rank, world).unwrap();
                scope.spawn(move || {
                    run::<T>(&shard, prompts, 5, |inputs, cache| {
                        shard.forward_parallel(inputs, cache, &group).unwrap()
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn check<T: StorageDtype>(tied: bool, world: usize) {
    let whole = model(tied);
    let prompts: Vec<Vec<u32>> = [1usize, 9, 40, 23]
        .iter()
        .map(|&n| (0..n as u32).map(|i| (i * 11 + n as u32) % 256).collect())
        .collect();
    let expected = run::<T>(&whole, &prompts, 5, |inputs, cache| {
        whole.forward_parallel(inputs, cache, &NoCollective).unwrap()
    });
    let scale = expected.iter().flatten().fold(0.0f32, |m, x| m.max(x.abs()));
    let ranks = sharded::<T>(&whole, world, &prompts);
    for (rank, got) in ranks.iter().enumerate() {
        assert_eq!(got.len(), expected.len());
        assert!(got.iter().all(|row| row.len() == 256), "rank {rank} returns whole-vocabulary logits");
        let difference = max_difference(got, &expected);
        // The ranks sum partial products in another order than one GEMM does: f32 rounding only.
        assert!(
            difference <= 1e-4 * scale,
            "{world} ranks, rank {rank}: logits differ by {difference} (scale {scale})"
        );
        assert_eq!(got, &ranks[0], "rank {rank} and rank 0 disagree");
    }
}

#[test]
fn two_and_four_ranks_compute_the_unsharded_logits() {
    for world in [2, 4] {
        check::<F32>(true, world);
        check::<F32>(false, world);
        check::<Int8>(true, world);
    }
}

#[test]
fn a_size_that_does_not_split_the_model_is_refused_with_the_reason() {
    let whole = model(true);
    let cases = [(3, "num_attention_heads (8)"), (8, "num_key_value_heads (4)"), (0, "at least 1")];
    for (world, reason) in cases {
        let message = match whole.shard(0, world) {
            Err(e @ ModelError::TensorParallel { .. }) => e.to_string(),
            other => panic!("{world}: expected a tensor-parallel error, got {other:?}"),
        };
        assert!(message.contains(reason), "{message}");
    }
    let shard = whole.shard(1, 2).unwrap();
    assert!(shard.is_shard() && !whole.is_shard());
    assert!(shard.shard(0, 2).is_err(), "a shard cannot be sharded again");
    assert!(whole.shard(2, 2).is_err(), "rank 2 of 2");
}
