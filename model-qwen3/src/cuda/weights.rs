//! The weights in GPU memory, uploaded from a [`WeightSource`] a chunk at a time: the host holds
//! one chunk (at most [`CHUNK_VALUES`] values, f32 and bf16) whatever the model's size, and a
//! tensor-parallel rank reads only its own slices.

use std::ops::Range;

use half::bf16;
use nanovllm_cuda::cudarc::driver::CudaSlice;
use nanovllm_cuda::{Gpu, GpuError};

use crate::WeightSource;

/// Values read and uploaded at a time: 16 Mi (64 MiB of f32 on the host, 32 MiB of bf16).
const CHUNK_VALUES: usize = 16 << 20;

pub(super) struct GpuLayer {
    pub(super) input_norm: CudaSlice<f32>,
    pub(super) post_norm: CudaSlice<f32>,
    pub(super) q_norm: CudaSlice<f32>,
    pub(super) k_norm: CudaSlice<f32>,
    /// `[q_proj; k_proj; v_proj]`, this rank's heads.
    pub(super) qkv: CudaSlice<bf16>,
    pub(super) o_proj: CudaSlice<bf16>,
    /// `[gate_proj; up_proj]`, this rank's slice of the intermediate size.
    pub(super) gate_up: CudaSlice<bf16>,
    pub(super) down: CudaSlice<bf16>,
}

/// The weights in GPU memory: bf16 matrices (Q/K/V and gate/up packed), f32 norms.
pub(super) struct GpuWeights {
    pub(super) embed: CudaSlice<bf16>,
    pub(super) lm_head: Option<CudaSlice<bf16>>,
    pub(super) norm: CudaSlice<f32>,
    pub(super) inv_freq: CudaSlice<f32>,
    /// YaRN's factor on cos and sin (1 for plain RoPE).
    pub(super) rope_scale: f32,
    pub(super) layers: Vec<GpuLayer>,
}

/// A block of one tensor: its rows and columns.
struct Piece<'a> {
    name: &'a str,
    rows: Range<usize>,
    cols: Range<usize>,
}

/// Uploads from a source through one reused pair of host buffers.
struct Uploader<'a> {
    gpu: &'a Gpu,
    source: &'a dyn WeightSource,
    values: Vec<f32>,
    halves: Vec<bf16>,
}

impl Uploader<'_> {
    /// The pieces one after another (rows of each in turn) as one bf16 matrix on the GPU.
    fn matrix(&mut self, pieces: &[Piece<'_>]) -> Result<CudaSlice<bf16>, GpuError> {
        let total = pieces.iter().map(|p| p.rows.len() * p.cols.len()).sum();
        let mut device = self.gpu.stream.alloc_zeros::<bf16>(total)?;
        let mut at = 0;
        for piece in pieces {
            let rows_per_chunk = (CHUNK_VALUES / piece.cols.len().max(1)).max(1);
            for first in piece.rows.clone().step_by(rows_per_chunk) {
                let rows = first..(first + rows_per_chunk).min(piece.rows.end);
                self.values.clear();
                self.source.read(piece.name, rows, piece.cols.clone(), &mut self.values);
                self.halves.clear();
                self.halves.extend(self.values.iter().map(|&v| bf16::from_f32(v)));
                let n = self.halves.len();
                // From pageable memory, the copy has taken the buffer when this returns.
                self.gpu.stream.memcpy_htod(&self.halves, &mut device.slice_mut(at..at + n))?;
                at += n;
            }
        }
        Ok(device)
    }

    /// A whole 1-D tensor (a norm), in f32.
    fn vector(&mut self, name: &str, len: usize) -> Result<CudaSlice<f32>, GpuError> {
        self.values.clear();
        self.source.read(name, 0..1, 0..len, &mut self.values);
        Ok(self.gpu.stream.clone_htod(&self.values)?)
    }
}

impl GpuWeights {
    /// Rank `rank` of `world`'s weights from `source` (the whole model when `world` is 1).
    pub(super) fn upload(
        gpu: &Gpu,
        source: &dyn WeightSource,
        rank: usize,
        world: usize,
    ) -> Result<Self, GpuError> {
        let c = source.config();
        // This rank's part of `total` rows or columns, as `Qwen3Model::shard` cuts them: its query
        // and kv heads, its slices of the intermediate size and of the vocabulary.
        let shard = |total: usize| total / world * rank..total / world * (rank + 1);
        let (h, d, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let q_rows = shard(c.num_attention_heads * d);
        let kv_rows = shard(c.num_key_value_heads * d);
        let inter_rows = shard(inter);
        let mut up = Uploader { gpu, source, values: Vec::new(), halves: Vec::new() };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for layer in 0..c.num_hidden_layers {
            let name = |part: &str| format!("model.layers.{layer}.{part}");
            let (q, k, v, o) = (
                name("self_attn.q_proj.weight"),
                name("self_attn.k_proj.weight"),
                name("self_attn.v_proj.weight"),
                name("self_attn.o_proj.weight"),
            );
            let (gate, up_proj, down) =
                (name("mlp.gate_proj.weight"), name("mlp.up_proj.weight"), name("mlp.down_proj.weight"));
            let piece = |name, rows, cols| Piece { name, rows, cols };
            layers.push(GpuLayer {
                input_norm: up.vector(&name("input_layernorm.weight"), h)?,
                post_norm: up.vector(&name("post_attention_layernorm.weight"), h)?,
                q_norm: up.vector(&name("self_attn.q_norm.weight"), d)?,
                k_norm: up.vector(&name("self_attn.k_norm.weight"), d)?,
                qkv: up.matrix(&[
                    piece(&q, q_rows.clone(), 0..h),
                    piece(&k, kv_rows.clone(), 0..h),
                    piece(&v, kv_rows.clone(), 0..h),
                ])?,
                o_proj: up.matrix(&[piece(&o, 0..h, q_rows.clone())])?,
                gate_up: up.matrix(&[
                    piece(&gate, inter_rows.clone(), 0..h),
                    piece(&up_proj, inter_rows.clone(), 0..h),
                ])?,
                down: up.matrix(&[piece(&down, 0..h, inter_rows.clone())])?,
            });
        }
        let vocab_rows = shard(c.vocab_size);
        let embed =
            up.matrix(&[Piece { name: "model.embed_tokens.weight", rows: vocab_rows.clone(), cols: 0..h }])?;
        let lm_head = match c.tie_word_embeddings {
            true => None,
            false => Some(up.matrix(&[Piece { name: "lm_head.weight", rows: vocab_rows, cols: 0..h }])?),
        };
        let norm = up.vector("model.norm.weight", h)?;
        let (inv_freq, rope_scale) = c.rope();
        Ok(GpuWeights {
            embed,
            lm_head,
            norm,
            inv_freq: gpu.stream.clone_htod(&inv_freq)?,
            rope_scale,
            layers,
        })
    }
}
