//! Reading a safetensors checkpoint (one file or shards) and checking it against the config.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::config::read_json;
use crate::{ModelError, Qwen3Config, WeightSource};

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

/// A safetensors checkpoint (one file or shards), memory-mapped and checked against its config:
/// every name, dtype and shape. Tensors are read from the maps a block at a time
/// ([`WeightSource`]), so nothing but the block asked for is copied to anonymous memory.
#[derive(Debug)]
pub struct Checkpoint {
    config: Qwen3Config,
    maps: Vec<memmap2::Mmap>,
    tensors: HashMap<String, StoredTensor>,
}

/// Where one tensor's bytes are: its file, dtype, byte offset in the file and shape.
#[derive(Debug, Clone)]
struct StoredTensor {
    file: usize,
    dtype: Dtype,
    offset: usize,
    shape: Vec<usize>,
}

impl Checkpoint {
    /// Read the `config.json` of the model directory `dir`, map its checkpoint and check each
    /// tensor's name, dtype and shape against the config.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        check_model_dir(dir)?;
        let config = Qwen3Config::from_file(&dir.join("config.json"))?;
        let expected = expected_tensors(&config);
        let mut maps = Vec::new();
        let mut tensors = HashMap::new();
        for path in checkpoint_files(dir)? {
            let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            let mmap = map_file(&file).map_err(|e| ModelError::io(&path, e))?;
            let parsed = SafeTensors::deserialize(&mmap)
                .map_err(|e| ModelError::checkpoint(&path, format!("not a valid safetensors file ({e})")))?;
            let mut names = parsed.names();
            names.sort();
            for name in names {
                let view =
                    parsed.tensor(name).map_err(|e| ModelError::checkpoint(&path, format!("{name}: {e}")))?;
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
                if element_size(view.dtype()).is_none() {
                    return Err(ModelError::checkpoint(
                        &path,
                        format!("{name} has dtype {:?}; expected BF16, F16 or F32", view.dtype()),
                    ));
                }
                let offset = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
                let stored =
                    StoredTensor { file: maps.len(), dtype: view.dtype(), offset, shape: shape.clone() };
                if tensors.insert(name.to_owned(), stored).is_some() {
                    return Err(ModelError::checkpoint(
                        &path,
                        format!("tensor {name} appears in more than one file"),
                    ));
                }
            }
            maps.push(mmap);
        }
        if let Some(missing) = expected.keys().find(|name| !tensors.contains_key(*name)) {
            return Err(ModelError::checkpoint(dir, format!("checkpoint has no tensor {missing}")));
        }
        Ok(Checkpoint { config, maps, tensors })
    }
}

impl WeightSource for Checkpoint {
    fn config(&self) -> &Qwen3Config {
        &self.config
    }

    fn read(&self, name: &str, rows: Range<usize>, cols: Range<usize>, out: &mut Vec<f32>) {
        let stored = &self.tensors[name];
        let size = element_size(stored.dtype).expect("dtypes are checked when the checkpoint opens");
        let width = stored.shape.get(1).copied().unwrap_or(stored.shape[0]);
        let bytes = &self.maps[stored.file][stored.offset..];
        let start = out.len();
        out.resize(start + rows.len() * cols.len(), 0.0);
        out[start..].par_chunks_mut(cols.len()).zip(rows).for_each(|(row_out, row)| {
            let at = (row * width + cols.start) * size;
            widen(stored.dtype, &bytes[at..at + cols.len() * size], row_out);
        });
    }
}

fn element_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::BF16 | Dtype::F16 => Some(2),
        Dtype::F32 => Some(4),
        _ => None,
    }
}

/// Memory-map a checkpoint file.
#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and lives as long as its `Checkpoint`. As with every
    // memory-mapped loader (candle, safetensors' own), a file truncated by another process while
    // it is mapped is outside what this can defend against.
    unsafe { memmap2::Mmap::map(file) }
}

/// Little-endian bf16, f16 or f32 bytes into f32 values.
fn widen(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        Dtype::BF16 => {
            for (v, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *v = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F16 => {
            for (v, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *v = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            for (v, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

fn check_model_dir(dir: &Path) -> Result<(), ModelError> {
    let problem = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no such directory".to_owned(),
        Err(e) => format!("cannot be read ({e})"),
        Ok(meta) if !meta.is_dir() => "is a file, expected a model directory".to_owned(),
        Ok(_) => match std::fs::read_dir(dir) {
            Err(e) => format!("cannot be read ({e})"),
            Ok(_) if !dir.join("config.json").is_file() => "not a model directory: no config.json".to_owned(),
            Ok(_) => return Ok(()),
        },
    };
    Err(ModelError::ModelDir { path: dir.to_owned(), problem })
}
