//! The trained KJV model (models/kjv-qwen3) and the greedy continuations HF transformers produced
//! for it (hf_reference.json, written by train.py), with each step's HF margin (top-1 minus top-2
//! logit): a different but correct summation order may take the other token where that margin is
//! small, so runs are compared up to the first close call.

use std::path::{Path, PathBuf};

use nanovllm::{LLM, Prompt, SamplingParams};
use serde_json::Value;

/// The model's directory. A machine with a GPU may run test binaries from a copy of the repository where
/// the build's path does not exist: then the path relative to the repository root.
pub(crate) fn model_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if crate_dir.exists() { crate_dir.join("..") } else { PathBuf::from(".") };
    root.join("models/kjv-qwen3")
}

pub(crate) struct Case {
    pub(crate) text: String,
    pub(crate) greedy: Vec<u32>,
    pub(crate) margins: Vec<f64>,
}

pub(crate) fn hf_cases() -> Vec<Case> {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("hf_reference.json")).unwrap())
            .unwrap();
    reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Case {
            text: p["text"].as_str().unwrap().to_owned(),
            greedy: p["greedy"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
            margins: p["margins"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect(),
        })
        .collect()
}

/// Greedy continuations of every case's text, all in one batch.
pub(crate) fn generate(llm: &mut LLM, cases: &[Case]) -> Vec<Vec<u32>> {
    let max_tokens = cases[0].greedy.len();
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_tokens) };
    let prompts = cases.iter().map(|c| Prompt::from(c.text.as_str())).collect();
    llm.generate(prompts, &params).unwrap().into_iter().map(|o| o.unwrap().token_ids).collect()
}

/// Steps of `case` before the first HF margin below `noise`.
pub(crate) fn comparable(case: &Case, noise: f64) -> usize {
    case.margins.iter().position(|&m| m < noise).unwrap_or(case.margins.len())
}
