//! Finding a model: a local directory, or a Hugging Face model id fetched into the HF cache.

use std::path::{Path, PathBuf};

use crate::EngineError;

/// Files fetched for a model id, besides the weights; the optional ones may be absent.
const REQUIRED: [&str; 1] = ["config.json"];
const OPTIONAL: [&str; 3] = ["generation_config.json", "tokenizer.json", "tokenizer_config.json"];

/// The local directory of `model`: the path itself if it exists, otherwise a Hugging Face model id
/// (`org/name`) resolved through the HF cache (`HF_HOME`), downloading what is missing unless
/// `HF_HUB_OFFLINE` is set.
pub fn resolve_model(model: &str) -> Result<PathBuf, EngineError> {
    let path = Path::new(model);
    let looks_like_id = model.split('/').count() == 2 && !model.starts_with('.') && !model.starts_with('/');
    if path.exists() || !looks_like_id {
        return Ok(path.to_owned());
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    let hub_error = |problem: String| EngineError::Hub { id: model.to_owned(), problem };
    let fetch = |file: &str| -> Result<Option<PathBuf>, EngineError> {
        if offline {
            return Ok(hf_hub::Cache::from_env().model(model.to_owned()).get(file));
        }
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(false)
            .build()
            .map_err(|e| hub_error(format!("cannot reach the Hugging Face hub ({e})")))?;
        match api.model(model.to_owned()).get(file) {
            Ok(path) => Ok(Some(path)),
            Err(hf_hub::api::sync::ApiError::RequestError(e)) if e.to_string().contains("404") => Ok(None),
            Err(e) => Err(hub_error(format!(
                "could not download {file} ({e}); set HF_HUB_OFFLINE=1 to use the local cache only"
            ))),
        }
    };
    let config = match fetch(REQUIRED[0])? {
        Some(config) => config,
        None if offline => {
            return Err(hub_error(
                "not a local directory, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)".into(),
            ));
        }
        None => return Err(hub_error("not a local directory, and the hub has no config.json for it".into())),
    };
    for file in OPTIONAL {
        fetch(file)?;
    }
    match fetch("model.safetensors.index.json")? {
        Some(index) => {
            let index: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&index).unwrap_or_default())
                    .map_err(|e| hub_error(format!("model.safetensors.index.json: {e}")))?;
            let mut shards: Vec<&str> = index["weight_map"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, f)| f.as_str())
                .collect();
            shards.sort();
            shards.dedup();
            for shard in shards {
                fetch(shard)?.ok_or_else(|| hub_error(format!("shard {shard} is not available")))?;
            }
        }
        None => {
            fetch("model.safetensors")?.ok_or_else(|| hub_error("no model.safetensors available".into()))?;
        }
    }
    Ok(config.parent().expect("a cached file has a folder").to_owned())
}
