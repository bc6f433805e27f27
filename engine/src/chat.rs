//! Chat templates from `tokenizer_config.json`, rendered like HF's `apply_chat_template`.

use std::path::Path;

use minijinja::{Environment, context};
use serde::Deserialize;

use crate::EngineError;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message { role: "user".into(), content: content.into() }
    }
}

/// The part of `tokenizer_config.json` the engine reads.
#[derive(Deserialize)]
struct TokenizerConfig {
    chat_template: Option<TemplateField>,
}

/// One template, or several by name (`[{"name": "default", "template": ...}, ...]`).
#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// A model's chat template (Jinja, rendered with minijinja and its Python-compatible methods).
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// The `chat_template` of a `tokenizer_config.json` (the one named "default" where it lists
    /// several, as HF does); `None` if the file or the field is absent.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>, EngineError> {
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(None) };
        let config: TokenizerConfig = serde_json::from_str(&text)
            .map_err(|e| EngineError::ChatTemplate(format!("{}: {e}", path.display())))?;
        let source = match config.chat_template {
            None => return Ok(None),
            Some(TemplateField::One(source)) => source,
            Some(TemplateField::Named(templates)) => {
                match templates.into_iter().find(|t| t.name == "default") {
                    Some(named) => named.template,
                    None => return Ok(None),
                }
            }
        };
        Self::new(&source).map(Some)
    }

    /// Compile a template.
    pub fn new(source: &str) -> Result<Self, EngineError> {
        // As HF's apply_chat_template: trim_blocks and lstrip_blocks, Python string methods, and a
        // raise_exception function for templates that refuse a conversation.
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_filter("tojson", python_tojson);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        Ok(ChatTemplate { env })
    }

    /// Render `messages` as HF does with `add_generation_prompt=True`; `enable_thinking` is
    /// Qwen3's switch (false adds an empty think block so the model answers directly).
    pub fn render(&self, messages: &[Message], enable_thinking: bool) -> Result<String, EngineError> {
        let kwargs = serde_json::json!({ "enable_thinking": enable_thinking });
        let serde_json::Value::Object(kwargs) = kwargs else { unreachable!("an object literal") };
        self.render_with(messages, None, &kwargs)
    }

    /// Render `messages` with the `tools` the model may call (OpenAI's function specs, which
    /// Qwen3's template lists in its system prompt) and template variables `kwargs` (vLLM's
    /// `chat_template_kwargs`, such as `enable_thinking`), as HF's `apply_chat_template` does;
    /// with `add_generation_prompt=True` unless `kwargs` says otherwise.
    pub fn render_with(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, EngineError> {
        let messages: Vec<_> = messages
            .iter()
            .map(|m| context! { role => m.role.clone(), content => m.content.clone() })
            .collect();
        let template = self.env.get_template("chat").map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        let mut kwargs = kwargs.clone();
        kwargs.entry("add_generation_prompt").or_insert(true.into());
        let kwargs = minijinja::Value::from_serialize(kwargs);
        let tools = tools.map(minijinja::Value::from_serialize);
        template
            .render(context! { messages, tools, ..kwargs })
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))
    }
}

/// HF's `tojson` filter: Python's `json.dumps` (keys in the given order, `", "` and `": "` between
/// items, non-ASCII kept), so that a template renders tools and tool-call arguments byte for byte
/// as transformers does. minijinja's own is compact.
fn python_tojson(value: minijinja::Value) -> Result<String, minijinja::Error> {
    /// serde_json's compact output with Python's separators.
    struct PythonFormatter;
    impl serde_json::ser::Formatter for PythonFormatter {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { writer.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { writer.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    serde::Serialize::serialize(&value, &mut serializer)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
    String::from_utf8(out)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_writes_as_pythons_json_dumps() {
        let template = ChatTemplate::new("{{ messages[0].content | tojson }} {{ x | tojson }}").unwrap();
        let kwargs = serde_json::json!({"x": {"name": "f", "arguments": {"b": [1, 2.5], "a": "é\""}}});
        let serde_json::Value::Object(kwargs) = kwargs else { unreachable!() };
        let rendered = template.render_with(&[Message::user("hi")], None, &kwargs).unwrap();
        assert_eq!(rendered, r#""hi" {"name": "f", "arguments": {"b": [1, 2.5], "a": "é\""}}"#);
    }
}
