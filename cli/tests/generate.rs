//! `nanovllm-cli generate` as a user runs it: the demo works offline, and every bad input gives one
//! clear line on stderr and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn demo() -> String {
    repo().join("models/tiny-random-qwen3").display().to_string()
}

fn fixture(name: &str) -> PathBuf {
    repo().join("model-qwen3/tests/fixtures").join(name)
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nanovllm-cli"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", std::env::temp_dir().join("nanovllm-cli-test-hf-home"))
        .output()
        .unwrap()
}

/// Asserts a failure with exactly one line on stderr containing `needle`, and returns that line.
fn assert_one_line_error(output: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "expected failure, stderr: {stderr}");
    let lines: Vec<&str> =
        stderr.lines().filter(|l| !l.starts_with("device: ") && !l.starts_with("KV cache: ")).collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"));
    lines[0].to_owned()
}

#[test]
fn the_demo_generates_offline() {
    let output = cli(&[
        "generate",
        "--model",
        &demo(),
        "--load-format",
        "dummy",
        "--prompt",
        "Hello",
        "--max-tokens",
        "8",
        "--chat",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!String::from_utf8_lossy(&output.stdout).trim().is_empty());
}

#[test]
fn greedy_token_ids_from_a_prompts_file_match_hf_for_every_cache_dtype() {
    let model = fixture("gqa-tied").display().to_string();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("gqa-tied").join("hf_reference.json")).unwrap(),
    )
    .unwrap();
    let case = &reference["prompts"][3];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompts.jsonl");
    std::fs::write(&path, format!("{{\"prompt_token_ids\": {}}}\n", case["prompt"])).unwrap();
    let file = path.display().to_string();
    for dtype in ["f32", "bf16", "int8"] {
        let output = cli(&[
            "generate",
            "--model",
            &model,
            "--prompts-file",
            &file,
            "--kv-cache-dtype",
            dtype,
            "--temperature",
            "0",
            "--ignore-eos",
            "--max-tokens",
            "24",
            "--json",
            "--block-size",
            "16",
        ]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let generated = &result["token_ids"];
        if dtype == "f32" {
            assert_eq!(generated, &case["greedy"]);
        } else {
            assert_eq!(
                generated.as_array().unwrap()[..4],
                case["greedy"].as_array().unwrap()[..4],
                "{dtype}"
            );
        }
    }
    // Without a tokenizer, a text prompt is refused with a clear line.
    assert_one_line_error(
        &cli(&["generate", "--model", &model, "--prompt", "hello"]),
        "text prompts need a tokenizer",
    );
}

#[test]
fn a_missing_directory() {
    let output = cli(&["generate", "--model", "/nonexistent/model", "--prompt", "hi"]);
    assert_one_line_error(&output, "/nonexistent/model: no such directory");
}

#[test]
fn a_model_id_that_is_not_cached_offline() {
    let output = cli(&["generate", "--model", "Qwen/Qwen3-0.6B", "--prompt", "hi"]);
    assert_one_line_error(
        &output,
        "model Qwen/Qwen3-0.6B: not a local directory, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)",
    );
}

#[test]
fn a_config_of_another_architecture_and_a_truncated_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("gqa-tied").join(file), dir.path().join(file)).unwrap();
    }
    let model = dir.path().display().to_string();
    let checkpoint = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &bytes[..1000]).unwrap();
    assert_one_line_error(
        &cli(&["generate", "--model", &model, "--prompt", "hi"]),
        "not a valid safetensors file",
    );
    let config =
        std::fs::read_to_string(dir.path().join("config.json")).unwrap().replace("\"qwen3\"", "\"mistral\"");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    assert_one_line_error(
        &cli(&["generate", "--model", &model, "--prompt", "hi"]),
        "model_type = \"mistral\"",
    );
}

#[test]
fn a_prompt_longer_than_the_model_allows() {
    let long = "word ".repeat(300);
    let output = cli(&[
        "generate",
        "--model",
        &demo(),
        "--load-format",
        "dummy",
        "--max-model-len",
        "256",
        "--prompt",
        &long,
    ]);
    assert_one_line_error(
        &output,
        "error: request too long: prompt of 301 tokens + max_tokens 128 = 429 > max_model_len 256",
    );
}

