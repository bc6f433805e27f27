//! Where a model's weights come from, read a block of rows and columns at a time: a checkpoint's
//! memory maps ([`crate::Checkpoint`]), random weights drawn from a seed ([`DummyWeights`]), or a
//! model already in host memory. The CPU model is assembled from a source; the GPU model uploads
//! from one in bounded chunks, so that no whole copy of the weights is ever on the host.

use std::collections::BTreeMap;
use std::ops::Range;

use rayon::prelude::*;

use crate::weights::expected_tensors;
use crate::{Qwen3Config, Qwen3Model};

/// A model's weights by their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`...).
pub trait WeightSource: Send + Sync {
    /// The architecture (whole, not a tensor-parallel shard).
    fn config(&self) -> &Qwen3Config;

    /// Append rows `rows` and columns `cols` of tensor `name`, row-major, as f32 to `out`. A 1-D
    /// tensor (a norm) is one row. `name` is one of the config's tensors and the ranges lie inside
    /// its shape; anything else is a bug of the caller, and panics.
    fn read(&self, name: &str, rows: Range<usize>, cols: Range<usize>, out: &mut Vec<f32>);
}

/// Every tensor of `config`'s model with its shape as (rows, columns): a 1-D tensor is one row.
pub fn tensor_shapes(config: &Qwen3Config) -> BTreeMap<String, (usize, usize)> {
    expected_tensors(config)
        .into_iter()
        .map(|(name, shape)| {
            let shape = if shape.len() == 1 { (1, shape[0]) } else { (shape[0], shape[1]) };
            (name, shape)
        })
        .collect()
}

/// Random weights drawn from a seed (vLLM's `--load-format dummy`): norms 1, matrices
/// N(0, std^2). Each value is a function of the seed, its tensor and its place in it (a counter
/// hashed, then Box-Muller), so any block reads the same values whatever was read before, on any
/// thread: the CPU and the GPU models of one seed are the same model.
#[derive(Debug, Clone)]
pub struct DummyWeights {
    config: Qwen3Config,
    seed: u64,
    std: f32,
    /// Each tensor's number (mixed into its values' counters) and width; `None` for a norm.
    tensors: BTreeMap<String, (u64, Option<usize>)>,
}

impl DummyWeights {
    /// The weights of `config`'s model for `seed`, matrices of standard deviation `std`.
    pub fn new(config: Qwen3Config, seed: u64, std: f32) -> Self {
        let tensors = expected_tensors(&config)
            .into_iter()
            .enumerate()
            .map(|(index, (name, shape))| {
                let width = (shape.len() == 2).then(|| shape[1]);
                (name, (index as u64, width))
            })
            .collect();
        DummyWeights { config, seed, std, tensors }
    }

    /// The two values at places `2 * pair` and `2 * pair + 1` of the tensor whose key is `key`:
    /// one hash gives two uniforms, and Box-Muller two normals.
    fn pair(&self, key: u64, pair: u64) -> [f32; 2] {
        let bits = mix(self.seed ^ key ^ pair);
        let u1 = ((bits >> 40) as f32 + 1.0) / (1u64 << 24) as f32;
        let u2 = (bits & 0xFF_FFFF) as f32 / (1u64 << 24) as f32;
        let radius = self.std * (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f32::consts::TAU * u2).sin_cos();
        [radius * cos, radius * sin]
    }
}

/// SplitMix64's finalizer: a bijection of u64 whose outputs look independent for nearby inputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl WeightSource for DummyWeights {
    fn config(&self) -> &Qwen3Config {
        &self.config
    }

    fn read(&self, name: &str, rows: Range<usize>, cols: Range<usize>, out: &mut Vec<f32>) {
        let (tensor, width) = self.tensors[name];
        let start = out.len();
        out.resize(start + rows.len() * cols.len(), 1.0);
        let Some(width) = width else { return };
        let key = mix(tensor.wrapping_add(0x9E37_79B9_7F4A_7C15));
        out[start..].par_chunks_mut(cols.len()).zip(rows).for_each(|(row_out, row)| {
            let mut drawn = (u64::MAX, [0.0; 2]);
            for (v, col) in row_out.iter_mut().zip(cols.clone()) {
                let index = (row * width + col) as u64;
                if drawn.0 != index / 2 {
                    drawn = (index / 2, self.pair(key, index / 2));
                }
                *v = drawn.1[(index % 2) as usize];
            }
        });
    }
}

/// A model in host memory is a source too (its packed matrices read back by their parts' names):
/// for tests that compare the GPU with the CPU reference of the very same weights.
impl WeightSource for Qwen3Model {
    fn config(&self) -> &Qwen3Config {
        &self.config
    }

    fn read(&self, name: &str, rows: Range<usize>, cols: Range<usize>, out: &mut Vec<f32>) {
        assert!(!self.is_shard(), "a tensor-parallel shard is not a whole model's source");
        let c = &self.config;
        let (q, kv, inter) =
            (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.intermediate_size);
        let (matrix, row_offset) = match name {
            "model.embed_tokens.weight" => (&self.embed_tokens, 0),
            "lm_head.weight" => (self.lm_head.as_ref().expect("an untied model has a head"), 0),
            "model.norm.weight" => return out.extend_from_slice(&self.norm[cols]),
            _ => {
                let (layer, part) = name
                    .strip_prefix("model.layers.")
                    .and_then(|rest| rest.split_once('.'))
                    .expect("a layer tensor's name");
                let l = &self.layers[layer.parse::<usize>().expect("a layer number")];
                match part {
                    "input_layernorm.weight" => return out.extend_from_slice(&l.input_norm[cols]),
                    "post_attention_layernorm.weight" => return out.extend_from_slice(&l.post_norm[cols]),
                    "self_attn.q_norm.weight" => return out.extend_from_slice(&l.q_norm[cols]),
                    "self_attn.k_norm.weight" => return out.extend_from_slice(&l.k_norm[cols]),
                    "self_attn.q_proj.weight" => (&l.qkv, 0),
                    "self_attn.k_proj.weight" => (&l.qkv, q),
                    "self_attn.v_proj.weight" => (&l.qkv, q + kv),
                    "self_attn.o_proj.weight" => (&l.o_proj, 0),
                    "mlp.gate_proj.weight" => (&l.gate_up, 0),
                    "mlp.up_proj.weight" => (&l.gate_up, inter),
                    "mlp.down_proj.weight" => (&l.down, 0),
                    other => panic!("no tensor {other} in a Qwen3 layer"),
                }
            }
        };
        for row in rows {
            out.extend(matrix.row(row_offset + row).iter().skip(cols.start).take(cols.len()));
        }
    }
}
