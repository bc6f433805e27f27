//! Megatron-style tensor parallelism, sharded as nano-vllm shards Qwen3: Q/K/V and gate/up are
//! column-parallel (each rank computes its own heads and its slice of the intermediate size),
//! o_proj and down_proj row-parallel (each rank's partial product is summed across the ranks),
//! the embedding and LM head vocab-parallel (each rank holds a slice of the vocabulary; embeddings
//! are summed, logits gathered), and the KV cache, with its INT8 scales, split by kv head.
//!
//! [`Qwen3Model::shard`] cuts a rank's weights; [`Qwen3Model::forward_parallel`] runs a rank's part
//! of a forward pass, exchanging activations through a [`Collective`]. [`ThreadGroup`] runs ranks
//! as threads of one process with the exchanges done in memory: the CPU stand-in for NCCL, which
//! the tests use to check that the ranks together compute the unsharded model's logits.

use std::sync::{Arc, Barrier, Mutex};

use ndarray::{Array2, Axis, concatenate, s};

use crate::model::DecoderLayer;
use crate::{ModelError, Qwen3Config, Qwen3Model};

/// What the ranks of a tensor-parallel group do together. Every rank calls the same methods in the
/// same order.
pub trait Collective: Sync {
    /// This rank, `0..world()`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world(&self) -> usize;
    /// Replace `x` on every rank by the sum of every rank's `x`.
    fn all_reduce_sum(&self, x: &mut Array2<f32>);
    /// Every rank's `x` side by side (columns), in rank order.
    fn all_gather_columns(&self, x: Array2<f32>) -> Array2<f32>;
}

/// A group of one: nothing to exchange.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCollective;

impl Collective for NoCollective {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _x: &mut Array2<f32>) {}

    fn all_gather_columns(&self, x: Array2<f32>) -> Array2<f32> {
        x
    }
}

/// Ranks as threads of one process, exchanging through shared memory. Sums are taken in rank order,
/// so every rank gets bit-identical results.
#[derive(Debug)]
pub struct ThreadGroup {
    barrier: Barrier,
    posted: Mutex<Vec<Option<Array2<f32>>>>,
}

/// One rank's handle on a [`ThreadGroup`].
#[derive(Debug, Clone)]
pub struct ThreadRank {
    group: Arc<ThreadGroup>,
    rank: usize,
}

impl ThreadGroup {
    /// Handles for ranks `0..world`, one per thread.
    pub fn ranks(world: usize) -> Vec<ThreadRank> {
        let group =
            Arc::new(ThreadGroup { barrier: Barrier::new(world), posted: Mutex::new(vec![None; world]) });
        (0..world).map(|rank| ThreadRank { group: group.clone(), rank }).collect()
    }
}

impl ThreadRank {
    /// Post `x`, wait for every rank's, and return them all in rank order.
    fn exchange(&self, x: Array2<f32>) -> Vec<Array2<f32>> {
        let group = &self.group;
        group.posted.lock().expect("no rank panics while holding the lock")[self.rank] = Some(x);
        group.barrier.wait();
        let all = group
            .posted
            .lock()
            .expect("no rank panics while holding the lock")
            .iter()
            .map(|x| x.clone().expect("every rank posted before the barrier"))
            .collect();
        // Nobody posts the next exchange before everyone has read this one.
        group.barrier.wait();
        all
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.group.posted.lock().expect("no rank panics while holding the lock").len()
    }

    fn all_reduce_sum(&self, x: &mut Array2<f32>) {
        let all = self.exchange(x.clone());
        x.fill(0.0);
        for part in &all {
            *x += part;
        }
    }

    fn all_gather_columns(&self, x: Array2<f32>) -> Array2<f32> {
        let all = self.exchange(x);
        let views: Vec<_> = all.iter().map(|a| a.view()).collect();
        concatenate(Axis(1), &views).expect("every rank has the same rows")
    }
}

