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

use std::ops::Range;
use std::sync::{Arc, Barrier, Mutex};

use ndarray::{Array2, Axis, concatenate};

use crate::model::DecoderLayer;
use crate::{ModelError, Qwen3Config, Qwen3Model, WeightSource};

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

/// A block of one tensor, by its Hugging Face name: its rows and columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) name: String,
    pub(crate) rows: Range<usize>,
    pub(crate) cols: Range<usize>,
}

/// The packed matrices of one layer as pieces of the checkpoint's tensors, stacked by rows.
pub(crate) struct LayerPieces {
    pub(crate) qkv: Vec<Piece>,
    pub(crate) o_proj: Vec<Piece>,
    pub(crate) gate_up: Vec<Piece>,
    pub(crate) down: Vec<Piece>,
}

/// Rank `rank` of a `world`-way split of `config`'s model (`world` 1: the whole model): for each
/// layer its query and kv heads' rows of Q/K/V and columns of o_proj, its slice of gate/up rows
/// and down columns; and its rows of the vocabulary. The CPU shards and the GPU ranks upload by
/// this one plan.
pub(crate) fn shard_plan(
    config: &Qwen3Config,
    rank: usize,
    world: usize,
) -> (Vec<LayerPieces>, Range<usize>) {
    let part = |total: usize| total / world * rank..total / world * (rank + 1);
    let (h, d) = (config.hidden_size, config.head_dim);
    let (q_rows, kv_rows) = (part(config.num_attention_heads * d), part(config.num_key_value_heads * d));
    let inter = part(config.intermediate_size);
    let layers = (0..config.num_hidden_layers)
        .map(|layer| {
            let piece = |name: &str, rows: &Range<usize>, cols: &Range<usize>| Piece {
                name: format!("model.layers.{layer}.{name}"),
                rows: rows.clone(),
                cols: cols.clone(),
            };
            let all = 0..h;
            LayerPieces {
                qkv: vec![
                    piece("self_attn.q_proj.weight", &q_rows, &all),
                    piece("self_attn.k_proj.weight", &kv_rows, &all),
                    piece("self_attn.v_proj.weight", &kv_rows, &all),
                ],
                o_proj: vec![piece("self_attn.o_proj.weight", &all, &q_rows)],
                gate_up: vec![
                    piece("mlp.gate_proj.weight", &inter, &all),
                    piece("mlp.up_proj.weight", &inter, &all),
                ],
                down: vec![piece("mlp.down_proj.weight", &all, &inter)],
            }
        })
        .collect();
    (layers, part(config.vocab_size))
}

impl Qwen3Model {
    /// Rank `rank`'s shard of a `world`-way tensor-parallel model ([`shard_plan`]): its query and
    /// kv heads, its slice of the intermediate size and of the vocabulary; norms whole. Its config
    /// has the heads and intermediate size of one rank and the whole vocabulary (token ids stay
    /// global).
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
        let (plan, vocab_rows) = shard_plan(c, rank, world);
        let matrix = |pieces: &[Piece]| {
            let mut values = Vec::new();
            for p in pieces {
                self.read(&p.name, p.rows.clone(), p.cols.clone(), &mut values);
            }
            let cols = pieces[0].cols.len();
            Array2::from_shape_vec((values.len() / cols, cols), values).expect("pieces of equal width")
        };
        let layers = plan
            .iter()
            .zip(&self.layers)
            .map(|(pieces, l)| DecoderLayer {
                input_norm: l.input_norm.clone(),
                qkv: matrix(&pieces.qkv),
                q_norm: l.q_norm.clone(),
                k_norm: l.k_norm.clone(),
                o_proj: matrix(&pieces.o_proj),
                post_norm: l.post_norm.clone(),
                gate_up: matrix(&pieces.gate_up),
                down: matrix(&pieces.down),
            })
            .collect();
        let h = c.hidden_size;
        let vocab =
            |name: &str| matrix(&[Piece { name: name.to_owned(), rows: vocab_rows.clone(), cols: 0..h }]);
        Ok(Qwen3Model {
            config: c.shard(world),
            embed_tokens: vocab("model.embed_tokens.weight"),
            vocab_start: vocab_rows.start,
            layers,
            norm: self.norm.clone(),
            lm_head: self.lm_head.as_ref().map(|_| vocab("lm_head.weight")),
        })
    }
}
