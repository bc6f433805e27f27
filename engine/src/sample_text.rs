//! One sample's text as its tokens arrive: decoded incrementally, searched for stop strings.

use crate::{EngineError, SamplingParams, StreamDecoder, Tokenizer};

/// A sample's text, decoded token by token, and cut at the first of its stop strings. A stop
/// string may straddle tokens: each new piece is searched together with the end of the text
/// before it. The engine keeps one for a request with stop strings; a front end that detokenizes
/// off the engine's thread keeps one per sample and ends the sample when a stop string matches.
#[derive(Debug, Clone)]
pub struct SampleText {
    stops: Vec<String>,
    include_in_output: bool,
    /// Tokens whose text is not searched (vLLM's `min_tokens`).
    min_tokens: usize,
    /// Bytes at the end of the text that may begin a stop string.
    hold_back: usize,
    generated: usize,
    decoder: StreamDecoder,
    text: String,
    /// The stop string that matched, once one did.
    matched: Option<String>,
}

impl SampleText {
    /// The text of a sample of a request sampled with `params` (its stop strings, whether the
    /// matched one stays in the text, and its `min_tokens`).
    pub fn new(params: &SamplingParams) -> Self {
        let longest = params.stop.iter().map(String::len).max().unwrap_or(0);
        SampleText {
            stops: params.stop.clone(),
            include_in_output: params.include_stop_str_in_output,
            min_tokens: params.min_tokens,
            hold_back: longest.saturating_sub(1),
            generated: 0,
            decoder: StreamDecoder::default(),
            text: String::new(),
            matched: None,
        }
    }

    /// Add a generated token. Returns the stop string its text completes, if any, and then the
    /// text ends where the string begins (or, when asked, where it ends). Tokens after a match
    /// are ignored.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<Option<String>, EngineError> {
        if self.matched.is_some() {
            return Ok(None);
        }
        let piece = self.decoder.push(tokenizer, token)?;
        self.generated += 1;
        let mut from = self.text.len().saturating_sub(self.hold_back);
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
        self.matched = Some(stop.clone());
        Ok(Some(stop))
    }

    /// The sample ended (EOS, length, abort): what the decoder still holds (the bytes of an
    /// unfinished character, shown as U+FFFD, as decoding every token at once shows them) joins
    /// the text, unless a stop string cut it.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<(), EngineError> {
        if self.matched.is_none() {
            let rest = self.decoder.flush(tokenizer)?;
            self.text.push_str(&rest);
        }
        Ok(())
    }

    /// The text so far (cut at the stop string once one matched).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// How much of the text no later token can take back: all of it once a stop string matched,
    /// else all but the bytes that may begin one (on a character boundary).
    pub fn settled_len(&self) -> usize {
        if self.matched.is_some() {
            return self.text.len();
        }
        let mut end = self.text.len().saturating_sub(self.hold_back);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        end
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
        let params = SamplingParams {
            stop: stops.iter().map(|s| s.to_string()).collect(),
            include_stop_str_in_output: include,
            min_tokens,
            ..SamplingParams::default()
        };
        let mut stop = SampleText::new(&params);
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
    fn held_back_text_settles_and_an_unfinished_character_shows_as_whole_decoding_shows_it() {
        let tokenizer = tokenizer();
        let mut text =
            SampleText::new(&SamplingParams { stop: vec!["xyz".into()], ..SamplingParams::default() });
        for id in tokenizer.encode("Hello world").unwrap() {
            assert_eq!(text.push(&tokenizer, id).unwrap(), None);
        }
        assert_eq!(text.text(), "Hello world");
        // "ld" may begin "xyz"? No, but any two bytes may: the last two are held back.
        assert_eq!(text.settled_len(), "Hello wor".len());
        // A rare character, its four bytes spread over tokens, cut before its last token: nothing shown until the sample ends.
        let ids = tokenizer.encode("a𠀀").unwrap();
        assert!(ids.len() > 2, "the character spans tokens: {ids:?}");
        let cut = &ids[..ids.len() - 1];
        let mut text = SampleText::new(&SamplingParams::default());
        for &id in cut {
            text.push(&tokenizer, id).unwrap();
        }
        assert_eq!(text.text(), "a");
        text.finish(&tokenizer).unwrap();
        assert_eq!(text.text(), tokenizer.decode(cut).unwrap());
        assert!(text.text().ends_with('\u{FFFD}'));
    }

    #[test]
    fn multibyte_text_before_a_stop_string() {
        assert_eq!(run(&["好"], false, 0, "你好吗").1, "你");
        assert_eq!(run(&["🙂 d"], false, 0, "Hi 你好 🙂 done").1, "Hi 你好 ");
    }
}