#[test]
fn bad_sampling_values_and_devices() {
    let base = ["generate", "--model", &demo(), "--load-format", "dummy", "--prompt", "hi"];
    let with = |extra: &[&str]| cli(&[&base[..], extra].concat());
    assert_one_line_error(&with(&["--temperature=-1"]), "temperature = -1");
    assert_one_line_error(&with(&["--top-p", "1.5"]), "top_p = 1.5");
    assert_one_line_error(&with(&["--max-tokens", "0"]), "max_tokens = 0");
    let on_gpu = with(&["--device", "cuda"]);
    if !cfg!(feature = "cuda") {
        assert_one_line_error(&on_gpu, "--device: this build has no CUDA support");
    } else if !on_gpu.status.success() {
        // A CUDA build runs there, or says in one line why this machine cannot.
        assert_one_line_error(&on_gpu, "--device: no CUDA GPU available");
    }
    assert_one_line_error(
        &with(&["--kv-cache-memory-gib", "0.0001"]),
        "less than one sequence of max_model_len 4096",
    );
}

#[test]
fn flag_values_are_refused_before_the_model_is_looked_for() {
    // The model does not exist: each error shows the value was checked first.
    let base = ["generate", "--model", "/nonexistent/model", "--prompt", "hi"];
    let with = |extra: &[&str]| cli(&[&base[..], extra].concat());
    assert_one_line_error(&with(&["--temperature", "-1"]), "temperature = -1");
    assert_one_line_error(&with(&["--top-k", "0"]), "top_k = 0");
    assert_one_line_error(&with(&["--max-tokens", "0"]), "max_tokens = 0");
    let empty = cli(&["generate", "--model", "/nonexistent/model", "--prompt", ""]);
    assert_one_line_error(&empty, "--prompt: empty prompt");
    let bench = cli(&["bench", "--model", "/nonexistent/model", "--temperature", "-0.5"]);
    assert_one_line_error(&bench, "temperature = -0.5");
    let bytes = cli(&[&base[..], &["--kv-cache-memory-bytes", "4Q"]].concat());
    assert!(String::from_utf8_lossy(&bytes.stderr).contains("expected a byte count"));
}

#[test]
fn a_prompts_file_runs_the_good_lines_and_names_the_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompts.jsonl");
    std::fs::write(
        &path,
        "Hello there\n{\"prompt_token_ids\": [1, 2, 3]}\n\n{\"prompt_token_ids\": [999999]}\nBye\n",
    )
    .unwrap();
    let file = path.display().to_string();
    let output = cli(&[
        "generate",
        "--model",
        &demo(),
        "--load-format",
        "dummy",
        "--prompts-file",
        &file,
        "--max-tokens",
        "4",
        "--json",
    ]);
    let line = assert_one_line_error(
        &output,
        "prompts.jsonl:4: invalid prompt: token id 999999 is outside the vocabulary of 151936",
    );
    assert!(line.contains("outside the vocabulary of 151936"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["line"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 5]);
    std::fs::write(&path, [0x66, 0x6f, 0xff, 0x0a]).unwrap();
    let output = cli(&["generate", "--model", &demo(), "--load-format", "dummy", "--prompts-file", &file]);
    assert_one_line_error(&output, "not UTF-8 text");
    std::fs::write(&path, "{\"prompt\": 3}\n").unwrap();
    let output = cli(&["generate", "--model", &demo(), "--load-format", "dummy", "--prompts-file", &file]);
    assert_one_line_error(&output, "prompts.jsonl:1: expected an object with \"prompt\"");
}

#[cfg(unix)]
#[test]
fn ctrl_c_ends_generation_cleanly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nanovllm-cli"))
        .args([
            "generate",
            "--model",
            &demo(),
            "--load-format",
            "dummy",
            "--prompt",
            "Hello",
            "--max-tokens",
            "4000",
        ])
        .args(["--ignore-eos", "--block-size", "16"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until tokens stream, then press Ctrl-C.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().last() == Some("interrupted") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_broken_tokenizer_a_failing_chat_template_and_an_empty_prompts_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().display().to_string();
    let source = repo().join("models/tiny-random-qwen3");
    for file in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    let dummy = ["generate", "--model", &model, "--load-format", "dummy", "--block-size", "16"];
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "{{ raise_exception('this template takes no users') }}"}"#,
    )
    .unwrap();
    let output = cli(&[&dummy[..], &["--chat", "--prompt", "hi"]].concat());
    assert_one_line_error(&output, "chat template: invalid operation: this template takes no users");
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"chat_template": "{% for %}"}"#).unwrap();
    assert_one_line_error(&cli(&[&dummy[..], &["--prompt", "hi"]].concat()), "chat template: syntax error");
    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    assert_one_line_error(
        &cli(&[&dummy[..], &["--prompts-file", &empty.display().to_string()]].concat()),
        "no prompts (the file is empty)",
    );
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
    assert_one_line_error(
        &cli(&[&dummy[..], &["--prompt", "hi"]].concat()),
        "tokenizer.json: not a valid tokenizer.json",
    );
}

