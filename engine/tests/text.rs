//! The tokenizer and chat template of the demo model (the real Qwen3 ones) against references
//! computed with HF's Python `tokenizers` and jinja2 as `apply_chat_template` configures it.

use std::path::{Path, PathBuf};

use nanovllm::{ChatTemplate, Message, StreamDecoder, Tokenizer};

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-random-qwen3")
}

#[test]
fn the_qwen3_tokenizer_encodes_like_hf() {
    let tokenizer = Tokenizer::from_file(&demo().join("tokenizer.json")).unwrap();
    // Python: Tokenizer.from_file(...).encode(text, add_special_tokens=False).ids
    let cases: [(&str, &[u32]); 3] = [
        ("Hello world", &[9707, 1879]),
        (
            "In the beginning God created the heaven and the earth.",
            &[641, 279, 7167, 4264, 3465, 279, 22274, 323, 279, 9393, 13],
        ),
        (
            "<|im_start|>user\nHi 你好 🙂<|im_end|>\n",
            &[151644, 872, 198, 13048, 220, 108386, 27484, 151645, 198],
        ),
    ];
    for (text, ids) in cases {
        assert_eq!(tokenizer.encode(text).unwrap(), ids, "{text:?}");
    }
    assert_eq!(tokenizer.decode(&[9707, 1879, 151645]).unwrap(), "Hello world");
}

#[test]
fn streaming_holds_back_split_characters() {
    let tokenizer = Tokenizer::from_file(&demo().join("tokenizer.json")).unwrap();
    let ids = tokenizer.encode("Hi 你好 🙂 done").unwrap();
    let mut stream = StreamDecoder::default();
    let mut text = String::new();
    for id in ids {
        let piece = stream.push(&tokenizer, id).unwrap();
        assert!(!piece.contains('\u{FFFD}'));
        text.push_str(&piece);
    }
    assert_eq!(text, "Hi 你好 🙂 done");
}

#[test]
fn the_qwen3_chat_template_renders_like_hf() {
    let template =
        ChatTemplate::from_tokenizer_config(&demo().join("tokenizer_config.json")).unwrap().unwrap();
    let hello = [Message::user("Hello")];
    assert_eq!(
        template.render(&hello, true).unwrap(),
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        template.render(&hello, false).unwrap(),
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
    let conversation = [
        Message { role: "system".into(), content: "Be brief.".into() },
        Message::user("Hi"),
        Message { role: "assistant".into(), content: "<think>\nhmm\n</think>\n\nHello!".into() },
        Message::user("Bye"),
    ];
    assert_eq!(
        template.render(&conversation, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn a_broken_template_or_tokenizer_is_one_clear_error() {
    let err = ChatTemplate::new("{% for %}").unwrap_err().to_string();
    assert!(err.starts_with("chat template: syntax error"), "{err}");
    let failing = ChatTemplate::new("{{ raise_exception('no system role') }}").unwrap();
    assert!(failing.render(&[Message::user("x")], true).unwrap_err().to_string().contains("no system role"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    assert_eq!(Tokenizer::from_file(&path).unwrap_err().to_string(), format!("{}: missing", path.display()));
    std::fs::write(&path, "{\"version\": 1").unwrap();
    assert!(Tokenizer::from_file(&path).unwrap_err().to_string().contains("not a valid tokenizer.json"));
}

#[test]
fn the_kjv_tokenizer_loads_and_encodes_like_hf() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/kjv-qwen3/tokenizer.json");
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    assert_eq!(tokenizer.vocab_size(), 4096);
    // Python: Tokenizer.from_file(...).encode("And God said, Let there be light").ids
    let ids = tokenizer.encode("And God said, Let there be light").unwrap();
    assert_eq!(ids, [296, 392, 384, 12, 1469, 380, 295, 1058]);
    assert_eq!(tokenizer.decode(&ids).unwrap(), "And God said, Let there be light");
}
