//! `nanovllm-cli generate`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use nanovllm::{Completion, LLM, Prompt, SamplingParams, StopReason, StreamDecoder};

use crate::engine_args::EngineArgs;
use crate::prompts::read_prompts_file;
use crate::sampling_args::SamplingArgs;

#[derive(Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The prompt (its completion is streamed to stdout, unless --json or -n asks for more).
    #[arg(long, required_unless_present = "prompts_file", conflicts_with = "prompts_file")]
    prompt: Option<String>,
    /// A file of prompts, one per line: text, or JSON objects with "prompt" or "prompt_token_ids".
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    /// Wrap each prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// With --chat: ask Qwen3 to answer without a thinking section (enable_thinking=false).
    #[arg(long, requires = "chat")]
    no_thinking: bool,
    /// Sampling (defaults: the model's generation_config.json, else temperature 1 and no
    /// truncation).
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Tokens to generate at most, per prompt.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Tokens to generate before EOS, a stop token or a stop string may end a completion.
    #[arg(long, default_value_t = 0)]
    min_tokens: usize,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// End a completion where its text shows this string (repeat the flag for several).
    #[arg(long)]
    stop: Vec<String>,
    /// End a completion at this token id (repeat the flag for several).
    #[arg(long)]
    stop_token_ids: Vec<u32>,
    /// Keep the stop string that ended a completion at the end of its text.
    #[arg(long)]
    include_stop_str_in_output: bool,
    /// Completions per prompt, each its own draw (vLLM's `n`; sample i draws from seed + i); the
    /// prompt is computed once.
    #[arg(short = 'n', long = "n", default_value_t = 1)]
    n: usize,
    /// Print one JSON object per completion instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    // What the flags alone can be refused for is refused before any weights load.
    args.sampling(SamplingParams::default()).validate()?;
    if args.prompt.as_deref() == Some("") {
        anyhow::bail!("--prompt: {}", nanovllm::ScheduleError::EmptyPrompt);
    }
    let mut llm = args.engine.load(args.prompts_file.is_some())?;
    let params = args.sampling(llm.default_sampling());
    params.validate()?;
    match (&args.prompt, &args.prompts_file) {
        (Some(prompt), _) if !args.json && params.n == 1 => stream_one(&mut llm, prompt, &args, params),
        (Some(prompt), _) => {
            generate_batch(&mut llm, "--prompt", vec![(1, Prompt::Text(prompt.clone()))], &args, &params)
        }
        (None, Some(path)) => {
            let source = path.display().to_string();
            generate_batch(&mut llm, &source, read_prompts_file(path)?, &args, &params)
        }
        (None, None) => unreachable!("clap requires --prompt or --prompts-file"),
    }
}

impl GenerateArgs {
    /// The flags' sampling values over `defaults` (the model's generation_config.json).
    fn sampling(&self, defaults: SamplingParams) -> SamplingParams {
        SamplingParams {
            max_tokens: self.max_tokens,
            min_tokens: self.min_tokens,
            ignore_eos: self.ignore_eos,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            include_stop_str_in_output: self.include_stop_str_in_output,
            n: self.n,
            seed: Some(self.engine.seed),
            ..self.sampling.over(defaults)
        }
    }
}

fn with_template(llm: &LLM, text: String, args: &GenerateArgs) -> anyhow::Result<Prompt> {
    Ok(Prompt::Text(if args.chat { llm.chat_prompt(&text, !args.no_thinking)? } else { text }))
}

