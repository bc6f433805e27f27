//! `nanovllm-cli generate`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, ValueEnum};
use engine::{
    CacheDtype, DeviceChoice, EngineConfig, LLM, LoadFormat, Prompt, SamplingParams, StreamDecoder,
};

use crate::prompts::read_prompts_file;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Device {
    /// The GPU when this build has CUDA support and one is present, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// The directory's safetensors checkpoint.
    Safetensors,
    /// Random weights from config.json alone (seeded by --seed).
    Dummy,
}

#[derive(Args)]
pub(crate) struct GenerateArgs {
    /// A model directory, or a Hugging Face model id (org/name) to fetch into the HF cache.
    #[arg(long)]
    model: String,
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
    /// KV cache dtype: bf16, int8 (1.97x the tokens), f16 or f32 (exact reference; f16 and f32 on
    /// the CPU only).
    #[arg(long, default_value = "bf16")]
    kv_cache_dtype: CacheDtype,
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
    /// Seed of the sampler (and of dummy weights): the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Where the weights come from.
    #[arg(long, value_enum, default_value = "safetensors")]
    load_format: Format,
    /// Memory for the KV cache, in GiB (emulates a smaller GPU). Default: 0.25 on the CPU; on a
    /// GPU, what --gpu-memory-utilization leaves after the weights and activations.
    #[arg(long)]
    kv_cache_memory_gib: Option<f64>,
    /// Fraction of the GPU's memory the engine may use in all.
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// Token slots per KV cache block.
    #[arg(long, default_value_t = 256)]
    block_size: usize,
    /// Longest sequence (prompt + generated). Default: the model's context, at most 4096.
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Sequences running at once.
    #[arg(long, default_value_t = 512)]
    max_num_seqs: usize,
    /// Tokens computed per step (longer prefills are chunked).
    #[arg(long, default_value_t = 16384)]
    max_num_batched_tokens: usize,
    /// With --prompts-file: print one JSON object per prompt instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let choice = match args.device {
        Device::Auto => DeviceChoice::Auto,
        Device::Cpu => DeviceChoice::Cpu,
        Device::Cuda => DeviceChoice::Cuda,
    };
    let (device, line) = engine::resolve_device(choice)?;
    eprintln!("{line}");
    if let Some(gib) = args.kv_cache_memory_gib.filter(|g| !(g.is_finite() && *g > 0.0)) {
        bail!("--kv-cache-memory-gib {gib}: must be a positive number");
    }
    if !(args.gpu_memory_utilization > 0.0 && args.gpu_memory_utilization <= 1.0) {
        bail!("--gpu-memory-utilization {}: must be in (0, 1]", args.gpu_memory_utilization);
    }
    let dir = engine::resolve_model(&args.model)?;
    let config = EngineConfig {
        kv_cache_dtype: args.kv_cache_dtype,
        device,
        kv_cache_memory_bytes: args.kv_cache_memory_gib.map(|gib| (gib * (1u64 << 30) as f64) as usize),
        gpu_memory_utilization: args.gpu_memory_utilization,
        block_size: args.block_size,
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_model_len: args.max_model_len,
        seed: args.seed,
        progress: args.prompts_file.is_some(),
    };
    let format = match args.load_format {
        Format::Safetensors => LoadFormat::Safetensors,
        Format::Dummy => LoadFormat::Dummy,
    };
    let mut llm = LLM::load(&dir, config, format)?;
    eprintln!("{}", llm.describe_cache());
    let defaults = llm.default_sampling();
    let params = SamplingParams {
        temperature: args.temperature.unwrap_or(defaults.temperature),
        top_k: args.top_k.or(defaults.top_k),
        top_p: args.top_p.unwrap_or(defaults.top_p),
        max_tokens: args.max_tokens,
        ignore_eos: args.ignore_eos,
        seed: Some(args.seed),
        ..defaults
    };
    params.validate()?;
    match (&args.prompt, &args.prompts_file) {
        (Some(prompt), _) => stream_one(&mut llm, prompt, &args, params),
        (None, Some(path)) => generate_batch(&mut llm, read_prompts_file(path)?, &args, &params),
        (None, None) => unreachable!("clap requires --prompt or --prompts-file"),
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
    let outputs = llm.generate(prompts, params)?;
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