impl Qwen3Config {
    /// One rank's config of a `world`-way split: its heads, kv heads and intermediate size; the
    /// whole vocabulary (token ids stay global). `world` must divide them
    /// ([`Qwen3Config::check_tensor_parallel`]).
    pub fn shard(&self, world: usize) -> Qwen3Config {
        Qwen3Config {
            num_attention_heads: self.num_attention_heads / world,
            num_key_value_heads: self.num_key_value_heads / world,
            intermediate_size: self.intermediate_size / world,
            ..self.clone()
        }
    }

    /// Refuse a tensor-parallel size that does not split the heads, kv heads, intermediate size and
    /// vocabulary evenly (each rank must hold whole heads and equal slices).
    pub fn check_tensor_parallel(&self, world: usize) -> Result<(), ModelError> {
        let parts = [
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
        ];
        let problem = if world == 0 {
            Some("must be at least 1".to_owned())
        } else {
            parts
                .iter()
                .find(|(_, n)| n % world != 0)
                .map(|(field, n)| format!("does not divide {field} ({n})"))
        };
        match problem {
            Some(problem) => Err(ModelError::TensorParallel { size: world, problem }),
            None => Ok(()),
        }
    }
}

impl Qwen3Model {
    /// Rank `rank`'s shard of a `world`-way tensor-parallel model: its query and kv heads, its
    /// slice of the intermediate size and of the vocabulary; norms whole. Its config has the heads
    /// and intermediate size of one rank and the whole vocabulary (token ids stay global).
    pub fn shard(&self, rank: usize, world: usize) -> Result<Qwen3Model, ModelError> {
        let c = &self.config;
        c.check_tensor_parallel(world)?;
        if self.is_shard() {
            return Err(ModelError::TensorParallel {
                size: world,
                problem: "the model is already a shard".into(),
            });
        }
        if rank >= world {
            return Err(ModelError::TensorParallel { size: world, problem: format!("has no rank {rank}") });
        }
        let d = c.head_dim;
        let (heads, kv_heads, inter) =
            (c.num_attention_heads / world, c.num_key_value_heads / world, c.intermediate_size / world);
        let vocab = c.vocab_size / world;
        let q_rows = rank * heads * d..(rank + 1) * heads * d;
        let k_base = c.num_attention_heads * d;
        let v_base = k_base + c.num_key_value_heads * d;
        let kv_rows = |base: usize| base + rank * kv_heads * d..base + (rank + 1) * kv_heads * d;
        let rows = |m: &Array2<f32>, ranges: &[std::ops::Range<usize>]| {
            let parts: Vec<_> = ranges.iter().map(|r| m.slice(s![r.clone(), ..])).collect();
            concatenate(Axis(0), &parts).expect("slices of one matrix share their columns")
        };
        let inter_rows = rank * inter..(rank + 1) * inter;
        let layers = self
            .layers
            .iter()
            .map(|l| DecoderLayer {
                input_norm: l.input_norm.clone(),
                qkv: rows(&l.qkv, &[q_rows.clone(), kv_rows(k_base), kv_rows(v_base)]),
                q_norm: l.q_norm.clone(),
                k_norm: l.k_norm.clone(),
                o_proj: l.o_proj.slice(s![.., q_rows.clone()]).to_owned(),
                post_norm: l.post_norm.clone(),
                gate_up: rows(
                    &l.gate_up,
                    &[
                        inter_rows.clone(),
                        c.intermediate_size + inter_rows.start..c.intermediate_size + inter_rows.end,
                    ],
                ),
                down: l.down.slice(s![.., inter_rows.clone()]).to_owned(),
            })
            .collect();
        let vocab_rows = rank * vocab..(rank + 1) * vocab;
        Ok(Qwen3Model {
            config: c.shard(world),
            embed_tokens: self.embed_tokens.slice(s![vocab_rows.clone(), ..]).to_owned(),
            vocab_start: vocab_rows.start,
            layers,
            norm: self.norm.clone(),
            lm_head: self.lm_head.as_ref().map(|h| h.slice(s![vocab_rows, ..]).to_owned()),
        })
    }
}