/// One prompt, its tokens printed as they are generated. With stop strings, the text that could
/// still turn out to begin one is held back, so that what is printed ends where the engine cut
/// the completion (vLLM's streaming does the same).
fn stream_one(
    llm: &mut LLM,
    prompt: &str,
    args: &GenerateArgs,
    params: SamplingParams,
) -> anyhow::Result<ExitCode> {
    let hold_back = params.stop.iter().map(String::len).max().map_or(0, |longest| longest - 1);
    let prompt = with_template(llm, prompt.to_owned(), args)?;
    let id = llm.add_request(prompt, params)?;
    let mut decoder = StreamDecoder::default();
    let (mut text, mut printed) = (String::new(), 0);
    let mut stdout = std::io::stdout().lock();
    while !llm.is_finished() {
        if crate::interrupted() {
            llm.abort_all();
            writeln!(stdout)?;
            return Err(nanovllm::EngineError::Interrupted.into());
        }
        let step = llm.step()?;
        for token in step.tokens.iter().filter(|t| t.id == id).map(|t| t.token) {
            match llm.tokenizer() {
                Some(tokenizer) => text.push_str(&decoder.push(tokenizer, token)?),
                None => write!(stdout, "{token} ")?,
            }
        }
        let done = step.finished.iter().find(|c| c.id == id);
        // The final text is the engine's (cut at a stop string); before it, all but the tail.
        let shown = match done.and_then(|c| c.text.as_deref()) {
            Some(final_text) => final_text,
            None => {
                let mut end = text.len().saturating_sub(hold_back);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                &text[..end]
            }
        };
        if shown.len() > printed && shown.is_char_boundary(printed) {
            write!(stdout, "{}", &shown[printed..])?;
            printed = shown.len();
        }
        stdout.flush()?;
    }
    writeln!(stdout)?;
    Ok(ExitCode::SUCCESS)
}

/// Prompts (from `source`, each with its line), batched; completions printed in input order, a
/// prompt's samples in order. A refused prompt is reported with its line, the others still run,
/// and the exit code says something was refused.
fn generate_batch(
    llm: &mut LLM,
    source: &str,
    prompts: Vec<(usize, Prompt)>,
    args: &GenerateArgs,
    params: &SamplingParams,
) -> anyhow::Result<ExitCode> {
    let lines: Vec<usize> = prompts.iter().map(|(line, _)| *line).collect();
    let prompts = prompts
        .into_iter()
        .map(|(_, prompt)| match prompt {
            Prompt::Text(text) => with_template(llm, text, args),
            tokens => Ok(tokens),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outputs = llm.generate_until(prompts, params, &crate::interrupted)?;
    let mut refused = 0;
    // Each prompt gives one refusal, or its samples from index 0 on.
    let mut lines = lines.into_iter();
    let mut line = 0;
    for output in outputs {
        if matches!(&output, Err(_) | Ok(Completion { index: 0, .. })) {
            line = lines.next().expect("one line per prompt");
        }
        let sample = match &output {
            Ok(completion) if params.n > 1 => format!(" (sample {})", completion.index),
            _ => String::new(),
        };
        match output {
            Ok(completion) if args.json => println!("{}", completion_json(line, &completion)),
            Ok(completion) => match completion.text {
                Some(text) => println!("--- {source}:{line}{sample}\n{text}"),
                None => println!("--- {source}:{line}{sample}\n{:?}", completion.token_ids),
            },
            Err(error) => {
                refused += 1;
                eprintln!("error: {source}:{line}: {error}");
            }
        }
    }
    Ok(if refused == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A completion as one JSON line: vLLM's field names where it has them (`index`, `finish_reason`,
/// `stop_reason`: the stop token id or string, null for EOS or length; `logprobs`: per token, its
/// log-probability and the most likely tokens').
fn completion_json(line: usize, completion: &Completion) -> serde_json::Value {
    let stop_reason = match &completion.stop_reason {
        Some(StopReason::Token(id)) => serde_json::json!(id),
        Some(StopReason::Text(text)) => serde_json::json!(text),
        None => serde_json::Value::Null,
    };
    let logprobs = completion.logprobs.as_ref().map(|tokens| {
        tokens
            .iter()
            .map(|t| serde_json::json!({"token_id": t.token, "logprob": t.logprob, "top_logprobs": t.top}))
            .collect::<Vec<_>>()
    });
    serde_json::json!({
        "line": line,
        "index": completion.index,
        "text": completion.text,
        "token_ids": completion.token_ids,
        "finish_reason": completion.finish_reason.name(),
        "stop_reason": stop_reason,
        "logprobs": logprobs,
    })
}
