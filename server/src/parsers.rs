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

/// The parts of a whole answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Parts {
    /// The reasoning (inside `<think>`), when asked for and present.
    pub(crate) reasoning: Option<String>,
    /// The text for the user.
    pub(crate) content: String,
    /// The tool calls.
    pub(crate) tool_calls: Vec<ToolCall>,
}

/// What a piece of an answer adds to its reasoning and its content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PartsDelta {
    pub(crate) reasoning: String,
    pub(crate) content: String,
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

    /// The parts of a whole answer.
    pub(crate) fn parts(self, text: &str) -> Parts {
        let mut parser = AnswerParser::new(self);
        let mut delta = parser.push(text);
        let (rest, tool_calls) = parser.finish();
        delta.reasoning.push_str(&rest.reasoning);
        delta.content.push_str(&rest.content);
        let reasoning = parser.has_reasoning.then_some(delta.reasoning);
        Parts { reasoning, content: delta.content, tool_calls }
    }
}

/// Where an answer's text is, as it grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Nothing decided yet: the answer may open with `<think>`.
    Start,
    /// Inside `<think>`.
    Reasoning,
    /// Just past `</think>`: the newlines that follow are dropped.
    AfterReasoning,
    /// Text for the user.
    Content,
    /// From the first `<tool_call>` on: kept whole until the answer ends.
    Calls,
}

/// Splits an answer as it streams, each piece looked at once: what it adds to the reasoning and
/// the content comes out at once, except what may still turn out to be a marker (or the
/// whitespace before a tool call, which is dropped), so that nothing shown is taken back. Tool
/// calls come out whole when the answer ends.
#[derive(Debug)]
pub(crate) struct AnswerParser {
    parsing: Parsing,
    section: Section,
    /// Text seen but not shown yet.
    pending: String,
    /// The tool calls' text (with the whitespace before the first).
    calls: String,
    /// Whether the answer opened with `<think>`.
    has_reasoning: bool,
}

impl AnswerParser {
    pub(crate) fn new(parsing: Parsing) -> Self {
        AnswerParser {
            parsing,
            section: Section::Start,
            pending: String::new(),
            calls: String::new(),
            has_reasoning: false,
        }
    }

    /// Add the answer's next piece: what it shows of each part.
    pub(crate) fn push(&mut self, text: &str) -> PartsDelta {
        self.pending.push_str(text);
        let mut delta = PartsDelta::default();
        self.advance(false, &mut delta);
        delta
    }

    /// The answer ended: the rest of each part, and the tool calls. Calls that do not parse stay
    /// in the content as text (as vLLM's parser leaves them).
    pub(crate) fn finish(&mut self) -> (PartsDelta, Vec<ToolCall>) {
        let mut delta = PartsDelta::default();
        self.advance(true, &mut delta);
        if self.section != Section::Calls {
            return (delta, Vec::new());
        }
        match parse_calls(&self.calls) {
            Some(calls) => (delta, calls),
            None => {
                delta.content.push_str(&self.calls);
                (delta, Vec::new())
            }
        }
    }

    /// Move what `pending` decides into `delta`, section by section.
    fn advance(&mut self, finished: bool, delta: &mut PartsDelta) {
        loop {
            match self.section {
                Section::Start => {
                    if let Some(inside) =
                        self.pending.strip_prefix(THINK_START).filter(|_| self.parsing.reasoning)
                    {
                        self.pending = inside.to_owned();
                        self.has_reasoning = true;
                        self.section = Section::Reasoning;
                    } else if self.parsing.reasoning
                        && !finished
                        && THINK_START.starts_with(self.pending.as_str())
                    {
                        return;
                    } else {
                        self.section = Section::Content;
                    }
                }
                Section::Reasoning => match self.pending.find(THINK_END) {
                    Some(at) => {
                        delta.reasoning.push_str(&self.pending[..at]);
                        self.pending.drain(..at + THINK_END.len());
                        self.section = Section::AfterReasoning;
                    }
                    None => {
                        let held = if finished { 0 } else { partial_marker(&self.pending, THINK_END) };
                        let shown = self.pending.len() - held;
                        delta.reasoning.push_str(&self.pending[..shown]);
                        self.pending.drain(..shown);
                        return;
                    }
                },
                Section::AfterReasoning => {
                    let newlines = self.pending.len() - self.pending.trim_start_matches('\n').len();
                    self.pending.drain(..newlines);
                    if self.pending.is_empty() {
                        return;
                    }
                    self.section = Section::Content;
                }
                Section::Content => {
                    if !self.parsing.tools || finished && !self.pending.contains(TOOL_START) {
                        delta.content.push_str(&self.pending);
                        self.pending.clear();
                        return;
                    }
                    // Whitespace before a tool call is dropped: it waits to see what follows.
                    let (before, call) = match self.pending.find(TOOL_START) {
                        Some(at) => (at, true),
                        None => (self.pending.len() - partial_marker(&self.pending, TOOL_START), false),
                    };
                    let shown = self.pending[..before].trim_end().len();
                    delta.content.push_str(&self.pending[..shown]);
                    self.pending.drain(..shown);
                    if call {
                        self.calls = std::mem::take(&mut self.pending);
                        self.section = Section::Calls;
                    }
                    return;
                }
                Section::Calls => {
                    self.calls.push_str(&self.pending);
                    self.pending.clear();
                    return;
                }
            }
        }
    }
}

