//! Finding a model: a local directory, or a Hugging Face model id fetched into the HF cache.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use nanovllm_qwen3::SafetensorsIndex;

use crate::EngineError;

/// Files fetched for a model id besides the weights; these may be absent.
const OPTIONAL: [&str; 3] = ["generation_config.json", "tokenizer.json", "tokenizer_config.json"];

/// How to reach the Hugging Face hub: as `huggingface_hub` is configured, from the environment
/// (`HF_HOME` for the cache, `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_TOKEN`).
#[derive(Debug, Clone, Default)]
pub struct Hub {
    /// Token for gated and private models (`HF_TOKEN`, else the token file hf-hub reads).
    pub token: Option<String>,
    /// Use the local cache only (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Show a progress bar per downloaded file (on a terminal).
    pub progress: bool,
}

impl Hub {
    /// The settings the environment gives, without progress bars.
    pub fn from_env() -> Self {
        let set = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        Hub {
            token: set("HF_TOKEN"),
            offline: set("HF_HUB_OFFLINE").is_some_and(|v| v != "0"),
            progress: false,
        }
    }

    /// The local directory of `model`: the path itself if it exists, otherwise a Hugging Face model
    /// id (`org/name`) resolved through the HF cache, downloading what is missing unless offline.
    pub fn resolve(&self, model: &str) -> Result<PathBuf, EngineError> {
        let path = Path::new(model);
        let looks_like_id =
            model.split('/').count() == 2 && !model.starts_with('.') && !model.starts_with('/');
        if path.exists() || !looks_like_id {
            return Ok(path.to_owned());
        }
        let hub_error = |problem: String| EngineError::Hub { id: model.to_owned(), problem };
        let api = if self.offline {
            None
        } else {
            let api = ApiBuilder::from_env()
                .with_progress(self.progress)
                .with_token(self.token.clone().or_else(|| hf_hub::Cache::from_env().token()))
                .build()
                .map_err(|e| hub_error(format!("cannot set up the Hugging Face hub client ({e})")))?;
            Some(api.model(model.to_owned()))
        };
        let fetch = |file: &str| -> Result<Option<PathBuf>, EngineError> {
            let Some(repo) = &api else {
                return Ok(hf_hub::Cache::from_env().model(model.to_owned()).get(file));
            };
            match repo.get(file) {
                Ok(path) => Ok(Some(path)),
                Err(ApiError::RequestError(e)) => match *e {
                    ureq::Error::Status(404, _) => Ok(None),
                    ureq::Error::Status(401 | 403, _) => Err(hub_error(format!(
                        "{file}: access denied; a gated or private model needs a Hugging Face token (HF_TOKEN)"
                    ))),
                    ureq::Error::Status(code, _) => {
                        Err(hub_error(format!("{file}: the hub answered {code}")))
                    }
                    ureq::Error::Transport(e) => Err(hub_error(format!(
                        "cannot reach the Hugging Face hub ({e}); set HF_HUB_OFFLINE=1 to use the local cache only"
                    ))),
                },
                Err(e) => Err(hub_error(format!("could not download {file} ({e})"))),
            }
        };
        let config = match fetch("config.json")? {
            Some(config) => config,
            None if self.offline => {
                return Err(hub_error(
                    "not a local directory, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)".into(),
                ));
            }
            None => {
                return Err(hub_error("not a local directory, and the hub has no config.json for it".into()));
            }
        };
        for file in OPTIONAL {
            fetch(file)?;
        }
        match fetch(SafetensorsIndex::FILE)? {
            Some(index) => {
                for shard in SafetensorsIndex::read(&index)?.shards() {
                    fetch(&shard)?.ok_or_else(|| hub_error(format!("shard {shard} is not available")))?;
                }
            }
            None => {
                fetch("model.safetensors")?
                    .ok_or_else(|| hub_error("no model.safetensors available".into()))?;
            }
        }
        Ok(config.parent().expect("a cached file has a folder").to_owned())
    }
}

/// The local directory of `model` with the environment's hub settings ([`Hub::from_env`]).
pub fn resolve_model(model: &str) -> Result<PathBuf, EngineError> {
    Hub::from_env().resolve(model)
}
