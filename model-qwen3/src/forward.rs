//! The Qwen3 forward pass on the CPU, over the paged KV cache.

use nanovllm_kv_cache::{BlockTable, KvCache, StorageDtype};
use ndarray::{Array2, Axis, s};
use rayon::prelude::*;

use crate::tensor_parallel::{Collective, NoCollective};
use crate::{ModelError, Qwen3Model};

/// One sequence's share of a forward pass: compute tokens at positions `start..start + tokens.len()`
/// (earlier ones are already in the cache, through `block_table`), and return the logits of the
/// last one if `logits` is set.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// The new tokens.
    pub tokens: &'a [u32],
    /// Position of the first new token.
    pub start: usize,
    /// Where the sequence's K/V live; it must have a slot for every position up to the last.
    pub block_table: &'a BlockTable,
    /// How many rows of logits of the last token to compute: 0 or 1, or one per sample drawn
    /// from them (the siblings of a request with `n` samples, drawn at the end of its prefill).
    pub logits: usize,
}

/// Where one token of the flattened batch belongs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenSlot {
    pub(crate) seq: usize,
    pub(crate) id: u32,
    pub(crate) pos: usize,
    pub(crate) slot: usize,
}

impl Qwen3Model {
    /// Run the model over a batch: store every new token's K and V in `cache` (rounded or
    /// quantized by its dtype), attend causally over each sequence's cache, and return the logits
    /// of the last token of each sequence that asks for them, in batch order.
    pub fn forward<T: StorageDtype>(
        &self,
        seqs: &[SeqInput<'_>],
        cache: &mut KvCache<T>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.forward_parallel(seqs, cache, &NoCollective)
    }

    /// One tensor-parallel rank's part of [`Qwen3Model::forward`]: `self` is its shard
    /// ([`Qwen3Model::shard`]) and `cache` holds its kv heads; every rank of `group` runs the same
    /// batch at once, and each returns the whole logits.
    pub fn forward_parallel<T: StorageDtype>(
        &self,
        seqs: &[SeqInput<'_>],
        cache: &mut KvCache<T>,
        group: &dyn Collective,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let tokens = self.check_batch(seqs, cache)?;
        let slots: Vec<usize> = tokens.iter().map(|t| t.slot).collect();
        let mut x = self.embed(&tokens);
        group.all_reduce_sum(&mut x);
        let eps = self.config.rms_norm_eps as f32;
        let rope = self.config.rope();
        for (index, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, eps);
            let mut qkv = h.dot(&layer.qkv.t());
            self.norm_and_rotate(&mut qkv, &tokens, &layer.q_norm, &layer.k_norm, &rope);
            let (q_end, k_end) = self.qkv_bounds();
            let keys = qkv.slice(s![.., q_end..k_end]).to_owned();
            let values = qkv.slice(s![.., k_end..]).to_owned();
            cache.write(index, &slots, contiguous(&keys), contiguous(&values))?;
            let attended = self.attention(index, &qkv, &tokens, seqs, cache)?;
            let mut delta = attended.dot(&layer.o_proj.t());
            group.all_reduce_sum(&mut delta);
            x += &delta;
            let h = rms_norm(&x, &layer.post_norm, eps);
            let gate_up = h.dot(&layer.gate_up.t());
            let mut delta = silu_mul(&gate_up).dot(&layer.down.t());
            group.all_reduce_sum(&mut delta);
            x += &delta;
        }
        let h = rms_norm(&x.select(Axis(0), &logit_rows(seqs)), &self.norm, eps);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let logits = group.all_gather_columns(h.dot(&head.t()));
        Ok(logits.outer_iter().map(|row| row.to_vec()).collect())
    }

    /// The embedding rows of the batch's tokens; zeros for ids outside a shard's vocabulary slice
    /// (another rank holds them, and the ranks' rows are summed).
    fn embed(&self, tokens: &[TokenSlot]) -> Array2<f32> {
        let mut x = Array2::zeros((tokens.len(), self.config.hidden_size));
        for (mut row, token) in x.outer_iter_mut().zip(tokens) {
            if let Some(local) = (token.id as usize).checked_sub(self.vocab_start)
                && local < self.embed_tokens.nrows()
            {
                row.assign(&self.embed_tokens.row(local));
            }
        }
        x
    }

    /// Checks the batch against the model and the cache, and lays out its tokens.
    fn check_batch<T: StorageDtype>(
        &self,
        seqs: &[SeqInput<'_>],
        cache: &KvCache<T>,
    ) -> Result<Vec<TokenSlot>, ModelError> {
        let layout = cache.layout();
        let c = &self.config;
        if (layout.num_layers, layout.kv_heads, layout.head_dim)
            != (c.num_hidden_layers, c.num_key_value_heads, c.head_dim)
        {
            return Err(ModelError::Input(format!(
                "KV cache of {} layers x {} kv heads x {} does not fit a model of {} x {} x {}",
                layout.num_layers,
                layout.kv_heads,
                layout.head_dim,
                c.num_hidden_layers,
                c.num_key_value_heads,
                c.head_dim
            )));
        }
        lay_out(seqs, c.vocab_size, layout.block_size)
    }

    /// Column ranges of the packed projection: Q is `..q_end`, K `q_end..k_end`, V `k_end..`.
    fn qkv_bounds(&self) -> (usize, usize) {
        let c = &self.config;
        let q_end = c.num_attention_heads * c.head_dim;
        (q_end, q_end + c.num_key_value_heads * c.head_dim)
    }

    /// Per-head RMSNorm of Q and K (Qwen3's q_norm/k_norm), then NeoX-style RoPE, in place.
    fn norm_and_rotate(
        &self,
        qkv: &mut Array2<f32>,
        tokens: &[TokenSlot],
        q_norm: &[f32],
        k_norm: &[f32],
        rope: &(Vec<f32>, f32),
    ) {
        let d = self.config.head_dim;
        let (_, k_end) = self.qkv_bounds();
        let q_heads = self.config.num_attention_heads;
        let eps = self.config.rms_norm_eps as f32;
        qkv.axis_iter_mut(Axis(0)).into_par_iter().zip(tokens).for_each(|(mut row, token)| {
            let row = row.as_slice_mut().expect("rows of a fresh product are contiguous");
            for (head, x) in row[..k_end].chunks_exact_mut(d).enumerate() {
                norm_in_place(x, if head < q_heads { q_norm } else { k_norm }, eps);
                rotate(x, token.pos, rope);
            }
        });
    }

    /// Causal attention of every new token over its sequence's cache, reading rows in place
    /// (INT8 scales folded into scores and probabilities). Each kv head's rows are read once for
    /// all the query heads that share it.
    fn attention<T: StorageDtype>(
        &self,
        layer: usize,
        qkv: &Array2<f32>,
        tokens: &[TokenSlot],
        seqs: &[SeqInput<'_>],
        cache: &KvCache<T>,
    ) -> Result<Array2<f32>, ModelError> {
        let c = &self.config;
        let (d, group) = (c.head_dim, c.group_size());
        let q_width = c.num_attention_heads * d;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = Array2::<f32>::zeros((tokens.len(), q_width));
        out.axis_iter_mut(Axis(0)).into_par_iter().zip(qkv.axis_iter(Axis(0))).zip(tokens).try_for_each(
            |((mut out, row), token)| -> Result<(), ModelError> {
                let out = out.as_slice_mut().expect("fresh arrays are contiguous");
                let table = seqs[token.seq].block_table;
                let context = token.pos + 1;
                let mut scores = vec![0.0f32; group * context];
                for kv_head in 0..c.num_key_value_heads {
                    let heads = kv_head * group..(kv_head + 1) * group;
                    for j in 0..context {
                        let key = cache.key(layer, table, j, kv_head)?;
                        for (g, head) in heads.clone().enumerate() {
                            let q = row.slice(s![head * d..(head + 1) * d]);
                            scores[g * context + j] = key.dot(q.as_slice().expect("contiguous row")) * scale;
                        }
                    }
                    scores.chunks_exact_mut(context).for_each(softmax_in_place);
                    for j in 0..context {
                        let value = cache.value(layer, table, j, kv_head)?;
                        for (g, head) in heads.clone().enumerate() {
                            value.add_scaled(scores[g * context + j], &mut out[head * d..(head + 1) * d]);
                        }
                    }
                }
                Ok(())
            },
        )?;
        Ok(out)
    }
}

/// The batch's tokens in order, each with its sequence, position and cache slot; refuses empty
/// sequences, token ids outside the vocabulary and positions without a slot. Shared by the CPU and
/// GPU forward passes.
pub(crate) fn lay_out(
    seqs: &[SeqInput<'_>],
    vocab: usize,
    block_size: usize,
) -> Result<Vec<TokenSlot>, ModelError> {
    let mut tokens = Vec::new();
    for (index, seq) in seqs.iter().enumerate() {
        if seq.tokens.is_empty() {
            return Err(ModelError::Input(format!("sequence {index} has no tokens to compute")));
        }
        for (offset, &id) in seq.tokens.iter().enumerate() {
            if id as usize >= vocab {
                return Err(ModelError::Input(format!("token id {id} is outside the vocabulary of {vocab}")));
            }
            let pos = seq.start + offset;
            let slot = seq.block_table.slot(pos, block_size).ok_or_else(|| {
                ModelError::Input(format!("sequence {index} has no cache slot for position {pos}"))
            })?;
            tokens.push(TokenSlot { seq: index, id, pos, slot });
        }
    }
    Ok(tokens)
}

/// Index in the flattened batch of the last token of each sequence that asks for logits, once per
/// row of logits it asks for.
pub(crate) fn logit_rows(seqs: &[SeqInput<'_>]) -> Vec<usize> {
    let mut rows = Vec::new();
    let mut end = 0;
    for seq in seqs {
        end += seq.tokens.len();
        rows.extend(std::iter::repeat_n(end - 1, seq.logits));
    }
    rows
}

/// A standard-layout array's elements as one slice.
fn contiguous(a: &Array2<f32>) -> &[f32] {
    a.as_slice().expect("owned arrays from to_owned are in standard layout")
}

/// RMSNorm of every row, as HF: `weight * (x / sqrt(mean(x^2) + eps))`, in f32.
fn rms_norm(x: &Array2<f32>, weight: &[f32], eps: f32) -> Array2<f32> {
    let mut out = x.as_standard_layout().into_owned();
    out.axis_iter_mut(Axis(0)).into_par_iter().for_each(|mut row| {
        norm_in_place(row.as_slice_mut().expect("standard layout"), weight, eps);
    });
    out
}

fn norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inverse = 1.0 / (mean_square + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v = w * (*v * inverse);
    }
}

/// NeoX-style rotary embedding: the first half of the head is rotated with the second, by cos and
/// sin scaled by YaRN's attention factor (1 for plain RoPE).
fn rotate(x: &mut [f32], pos: usize, (inv_freq, scale): &(Vec<f32>, f32)) {
    let half = x.len() / 2;
    for (i, &freq) in inv_freq.iter().enumerate() {
        let (sin, cos) = (pos as f32 * freq).sin_cos();
        let (sin, cos) = (sin * scale, cos * scale);
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos - b * sin;
        x[i + half] = b * cos + a * sin;
    }
}

fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `silu(gate) * up` over the packed `[gate | up]` columns.
fn silu_mul(gate_up: &Array2<f32>) -> Array2<f32> {
    let width = gate_up.ncols() / 2;
    let gate = gate_up.slice(s![.., ..width]);
    let up = gate_up.slice(s![.., width..]);
    ndarray::Zip::from(&gate).and(&up).par_map_collect(|&g, &u| g / (1.0 + (-g).exp()) * u)
}