#[test]
fn a_tensor_parallel_size_that_cannot_run_is_refused_with_the_reason() {
    let model = repo().join("models/kjv-qwen3").display().to_string();
    let run = |size: &str, device: &str| {
        cli(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            "In",
            "--device",
            device,
            "--tensor-parallel-size",
            size,
        ])
    };
    // kjv-qwen3 has 4 query heads and 2 kv heads.
    assert_one_line_error(
        &run("3", "cpu"),
        "tensor parallel size 3: does not divide num_attention_heads (4)",
    );
    assert_one_line_error(
        &run("4", "cpu"),
        "tensor parallel size 4: does not divide num_key_value_heads (2)",
    );
    assert_one_line_error(&run("0", "cpu"), "tensor parallel size 0: must be at least 1");
    assert_one_line_error(&run("2", "cpu"), "tensor_parallel_size = 2: runs one rank per GPU");
}

#[test]
fn json_output_carries_the_stop_reason_and_logprobs() {
    let model = repo().join("models/kjv-qwen3").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompts.txt");
    std::fs::write(&path, "And God said\nIn the beginning\n").unwrap();
    let file = path.display().to_string();
    let common = ["generate", "--model", &model, "--prompts-file", &file, "--json", "--temperature", "0"];
    let run = |extra: &[&str]| {
        let output = cli(&[&common[..], extra].concat());
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let full = run(&["--max-tokens", "30", "--ignore-eos", "--logprobs", "2"]);
    for line in &full {
        assert_eq!(line["finish_reason"], "length");
        assert!(line["stop_reason"].is_null());
        let logprobs = line["logprobs"].as_array().unwrap();
        assert_eq!(logprobs.len(), 30);
        assert_eq!(logprobs[0]["top_logprobs"].as_array().unwrap().len(), 2);
        assert_eq!(logprobs[0]["token_id"], line["token_ids"][0]);
    }
    // Stop at the first word of the first completion's text after its first few characters.
    let text = full[0]["text"].as_str().unwrap();
    let word = text.split_whitespace().nth(2).unwrap();
    let stopped = run(&["--max-tokens", "30", "--ignore-eos", "--stop", word]);
    assert_eq!(stopped[0]["finish_reason"], "stop");
    assert_eq!(stopped[0]["stop_reason"], word);
    assert_eq!(stopped[0]["text"].as_str().unwrap(), &text[..text.find(word).unwrap()]);
    assert!(stopped[0]["logprobs"].is_null());
    // Streamed, the printed text ends where the stop string begins too.
    let streamed = cli(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "And God said",
        "--temperature",
        "0",
        "--max-tokens",
        "30",
        "--ignore-eos",
        "--stop",
        word,
    ]);
    assert!(streamed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&streamed.stdout).trim_end_matches('\n'),
        stopped[0]["text"].as_str().unwrap()
    );
}

#[test]
fn n_samples_of_a_prompt_come_as_json_lines_with_their_index() {
    let model = repo().join("models/kjv-qwen3").display().to_string();
    let base =
        ["generate", "--model", &model, "--prompt", "And God said", "--max-tokens", "8", "--ignore-eos"];
    let output = cli(&[&base[..], &["--json", "-n", "3", "--temperature", "1"]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(lines.iter().all(|l| l["line"] == 1 && l["token_ids"].as_array().unwrap().len() == 8));
    // --json alone gives the one completion as JSON; -n 0 is refused before anything loads.
    let output = cli(&[&base[..], &["--json"]].concat());
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 1);
    assert_one_line_error(&cli(&[&base[..], &["-n", "0"]].concat()), "n = 0");
}
