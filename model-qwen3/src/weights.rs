//! Reading a safetensors checkpoint (one file or shards) and checking it against the config.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::config::read_json;
use crate::{ModelError, Qwen3Config};

/// Every tensor a Qwen3 checkpoint must hold, with its shape (rows, columns; norms have 1 row).
pub(crate) fn expected_tensors(config: &Qwen3Config) -> BTreeMap<String, Vec<usize>> {
    let (h, d, i) = (config.hidden_size, config.head_dim, config.intermediate_size);
    let (heads, kv) = (config.num_attention_heads, config.num_key_value_heads);
    let mut tensors = BTreeMap::new();
    tensors.insert("model.embed_tokens.weight".to_owned(), vec![config.vocab_size, h]);
    tensors.insert("model.norm.weight".to_owned(), vec![h]);
    if !config.tie_word_embeddings {
        tensors.insert("lm_head.weight".to_owned(), vec![config.vocab_size, h]);
    }
    for layer in 0..config.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![heads * d, h]),
            ("self_attn.k_proj.weight", vec![kv * d, h]),
            ("self_attn.v_proj.weight", vec![kv * d, h]),
            ("self_attn.o_proj.weight", vec![h, heads * d]),
            ("self_attn.q_norm.weight", vec![d]),
            ("self_attn.k_norm.weight", vec![d]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            tensors.insert(format!("{p}.{name}"), shape);
        }
    }
    tensors
}

/// `model.safetensors.index.json`: which shard holds each tensor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SafetensorsIndex {
    /// Tensor name to shard file name.
    pub weight_map: BTreeMap<String, String>,
}

impl SafetensorsIndex {
    /// The index's file name in a model directory.
    pub const FILE: &str = "model.safetensors.index.json";

    /// Read and parse an index file.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        read_json(path)
    }

    /// The shard files, each once, sorted.
    pub fn shards(&self) -> Vec<String> {
        let shards: BTreeSet<&String> = self.weight_map.values().collect();
        shards.into_iter().cloned().collect()
    }
}

/// The checkpoint's files: the shards named by `model.safetensors.index.json`, or `model.safetensors`.
fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index_path = dir.join(SafetensorsIndex::FILE);
    if !index_path.exists() {
        let single = dir.join("model.safetensors");
        if !single.is_file() {
            return Err(ModelError::checkpoint(
                single,
                "missing: no model.safetensors and no model.safetensors.index.json",
            ));
        }
        return Ok(vec![single]);
    }
    SafetensorsIndex::read(&index_path)?
        .shards()
        .into_iter()
        .map(|file| {
            let path = dir.join(&file);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ModelError::checkpoint(
                    &index_path,
                    format!("names shard {file:?}, which is not in {}", dir.display()),
                ))
            }
        })
        .collect()
}

/// Load every tensor of the checkpoint in `dir` as f32, after checking each name, dtype and shape
/// against `config`. Tensors are widened as they are read from the memory-mapped files.
pub(crate) fn load_tensors(
    dir: &Path,
    config: &Qwen3Config,
) -> Result<HashMap<String, Vec<f32>>, ModelError> {
    let expected = expected_tensors(config);
    let mut loaded = HashMap::new();
    for path in checkpoint_files(dir)? {
        let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        let mmap = map_file(&file).map_err(|e| ModelError::io(&path, e))?;
        let tensors = SafeTensors::deserialize(&mmap)
            .map_err(|e| ModelError::checkpoint(&path, format!("not a valid safetensors file ({e})")))?;
        let mut names = tensors.names();
        names.sort();
        for name in names {
            let view =
                tensors.tensor(name).map_err(|e| ModelError::checkpoint(&path, format!("{name}: {e}")))?;
            let Some(shape) = expected.get(name) else {
                if name == "lm_head.weight" && config.tie_word_embeddings {
                    continue; // some tied checkpoints store the head anyway; the embedding is used
                }
                return Err(ModelError::checkpoint(
                    &path,
                    format!("unexpected tensor {name} (not part of a Qwen3 model of this config)"),
                ));
            };
            if view.shape() != shape.as_slice() {
                return Err(ModelError::checkpoint(
                    &path,
                    format!("{name} has shape {:?}, config.json implies {:?}", view.shape(), shape),
                ));
            }
            let values = widen(view.dtype(), view.data()).ok_or_else(|| {
                ModelError::checkpoint(
                    &path,
                    format!("{name} has dtype {:?}; expected BF16, F16 or F32", view.dtype()),
                )
            })?;
            if loaded.insert(name.to_owned(), values).is_some() {
                return Err(ModelError::checkpoint(
                    &path,
                    format!("tensor {name} appears in more than one file"),
                ));
            }
        }
    }
    if let Some(missing) = expected.keys().find(|name| !loaded.contains_key(*name)) {
        return Err(ModelError::checkpoint(dir, format!("checkpoint has no tensor {missing}")));
    }
    Ok(loaded)
}

/// Memory-map a checkpoint file.
#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and dropped before load_tensors returns. As with every
    // memory-mapped loader (candle, safetensors' own), a file truncated by another process while
    // it is mapped is outside what this can defend against.
    unsafe { memmap2::Mmap::map(file) }
}

/// Little-endian bf16, f16 or f32 bytes as f32 values.
fn widen(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let values = match dtype {
        Dtype::BF16 => {
            bytes.par_chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        Dtype::F16 => bytes.par_chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F32 => {
            bytes.par_chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        _ => return None,
    };
    Some(values)
}
