//! Stop strings, found on the text as it is decoded token by token.

use crate::{EngineError, StreamDecoder, Tokenizer};

/// One request's stop strings and the text decoded so far. A stop string may straddle tokens:
/// each new piece is searched together with the end of the text before it.
#[derive(Debug, Clone)]
pub(crate) struct StopStrings {
    stops: Vec<String>,
    include_in_output: bool,
    /// Tokens whose text is not searched (vLLM's `min_tokens`).
    min_tokens: usize,
    generated: usize,
    decoder: StreamDecoder,
    text: String,
}

impl StopStrings {
    pub(crate) fn new(stops: Vec<String>, include_in_output: bool, min_tokens: usize) -> Self {
        StopStrings {
            stops,
            include_in_output,
            min_tokens,
            generated: 0,
            decoder: StreamDecoder::default(),
            text: String::new(),
        }
    }

    /// Add a generated token. Returns the stop string its text completes, if any, and then the
    /// text ends where the string begins (or, when asked, where it ends).
    pub(crate) fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<Option<String>, EngineError> {
        let piece = self.decoder.push(tokenizer, token)?;
        self.generated += 1;
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(&piece);
        if self.generated <= self.min_tokens {
            return Ok(None);
        }
        let found = self
            .stops
            .iter()
            .filter_map(|stop| self.text[from..].find(stop.as_str()).map(|at| (from + at, stop)))
            .min_by_key(|&(at, stop)| (at, stop.len()));
        let Some((at, stop)) = found else { return Ok(None) };
        let stop = stop.clone();
        self.text.truncate(if self.include_in_output { at + stop.len() } else { at });
        Ok(Some(stop))
    }

    /// The text so far (cut at the stop string once one matched).
    pub(crate) fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-random-qwen3");
        Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap()
    }

    /// Feed `text`'s tokens one at a time; the stop string matched and the text left.
    fn run(stops: &[&str], include: bool, min_tokens: usize, text: &str) -> (Option<String>, String) {
        let tokenizer = tokenizer();
        let mut stop = StopStrings::new(stops.iter().map(|s| s.to_string()).collect(), include, min_tokens);
        for id in tokenizer.encode(text).unwrap() {
            if let Some(matched) = stop.push(&tokenizer, id).unwrap() {
                return (Some(matched), stop.text().to_owned());
            }
        }
        (None, stop.text().to_owned())
    }

    #[test]
    fn a_stop_string_across_tokens_cuts_the_text_where_it_begins() {
        // "Hello world" is two tokens; "lo wor" straddles them.
        assert_eq!(run(&["lo wor"], false, 0, "Hello world, again"), (Some("lo wor".into()), "Hel".into()));
        assert_eq!(
            run(&["lo wor"], true, 0, "Hello world, again"),
            (Some("lo wor".into()), "Hello wor".into())
        );
    }

    #[test]
    fn the_earliest_match_wins_and_a_prefix_of_another_stops_first() {
        assert_eq!(run(&["again", "world"], false, 0, "Hello world, again").0.as_deref(), Some("world"));
        assert_eq!(run(&["wor", "world"], false, 0, "Hello world").0.as_deref(), Some("wor"));
    }

    #[test]
    fn no_match_and_min_tokens() {
        assert_eq!(run(&["xyz"], false, 0, "Hello world"), (None, "Hello world".into()));
        // The first token's text is not searched while min_tokens holds.
        assert_eq!(run(&["Hello"], false, 1, "Hello world").0, None);
    }

    #[test]
    fn multibyte_text_before_a_stop_string() {
        assert_eq!(run(&["好"], false, 0, "你好吗").1, "你");
        assert_eq!(run(&["🙂 d"], false, 0, "Hi 你好 🙂 done").1, "Hi 你好 ");
    }
}