/// Bytes at the end of `text` that may begin `marker`.
fn partial_marker(text: &str, marker: &str) -> usize {
    (1..marker.len()).rev().find(|&n| text.ends_with(&marker[..n])).unwrap_or(0)
}

#[derive(Deserialize)]
struct RawCall {
    name: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

/// The calls in `text` (which starts with whitespace or `<tool_call>`), or `None` if one does
/// not parse.
fn parse_calls(text: &str) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(TOOL_START) {
        let body = &rest[start + TOOL_START.len()..];
        let end = body.find(TOOL_END).unwrap_or(body.len());
        let call: RawCall = serde_json::from_str(body[..end].trim()).ok()?;
        calls.push(ToolCall { name: call.name, arguments: call.arguments.to_string() });
        rest = &body[(end + TOOL_END.len()).min(body.len())..];
    }
    Some(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Parsing = Parsing { reasoning: true, tools: true };

    #[test]
    fn a_qwen3_answer_splits_into_reasoning_content_and_tool_calls() {
        let text = "<think>\nThe user wants the weather.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        let parts = BOTH.parts(text);
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
        assert_eq!(BOTH.parts("Hello there"), Parts { content: "Hello there".into(), ..Parts::default() });
        let broken = "Sure <tool_call>{not json}</tool_call>";
        assert_eq!(BOTH.parts(broken).content, broken);
        let plain = Parsing { reasoning: false, tools: false };
        assert_eq!(plain.parts("<think>x</think>y").content, "<think>x</think>y");
    }

    #[test]
    fn a_streamed_answer_adds_up_to_the_whole_and_never_shows_what_it_may_take_back() {
        let texts = [
            "<think>hmm</think>\nOK.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
            "<think>\nA 你好 </thi</think>\n\nplain <tool_ and more  \n",
            "Sure <tool_call>{not json}</tool_call> after",
            "<thin",
            "<think>never closed",
        ];
        for parsing in
            [BOTH, Parsing { reasoning: true, tools: false }, Parsing { reasoning: false, tools: true }]
        {
            for text in texts {
                let whole = parsing.parts(text);
                // Piece by piece, at every character, and in two pieces split at every character.
                let mut splits: Vec<Vec<&str>> = vec![text.split_inclusive(|_| true).collect()];
                for at in (0..=text.len()).filter(|&at| text.is_char_boundary(at)) {
                    splits.push(vec![&text[..at], &text[at..]]);
                }
                for pieces in splits {
                    let mut parser = AnswerParser::new(parsing);
                    let (mut reasoning, mut content) = (String::new(), String::new());
                    for piece in &pieces {
                        let delta = parser.push(piece);
                        reasoning.push_str(&delta.reasoning);
                        content.push_str(&delta.content);
                        let whole_reasoning = whole.reasoning.as_deref().unwrap_or_default();
                        assert!(
                            whole_reasoning.starts_with(&reasoning),
                            "{parsing:?} {pieces:?}: {reasoning:?}"
                        );
                        assert!(whole.content.starts_with(&content), "{parsing:?} {pieces:?}: {content:?}");
                    }
                    let (rest, calls) = parser.finish();
                    reasoning.push_str(&rest.reasoning);
                    content.push_str(&rest.content);
                    assert_eq!(
                        reasoning,
                        whole.reasoning.clone().unwrap_or_default(),
                        "{parsing:?} {pieces:?}"
                    );
                    assert_eq!(content, whole.content, "{parsing:?} {pieces:?}");
                    assert_eq!(calls, whole.tool_calls, "{parsing:?} {pieces:?}");
                }
            }
        }
    }

    #[test]
    fn held_back_text_is_what_may_still_be_a_marker() {
        let mut parser = AnswerParser::new(BOTH);
        assert_eq!(parser.push("<thi"), PartsDelta::default());
        assert_eq!(parser.push("nk>why</th").reasoning, "why");
        assert_eq!(parser.push("ink>\n\nSo  ").content, "So");
        assert_eq!(parser.push("it <tool").content, "  it");
        assert_eq!(parser.push("_call>{\"name\": \"f\"}</tool_call>"), PartsDelta::default());
        let (rest, calls) = parser.finish();
        assert_eq!((rest, calls.len()), (PartsDelta::default(), 1));
    }
}
