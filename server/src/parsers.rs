//! What a Qwen3 chat answer holds besides its text, as vLLM's parsers read it: a reasoning section
//! (`<think>...</think>`, vLLM's `qwen3` reasoning parser) and tool calls (`<tool_call>{"name":
//! ..., "arguments": ...}</tool_call>`, vLLM's `hermes` tool parser, which Qwen3 uses).

use serde::Deserialize;

const THINK_START: &str = "<think>";
const THINK_END: &str = "</think>";
const TOOL_START: &str = "<tool_call>";
const TOOL_END: &str = "</tool_call>";

/// A parsed tool call: the function's name and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolCall {
    pub(crate) name: String,
    pub(crate) arguments: String,
}

/// The parts of an answer, as far as its text goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Parts {
    /// The reasoning (inside `<think>`), when asked for and present.
    pub(crate) reasoning: Option<String>,
    /// The text for the user.
    pub(crate) content: String,
    /// The tool calls, once complete.
    pub(crate) tool_calls: Vec<ToolCall>,
}

/// How to read an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsing {
    /// Split `<think>...</think>` into `reasoning_content`.
    pub(crate) reasoning: bool,
    /// Parse `<tool_call>` blocks (the request offered tools).
    pub(crate) tools: bool,
}

impl Parsing {
    /// Whether anything is split out of the text at all.
    pub(crate) fn is_active(&self) -> bool {
        self.reasoning || self.tools
    }

    /// The parts of `text`. While the answer is still growing (`finished` false), a marker that
    /// may be forming at the end is left out, and so is everything from an unfinished
    /// `<tool_call>` on, so that what is shown never has to be taken back.
    pub(crate) fn parts(&self, text: &str, finished: bool) -> Parts {
        let text = if finished { text } else { &text[..text.len() - partial_marker(text)] };
        let (reasoning, rest) = if self.reasoning { split_reasoning(text, finished) } else { (None, text) };
        let (mut content, tool_calls) =
            if self.tools { split_tool_calls(rest, finished) } else { (rest, Vec::new()) };
        if self.tools && !finished {
            // Whitespace before a tool call is dropped: wait to see what follows it.
            content = content.trim_end();
        }
        Parts { reasoning, content: content.to_owned(), tool_calls }
    }
}

/// Bytes at the end of `text` that may begin a marker.
fn partial_marker(text: &str) -> usize {
    [THINK_START, THINK_END, TOOL_START, TOOL_END]
        .iter()
        .flat_map(|marker| (1..marker.len()).map(move |n| &marker[..n]))
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

/// An answer that opens with `<think>` reasons until `</think>`; one that does not is all content.
fn split_reasoning(text: &str, finished: bool) -> (Option<String>, &str) {
    let Some(inside) = text.strip_prefix(THINK_START) else {
        // Still possibly forming "<think>": nothing is shown yet.
        return if !finished && THINK_START.starts_with(text) { (None, "") } else { (None, text) };
    };
    match inside.find(THINK_END) {
        Some(end) => {
            (Some(inside[..end].to_owned()), inside[end + THINK_END.len()..].trim_start_matches('\n'))
        }
        None => (Some(inside.to_owned()), ""),
    }
}

#[derive(Deserialize)]
struct RawCall {
    name: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

/// The content before the first `<tool_call>`, and the calls. A finished answer whose calls do not
/// parse keeps its whole text as content (as vLLM's parser does).
fn split_tool_calls(text: &str, finished: bool) -> (&str, Vec<ToolCall>) {
    let Some(first) = text.find(TOOL_START) else { return (text, Vec::new()) };
    if !finished {
        return (&text[..first], Vec::new());
    }
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(start) = rest.find(TOOL_START) {
        let body = &rest[start + TOOL_START.len()..];
        let end = body.find(TOOL_END).unwrap_or(body.len());
        match serde_json::from_str::<RawCall>(body[..end].trim()) {
            Ok(call) => calls.push(ToolCall { name: call.name, arguments: call.arguments.to_string() }),
            Err(_) => return (text, Vec::new()),
        }
        rest = &body[(end + TOOL_END.len()).min(body.len())..];
    }
    (text[..first].trim_end(), calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Parsing = Parsing { reasoning: true, tools: true };

    #[test]
    fn a_qwen3_answer_splits_into_reasoning_content_and_tool_calls() {
        let text = "<think>\nThe user wants the weather.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        let parts = BOTH.parts(text, true);
        assert_eq!(parts.reasoning.as_deref(), Some("\nThe user wants the weather.\n"));
        assert_eq!(parts.content, "Let me check.");
        assert_eq!(
            parts.tool_calls,
            [
                ToolCall { name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() },
                ToolCall { name: "now".into(), arguments: "{}".into() },
            ]
        );
    }

    #[test]
    fn without_think_or_calls_everything_is_content_and_bad_calls_stay_text() {
        assert_eq!(
            BOTH.parts("Hello there", true),
            Parts { content: "Hello there".into(), ..Parts::default() }
        );
        let broken = "Sure <tool_call>{not json}</tool_call>";
        assert_eq!(BOTH.parts(broken, true).content, broken);
        let plain = Parsing { reasoning: false, tools: false };
        assert_eq!(plain.parts("<think>x</think>y", true).content, "<think>x</think>y");
    }

    #[test]
    fn a_growing_answer_never_shows_what_it_may_take_back() {
        // Every prefix's parts are prefixes of the final parts.
        let text = "<think>hmm</think>\nOK.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
        let last = BOTH.parts(text, true);
        for end in (0..=text.len()).filter(|&e| text.is_char_boundary(e)) {
            let parts = BOTH.parts(&text[..end], false);
            let reasoning = parts.reasoning.unwrap_or_default();
            assert!(last.reasoning.as_deref().unwrap_or("").starts_with(&reasoning), "{end}: {reasoning:?}");
            assert!(last.content.starts_with(&parts.content), "{end}: {:?}", parts.content);
            assert!(parts.tool_calls.is_empty());
        }
    }
}
