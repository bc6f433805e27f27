//! The Qwen3 model's weights, packed for the forward pass.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::{Array2, Axis, concatenate};

use crate::source::tensor_shapes;
use crate::weights::expected_tensors;
use crate::{Checkpoint, DummyWeights, ModelError, Qwen3Config, WeightSource};

/// One decoder layer, with Q/K/V and gate/up packed into single matrices (one GEMM each).
#[derive(Debug, Clone)]
pub(crate) struct DecoderLayer {
    pub(crate) input_norm: Vec<f32>,
    /// `[q_proj; k_proj; v_proj]`: `[(heads + 2 kv_heads) * head_dim, hidden]`.
    pub(crate) qkv: Array2<f32>,
    pub(crate) q_norm: Vec<f32>,
    pub(crate) k_norm: Vec<f32>,
    pub(crate) o_proj: Array2<f32>,
    pub(crate) post_norm: Vec<f32>,
    /// `[gate_proj; up_proj]`: `[2 * intermediate, hidden]`.
    pub(crate) gate_up: Array2<f32>,
    pub(crate) down: Array2<f32>,
}

/// A dense Qwen3 model in f32, for the CPU forward pass.
///
/// Weights are widened to f32 once at load (bf16 checkpoints double in memory): the GEMM crate
/// computes in f32, and the CPU path is the exact reference the GPU path is checked against.
#[derive(Debug, Clone)]
pub struct Qwen3Model {
    pub(crate) config: Qwen3Config,
    /// `[vocab][hidden]`, or a tensor-parallel shard's rows `vocab_start..`.
    pub(crate) embed_tokens: Array2<f32>,
    /// The first token id of `embed_tokens` (and of `lm_head`): 0 unless this is a shard.
    pub(crate) vocab_start: usize,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: Vec<f32>,
    /// `None` when the head is tied to the embedding.
    pub(crate) lm_head: Option<Array2<f32>>,
}

impl Qwen3Model {
    /// Load `config.json` and the safetensors checkpoint of a model directory.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Ok(Self::from_source(&Checkpoint::open(dir)?))
    }

    /// A model with random weights drawn from `seed` (vLLM's `--load-format dummy`): for
    /// benchmarks and tests, with no checkpoint. Norm weights are 1, matrices N(0, std^2)
    /// ([`DummyWeights`]).
    pub fn random(config: Qwen3Config, seed: u64, std: f32) -> Self {
        Self::from_source(&DummyWeights::new(config, seed, std))
    }

    /// The model of `source`'s weights, widened to f32.
    pub fn from_source(source: &dyn WeightSource) -> Self {
        let config = source.config().clone();
        let tensors = tensor_shapes(&config)
            .into_iter()
            .map(|(name, (rows, cols))| {
                let mut values = Vec::with_capacity(rows * cols);
                source.read(&name, 0..rows, 0..cols, &mut values);
                (name, values)
            })
            .collect();
        Self::from_tensors(config, tensors)
    }

    /// The model's architecture (a shard's: its own heads and intermediate size).
    pub fn config(&self) -> &Qwen3Config {
        &self.config
    }

    /// The token ids whose embedding rows (and LM head rows) this model holds: all of them, or a
    /// tensor-parallel shard's slice.
    pub fn vocab_range(&self) -> std::ops::Range<usize> {
        self.vocab_start..self.vocab_start + self.embed_tokens.nrows()
    }

    /// Whether this is one rank's shard of a tensor-parallel model ([`Qwen3Model::shard`]).
    pub fn is_shard(&self) -> bool {
        self.embed_tokens.nrows() != self.config.vocab_size
    }

    fn from_tensors(config: Qwen3Config, tensors: HashMap<String, Vec<f32>>) -> Self {
        let mut store = Tensors { shapes: expected_tensors(&config), tensors };
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let stack = |store: &mut Tensors, names: &[&str]| {
                    let parts: Vec<Array2<f32>> =
                        names.iter().map(|n| store.matrix(&format!("{p}.{n}"))).collect();
                    let views: Vec<_> = parts.iter().map(|m| m.view()).collect();
                    concatenate(Axis(0), &views).expect("packed matrices share their column count")
                };
                DecoderLayer {
                    input_norm: store.vector(&format!("{p}.input_layernorm.weight")),
                    qkv: stack(
                        &mut store,
                        &["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
                    ),
                    q_norm: store.vector(&format!("{p}.self_attn.q_norm.weight")),
                    k_norm: store.vector(&format!("{p}.self_attn.k_norm.weight")),
                    o_proj: store.matrix(&format!("{p}.self_attn.o_proj.weight")),
                    post_norm: store.vector(&format!("{p}.post_attention_layernorm.weight")),
                    gate_up: stack(&mut store, &["mlp.gate_proj.weight", "mlp.up_proj.weight"]),
                    down: store.matrix(&format!("{p}.mlp.down_proj.weight")),
                }
            })
            .collect();
        Qwen3Model {
            embed_tokens: store.matrix("model.embed_tokens.weight"),
            vocab_start: 0,
            norm: store.vector("model.norm.weight"),
            lm_head: (!config.tie_word_embeddings).then(|| store.matrix("lm_head.weight")),
            layers,
            config,
        }
    }
}

/// Checked tensors by name, taken out one at a time as the model is assembled.
struct Tensors {
    shapes: BTreeMap<String, Vec<usize>>,
    tensors: HashMap<String, Vec<f32>>,
}

impl Tensors {
    fn vector(&mut self, name: &str) -> Vec<f32> {
        self.tensors.remove(name).expect("every tensor of the config was read")
    }

    fn matrix(&mut self, name: &str) -> Array2<f32> {
        let (rows, cols) = (self.shapes[name][0], self.shapes[name][1]);
        let values = self.vector(name);
        Array2::from_shape_vec((rows, cols), values).expect("every tensor was read whole")
    }
}
