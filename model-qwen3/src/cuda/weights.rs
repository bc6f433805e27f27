//! The weights in GPU memory, uploaded from a [`WeightSource`] a chunk at a time: the host holds
//! one chunk (at most [`CHUNK_VALUES`] values, f32 and bf16) whatever the model's size, and a
//! tensor-parallel rank reads only its own slices.

use half::bf16;
use nanovllm_cuda::cudarc::driver::CudaSlice;
use nanovllm_cuda::{Gpu, GpuError};
use rayon::prelude::*;

use super::ops::Ops;
use crate::WeightSource;
use crate::tensor_parallel::{Piece, shard_plan};

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

/// Uploads from a source through one reused pair of host buffers; dummy weights are drawn on the
/// GPU instead, as the host would draw them.
struct Uploader<'a> {
    gpu: &'a Gpu,
    ops: &'a Ops,
    source: &'a dyn WeightSource,
    values: Vec<f32>,
    halves: Vec<bf16>,
}

impl Uploader<'_> {
    /// The pieces one after another (rows of each in turn) as one bf16 matrix on the GPU.
    fn matrix(&mut self, pieces: &[Piece]) -> Result<CudaSlice<bf16>, GpuError> {
        let total = pieces.iter().map(|p| p.rows.len() * p.cols.len()).sum();
        let mut device = self.gpu.stream.alloc_zeros::<bf16>(total)?;
        let mut at = 0;
        for piece in pieces {
            if let Some(matrix) = self.source.as_dummy().and_then(|dummy| dummy.matrix(&piece.name)) {
                let n = piece.rows.len() * piece.cols.len();
                self.ops.draw_dummy(
                    matrix,
                    piece.rows.clone(),
                    piece.cols.clone(),
                    &mut device.slice_mut(at..at + n),
                )?;
                at += n;
                continue;
            }
            let rows_per_chunk = (CHUNK_VALUES / piece.cols.len().max(1)).max(1);
            for first in piece.rows.clone().step_by(rows_per_chunk) {
                let rows = first..(first + rows_per_chunk).min(piece.rows.end);
                self.values.clear();
                self.source.read(&piece.name, rows, piece.cols.clone(), &mut self.values);
                self.halves.clear();
                self.halves.par_extend(self.values.par_iter().map(|&v| bf16::from_f32(v)));
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
    /// Rank `rank` of `world`'s weights from `source` (the whole model when `world` is 1), cut by
    /// [`shard_plan`] as the CPU's shards are.
    pub(super) fn upload(
        gpu: &Gpu,
        ops: &Ops,
        source: &dyn WeightSource,
        rank: usize,
        world: usize,
    ) -> Result<Self, GpuError> {
        let c = source.config();
        let (h, d) = (c.hidden_size, c.head_dim);
        let (plan, vocab_rows) = shard_plan(c, rank, world);
        let mut up = Uploader { gpu, ops, source, values: Vec::new(), halves: Vec::new() };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for (layer, pieces) in plan.iter().enumerate() {
            let name = |part: &str| format!("model.layers.{layer}.{part}");
            layers.push(GpuLayer {
                input_norm: up.vector(&name("input_layernorm.weight"), h)?,
                post_norm: up.vector(&name("post_attention_layernorm.weight"), h)?,
                q_norm: up.vector(&name("self_attn.q_norm.weight"), d)?,
                k_norm: up.vector(&name("self_attn.k_norm.weight"), d)?,
                qkv: up.matrix(&pieces.qkv)?,
                o_proj: up.matrix(&pieces.o_proj)?,
                gate_up: up.matrix(&pieces.gate_up)?,
                down: up.matrix(&pieces.down)?,
            });
        }
        let vocab = |name: &str| [Piece { name: name.to_owned(), rows: vocab_rows.clone(), cols: 0..h }];
        let embed = up.matrix(&vocab("model.embed_tokens.weight"))?;
        let lm_head = match c.tie_word_embeddings {
            true => None,
            false => Some(up.matrix(&vocab("lm_head.weight"))?),
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
