//! `nanovllm-cli generate`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use nanovllm::{LLM, Prompt, SamplingParams, StreamDecoder};

use crate::engine_args::EngineArgs;
use crate::prompts::read_prompts_file;

#[derive(Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The prompt (its completion is streamed to stdout).
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
    /// Sampling temperature (0: greedy). Default: the model's generation_config.json, else 1.
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the k most likely tokens. Default: the model's generation_config.json, else all.
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold in (0, 1]. Default: the model's generation_config.json, else 1.
    #[arg(long)]
    top_p: Option<f32>,
    /// Tokens to generate at most, per prompt.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// With --prompts-file: print one JSON object per prompt instead of text.
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
        (Some(prompt), _) => stream_one(&mut llm, prompt, &args, params),
        (None, Some(path)) => generate_batch(&mut llm, read_prompts_file(path)?, &args, &params),
        (None, None) => unreachable!("clap requires --prompt or --prompts-file"),
    }
}

impl GenerateArgs {
    /// The flags' sampling values over `defaults` (the model's generation_config.json).
    fn sampling(&self, defaults: SamplingParams) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.or(defaults.top_k),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            max_tokens: self.max_tokens,
            ignore_eos: self.ignore_eos,
            seed: Some(self.engine.seed),
            ..defaults
        }
    }
}

fn with_template(llm: &LLM, text: String, args: &GenerateArgs) -> anyhow::Result<Prompt> {
    Ok(Prompt::Text(if args.chat { llm.chat_prompt(&text, !args.no_thinking)? } else { text }))
}

/// One prompt, its tokens printed as they are generated.
fn stream_one(
    llm: &mut LLM,
    prompt: &str,
    args: &GenerateArgs,
    params: SamplingParams,
) -> anyhow::Result<ExitCode> {
    let prompt = with_template(llm, prompt.to_owned(), args)?;
    let id = llm.add_request(prompt, params)?;
    let mut decoder = StreamDecoder::default();
    let mut stdout = std::io::stdout().lock();
    while !llm.is_finished() {
        if crate::interrupted() {
            llm.abort_all();
            writeln!(stdout)?;
            return Err(nanovllm::EngineError::Interrupted.into());
        }
        for (seq, token) in llm.step()?.tokens {
            if seq != id {
                continue;
            }
            match llm.tokenizer() {
                Some(tokenizer) => write!(stdout, "{}", decoder.push(tokenizer, token)?)?,
                None => write!(stdout, "{token} ")?,
            }
            stdout.flush()?;
        }
    }
    writeln!(stdout)?;
    Ok(ExitCode::SUCCESS)
}

/// A file of prompts, batched; completions printed in input order. A refused prompt is reported
/// with its line, the others still run, and the exit code says something was refused.
fn generate_batch(
    llm: &mut LLM,
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
    let path = args.prompts_file.as_ref().expect("batch mode has a prompts file").display();
    for (line, output) in lines.iter().zip(outputs) {
        match output {
            Ok(completion) if args.json => println!(
                "{}",
                serde_json::json!({
                    "line": line,
                    "text": completion.text,
                    "token_ids": completion.token_ids,
                    "finish_reason": format!("{:?}", completion.finish_reason).to_lowercase(),
                })
            ),
            Ok(completion) => match completion.text {
                Some(text) => println!("--- {path}:{line}\n{text}"),
                None => println!("--- {path}:{line}\n{:?}", completion.token_ids),
            },
            Err(error) => {
                refused += 1;
                eprintln!("error: {path}:{line}: {error}");
            }
        }
    }
    Ok(if refused == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
