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

    /// The dummy weights this source draws, if it does: a device can then draw them in place, bit
    /// for bit, rather than have them read on the host and copied.
    fn as_dummy(&self) -> Option<&DummyWeights> {
        None
    }
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
    /// How each tensor is drawn; `None` for a norm, whose values are 1.
    tensors: BTreeMap<String, Option<DummyMatrix>>,
}

impl DummyWeights {
    /// The weights of `config`'s model for `seed`, matrices of standard deviation `std`.
    pub fn new(config: Qwen3Config, seed: u64, std: f32) -> Self {
        let tensors = expected_tensors(&config)
            .into_iter()
            .enumerate()
            .map(|(index, (name, shape))| {
                // The tensor's number, hashed, keys its values' counters.
                let stream = seed ^ mix((index as u64).wrapping_add(0x9E37_79B9_7F4A_7C15));
                let matrix = (shape.len() == 2).then(|| DummyMatrix { stream, width: shape[1], std });
                (name, matrix)
            })
            .collect();
        DummyWeights { config, tensors }
    }

    /// How matrix `name` is drawn (`None` for a norm, whose values are 1): the value at `index`
    /// (row * width + column) is `normal_pair(mix(stream ^ (index / 2)), std)[index % 2]`.
    pub fn matrix(&self, name: &str) -> Option<DummyMatrix> {
        self.tensors[name]
    }
}

/// How one dummy matrix is drawn ([`DummyWeights::matrix`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DummyMatrix {
    /// The seed mixed with the tensor's key; each pair of values hashes it with the pair's index.
    pub stream: u64,
    /// Columns per row.
    pub width: usize,
    /// The normal distribution's standard deviation.
    pub std: f32,
}

/// SplitMix64's finalizer: a bijection of u64 whose outputs look independent for nearby inputs.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Two N(0, std^2) values from 64 random bits, by Box-Muller: 24 bits each for the radius's
/// uniform in (0, 1] and the angle's in [0, 1). The logarithm, sine and cosine are short
/// polynomials of correctly rounded operations (fused multiply-adds included) rather than the
/// platform's libm, whose last bits differ from CUDA's, so that the GPU's `draw_dummy` kernel
/// (model.cu), the same operations in the same order, draws the same bits. The polynomials are
/// accurate to a few units in the last place of an f32.
fn normal_pair(bits: u64, std: f32) -> [f32; 2] {
    let u1 = ((bits >> 40) as f32 + 1.0) / (1u64 << 24) as f32;
    let radius = std * (-2.0 * ln(u1)).sqrt();
    let (sin, cos) = sin_cos_turn((bits & 0xFF_FFFF) as u32);
    [radius * cos, radius * sin]
}

/// ln(x) for a normal, positive `x`: x = m * 2^e with m in [sqrt(1/2), sqrt(2)), and
/// ln(m) = 2 atanh(s) for s = (m - 1) / (m + 1), |s| < 0.172, by its series to s^9.
fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000);
    let mut e = ((bits >> 23) & 0xFF) as i32 - 127;
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let z = s * s;
    let mut p = z.mul_add(1.0 / 9.0, 1.0 / 7.0);
    p = z.mul_add(p, 1.0 / 5.0);
    p = z.mul_add(p, 1.0 / 3.0);
    p = z.mul_add(p, 1.0);
    (e as f32).mul_add(std::f32::consts::LN_2, (s + s) * p)
}

/// sin and cos of 2 pi * `turn` / 2^24 (`turn` < 2^24): the top two bits pick the quadrant, the
/// rest an angle t in [0, pi/2), whose sine and cosine are their Taylor series in t^2, to t^13 and
/// t^14.
fn sin_cos_turn(turn: u32) -> (f32, f32) {
    let t = (turn & 0x3F_FFFF) as f32 / (1u32 << 22) as f32 * std::f32::consts::FRAC_PI_2;
    let z = t * t;
    let mut s = z.mul_add(1.0 / 6_227_020_800.0, -1.0 / 39_916_800.0);
    s = z.mul_add(s, 1.0 / 362_880.0);
    s = z.mul_add(s, -1.0 / 5_040.0);
    s = z.mul_add(s, 1.0 / 120.0);
    s = z.mul_add(s, -1.0 / 6.0);
    s = z.mul_add(s, 1.0);
    let sin = t * s;
    let mut c = z.mul_add(-1.0 / 87_178_291_200.0, 1.0 / 479_001_600.0);
    c = z.mul_add(c, -1.0 / 3_628_800.0);
    c = z.mul_add(c, 1.0 / 40_320.0);
    c = z.mul_add(c, -1.0 / 720.0);
    c = z.mul_add(c, 1.0 / 24.0);
    c = z.mul_add(c, -0.5);
    let cos = z.mul_add(c, 1.0);
    match turn >> 22 {
        0 => (sin, cos),
        1 => (cos, -sin),
        2 => (-sin, -cos),
        _ => (-cos, sin),
    }
}

impl WeightSource for DummyWeights {
    fn config(&self) -> &Qwen3Config {
        &self.config
    }

    fn read(&self, name: &str, rows: Range<usize>, cols: Range<usize>, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + rows.len() * cols.len(), 1.0);
        let Some(matrix) = self.matrix(name) else { return };
        out[start..].par_chunks_mut(cols.len()).zip(rows).for_each(|(row_out, row)| {
            let mut drawn = (u64::MAX, [0.0; 2]);
            for (v, col) in row_out.iter_mut().zip(cols.clone()) {
                let index = (row * matrix.width + col) as u64;
                if drawn.0 != index / 2 {
                    drawn = (index / 2, normal_pair(mix(matrix.stream ^ (index / 2)), matrix.std));
                }
                *v = drawn.1[(index % 2) as usize];
            }
        });
    }

    fn as_dummy(&self) -> Option<&DummyWeights> {
        Some(self)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_polynomial_logarithm_is_within_a_few_ulps_over_every_radius_uniform() {
        // Relative to the result, except near u = 1 where ln(u) tends to 0: there, relative to
        // 2^-24, the uniform's own step.
        let worst = (0..1u32 << 24)
            .step_by(97)
            .chain([0, 1, (1 << 24) - 1])
            .map(|k| (k as f32 + 1.0) / (1u32 << 24) as f32)
            .map(|u| {
                let exact = f64::from(u).ln();
                let ulp = f64::from(f32::EPSILON) * exact.abs().max(2f64.powi(-24));
                (f64::from(ln(u)) - exact).abs() / ulp
            })
            .fold(0.0, f64::max);
        assert!(worst < 2.5, "worst {worst} ulps");
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn the_polynomial_sine_and_cosine_are_within_2e_7_over_every_turn() {
        let worst = (0..1u32 << 24)
            .step_by(89)
            .chain([0, 1 << 22, 1 << 23, 3 << 22, (1 << 24) - 1])
            .map(|turn| {
                let angle = std::f64::consts::TAU * f64::from(turn) / f64::from(1u32 << 24);
                let (sin, cos) = sin_cos_turn(turn);
                (f64::from(sin) - angle.sin()).abs().max((f64::from(cos) - angle.cos()).abs())
            })
            .fold(0.0, f64::max);
        assert!(worst < 2e-7, "worst absolute error {worst}");
    }
}
