//! `llm.tokenizer`: what nano-vllm's scripts take from transformers' `AutoTokenizer` (`encode`,
//! `decode`, `apply_chat_template`), from the model directory's own files, so that they need no
//! other tokenizer.

use std::collections::HashMap;
use std::path::Path;

use nanovllm::{ChatTemplate, Message};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::to_py;

/// The model's tokenizer and chat template.
#[pyclass(module = "nanovllm", frozen)]
pub(crate) struct Tokenizer {
    inner: nanovllm::Tokenizer,
    template: Option<ChatTemplate>,
}

impl Tokenizer {
    /// The tokenizer of the model in `dir`, if it has one.
    pub(crate) fn load(dir: &Path) -> PyResult<Option<Self>> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Ok(None);
        }
        let inner = nanovllm::Tokenizer::from_file(&path).map_err(to_py)?;
        let template =
            ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json")).map_err(to_py)?;
        Ok(Some(Tokenizer { inner, template }))
    }
}

#[pymethods]
impl Tokenizer {
    /// Token ids of `text` (special tokens written in it included; no BOS, as Qwen3 has none).
    fn encode(&self, text: &str) -> PyResult<Vec<u32>> {
        self.inner.encode(text).map_err(to_py)
    }

    /// The text of `token_ids`, special tokens left out.
    fn decode(&self, token_ids: Vec<u32>) -> PyResult<String> {
        self.inner.decode(&token_ids).map_err(to_py)
    }

    /// Tokens in the vocabulary, added tokens included.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// `messages` (dicts with `role` and `content`) through the model's chat template, as
    /// transformers' `apply_chat_template` renders them; other keywords (`enable_thinking`) reach
    /// the template. Text, or its token ids with `tokenize=True`.
    #[pyo3(signature = (messages, tokenize = true, add_generation_prompt = false, tools = None, **kwargs))]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages: Vec<HashMap<String, String>>,
        tokenize: bool,
        add_generation_prompt: bool,
        tools: Option<Bound<'_, PyAny>>,
        kwargs: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let template = self.template.as_ref().ok_or_else(|| {
            PyValueError::new_err("this model's tokenizer_config.json has no chat_template")
        })?;
        let messages = messages
            .into_iter()
            .map(|m| {
                let role =
                    m.get("role").cloned().ok_or_else(|| PyValueError::new_err("a message has no role"))?;
                Ok(Message { role, content: m.get("content").cloned().unwrap_or_default() })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let json = |value: &Bound<'_, PyAny>| -> PyResult<serde_json::Value> {
            let text: String = py.import("json")?.call_method1("dumps", (value,))?.extract()?;
            serde_json::from_str(&text).map_err(|e| PyValueError::new_err(e.to_string()))
        };
        let tools = tools.as_ref().map(json).transpose()?;
        let mut variables = match kwargs.as_ref().map(|k| json(k.as_any())).transpose()? {
            Some(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        variables.insert("add_generation_prompt".into(), add_generation_prompt.into());
        let text = template.render_with(&messages, tools.as_ref(), &variables).map_err(to_py)?;
        if tokenize {
            Ok(self.encode(&text)?.into_pyobject(py)?.into_any().unbind())
        } else {
            Ok(text.into_pyobject(py)?.into_any().unbind())
        }
    }
}
