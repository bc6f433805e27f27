//! Reading a prompts file: one prompt per line, as text or as a JSON object.

use std::path::Path;

use anyhow::{Context, bail};
use nanovllm::Prompt;
use serde_json::Value;

/// The prompts of `path`, one per non-blank line: plain text, or JSONL objects with a `"prompt"`
/// string or a `"prompt_token_ids"` list. Each comes with its line number.
pub(crate) fn read_prompts_file(path: &Path) -> anyhow::Result<Vec<(usize, Prompt)>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let mut prompts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let prompt = if line.trim_start().starts_with('{') {
            parse_json_line(line).with_context(|| format!("{}:{number}", path.display()))?
        } else {
            Prompt::Text(line.to_owned())
        };
        prompts.push((number, prompt));
    }
    if prompts.is_empty() {
        bail!("{}: no prompts (the file is empty)", path.display());
    }
    Ok(prompts)
}

fn parse_json_line(line: &str) -> anyhow::Result<Prompt> {
    let value: Value = serde_json::from_str(line).context("not valid JSON")?;
    if let Some(text) = value.get("prompt").and_then(Value::as_str) {
        return Ok(Prompt::Text(text.to_owned()));
    }
    if let Some(ids) = value.get("prompt_token_ids").and_then(Value::as_array) {
        let ids = ids
            .iter()
            .map(|id| {
                id.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .with_context(|| format!("token id {id} is not a non-negative integer"))
            })
            .collect::<anyhow::Result<_>>()?;
        return Ok(Prompt::Tokens(ids));
    }
    bail!("expected an object with \"prompt\" (a string) or \"prompt_token_ids\" (a list of token ids)")
}
