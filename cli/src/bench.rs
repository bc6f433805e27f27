//! `nanovllm-cli bench`: throughput on nano-vllm's bench.py workload (or another).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use nanovllm::{CacheDtype, LLM, Prompt, SamplingParams, ScheduleStats};
use serde_json::{Value, json};

use crate::engine_args::EngineArgs;
use crate::sampling_args::SamplingArgs;
use crate::workload::{Shape, Workload};

/// Where `bench` takes the sampling values its flags do not give.
#[derive(Clone, Copy, ValueEnum)]
enum SamplingDefaults {
    /// nano-vllm's bench.py: temperature 0.6 (the baseline of every recorded figure).
    NanoVllm,
    /// The model's generation_config.json, as vLLM serves it.
    Model,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Requests (nano-vllm: 256).
    #[arg(long, default_value_t = 256)]
    num_seqs: usize,
    /// Shortest prompt, in tokens.
    #[arg(long, default_value_t = 100)]
    min_input_len: u32,
    /// Longest prompt, in tokens.
    #[arg(long, default_value_t = 1024)]
    max_input_len: u32,
    /// Fewest tokens to generate per request.
    #[arg(long, default_value_t = 100)]
    min_output_len: u32,
    /// Most tokens to generate per request.
    #[arg(long, default_value_t = 1024)]
    max_output_len: u32,
    /// Seed of the workload generator (CPython's `random.seed`).
    #[arg(long, default_value_t = 0)]
    workload_seed: u64,
    /// A JSONL workload instead: {"prompt_token_ids": [...], "max_tokens": N} per line.
    #[arg(long)]
    workload: Option<PathBuf>,
    /// Where sampling values not given by flags come from: nano-vllm's bench.py (temperature 0.6,
    /// nothing else) or the model's generation_config.json (Qwen3: temperature 0.6, top-k 20,
    /// top-p 0.95).
    #[arg(long, value_enum, default_value = "nano-vllm")]
    sampling: SamplingDefaults,
    /// Sampling of every request, over the --sampling defaults.
    #[command(flatten)]
    sampling_flags: SamplingArgs,
    /// Skip the warm-up request that runs before the timed workload.
    #[arg(long)]
    no_warmup: bool,
    /// Replay the workload through the scheduler alone, with the KV blocks that
    /// --kv-cache-memory-gib holds for the model's config.json: the steps, peak running sequences
    /// and preemptions of the real run (its requests ignore EOS), in milliseconds, with no weights.
    #[arg(long)]
    schedule_only: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let workload = match &args.workload {
        Some(path) => Workload::from_jsonl(path)?,
        None => {
            for (name, (low, high)) in [
                ("input", (args.min_input_len, args.max_input_len)),
                ("output", (args.min_output_len, args.max_output_len)),
            ] {
                if low == 0 || low > high {
                    anyhow::bail!("--min-{name}-len {low} and --max-{name}-len {high}: need 1 <= min <= max");
                }
            }
            Workload::nano_vllm(&Shape {
                num_seqs: args.num_seqs,
                input_len: (args.min_input_len, args.max_input_len),
                output_len: (args.min_output_len, args.max_output_len),
                max_token_id: 10000,
                seed: args.workload_seed,
            })
        }
    };
    if args.schedule_only {
        return schedule_only(&args, &workload);
    }
    let nano_vllm = SamplingParams { temperature: 0.6, ..SamplingParams::default() };
    args.sampling_flags.over(nano_vllm.clone()).validate()?;
    let mut llm = args.engine.load(false)?;
    let defaults = match args.sampling {
        SamplingDefaults::NanoVllm => nano_vllm,
        SamplingDefaults::Model => llm.default_sampling(),
    };
    let sampling = args.sampling_flags.over(defaults);
    let params = |max_tokens| SamplingParams { max_tokens, ignore_eos: true, ..sampling.clone() };
    // Steady steps are what is timed: every decode graph captured first, as vLLM does before
    // serving (outside the timing either way).
    llm.capture_cuda_graphs()?;
    if !args.no_warmup {
        llm.generate(vec![Prompt::Tokens(vec![1, 2, 3, 4])], &params(4))?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        llm.reset_stats();
    }
    let started = Instant::now();
    for (prompt, &max_tokens) in workload.prompts.iter().zip(&workload.max_tokens) {
        llm.add_request(Prompt::Tokens(prompt.clone()), params(max_tokens))?;
    }
    let mut output_tokens = 0;
    while !llm.is_finished() {
        if crate::interrupted() {
            llm.abort_all();
            return Err(nanovllm::EngineError::Interrupted.into());
        }
        output_tokens += llm.step()?.tokens.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    report(&llm, &workload, &sampling, output_tokens, seconds, args.json);
    Ok(ExitCode::SUCCESS)
}

fn schedule_only(args: &BenchArgs, workload: &Workload) -> anyhow::Result<ExitCode> {
    let config = args.engine.config()?;
    let (Some(budget), Some(gib)) = (config.kv_cache_memory_bytes, args.engine.kv_cache_memory_gib) else {
        anyhow::bail!(
            "--schedule-only needs --kv-cache-memory-gib: without it the cache is what the GPU has free after loading"
        );
    };
    let dir = args.engine.model_dir()?;
    let model = nanovllm::Qwen3Config::from_file(&dir.join("config.json"))?;
    let scheduler = config.scheduler_config(&model, budget)?;
    let (num_blocks, block_size) = (scheduler.num_blocks, scheduler.block_size);
    let requests = workload.prompts.iter().cloned().zip(workload.max_tokens.iter().copied());
    let stats = nanovllm::replay(scheduler, requests)?;
    let report = schedule_report(workload, &stats, config.kv_cache_dtype, num_blocks, block_size);
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} requests on {num_blocks} blocks of {block_size} ({} KV cache, {gib} GiB): {} steps ({} decode), peak {} running sequences, {} preemptions, {:.1} sequences per decode step, {} prompt tokens computed",
            workload.prompts.len(),
            config.kv_cache_dtype,
            stats.steps,
            stats.decode_steps,
            stats.peak_running,
            stats.preemptions,
            stats.mean_decode_batch(),
            stats.prefill_tokens
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What the schedule did, named alike in a run's report and in its replay's.
fn schedule_report(
    workload: &Workload,
    stats: &ScheduleStats,
    dtype: CacheDtype,
    num_blocks: usize,
    block_size: usize,
) -> Value {
    json!({
        "requests": workload.prompts.len(),
        "steps": stats.steps,
        "decode_steps": stats.decode_steps,
        "prefill_tokens": stats.prefill_tokens,
        "decode_tokens": stats.decode_tokens,
        "mean_decode_batch": stats.mean_decode_batch(),
        "peak_running_sequences": stats.peak_running,
        "preemptions": stats.preemptions,
        "kv_cache_dtype": dtype.name(),
        "kv_blocks": num_blocks,
        "kv_block_size": block_size,
        "kv_tokens": num_blocks * block_size,
    })
}

fn report(
    llm: &LLM,
    workload: &Workload,
    sampling: &SamplingParams,
    output_tokens: usize,
    seconds: f64,
    as_json: bool,
) {
    let stats = llm.stats();
    let blocks = llm.scheduler().block_manager();
    let prompt_tokens: usize = workload.prompts.iter().map(Vec::len).sum();
    let schedule = &stats.schedule;
    let mut report = schedule_report(
        workload,
        schedule,
        llm.config().kv_cache_dtype,
        blocks.num_blocks(),
        blocks.block_size(),
    );
    report["prompt_tokens"] = json!(prompt_tokens);
    // f32 values as written (0.6, not 0.6000000238418579).
    let value = |x: f32| x.to_string().parse::<f64>().unwrap_or(f64::from(x));
    report["sampling"] = json!({
        "temperature": value(sampling.temperature),
        "top_k": sampling.top_k,
        "top_p": value(sampling.top_p),
        "min_p": value(sampling.min_p),
        "presence_penalty": value(sampling.presence_penalty),
        "frequency_penalty": value(sampling.frequency_penalty),
        "repetition_penalty": value(sampling.repetition_penalty),
        "logprobs": sampling.logprobs,
    });
    report["output_tokens"] = json!(output_tokens);
    report["seconds"] = json!(seconds);
    report["output_tokens_per_second"] = json!(output_tokens as f64 / seconds);
    report["prefill_tokens_per_second"] =
        json!(schedule.prefill_tokens as f64 / stats.prefill_seconds.max(1e-9));
    report["decode_tokens_per_second"] =
        json!(schedule.decode_tokens as f64 / stats.decode_seconds.max(1e-9));
    // Where the steps' time goes: the engine's host work outside the forward pass, and the GPU
    // model's preparation of each step before its kernels are queued; the GPU waits through both.
    let step_seconds = stats.prefill_seconds + stats.decode_seconds;
    report["step_seconds"] = json!(step_seconds);
    report["host_seconds"] = json!(step_seconds - stats.forward_seconds);
    report["prepare_seconds"] = json!(stats.prepare_seconds);
    if as_json {
        println!("{report}");
        return;
    }
    println!(
        "{} requests, {} prompt tokens, {} output tokens in {:.2} s: {:.0} output tok/s",
        workload.prompts.len(),
        prompt_tokens,
        output_tokens,
        seconds,
        output_tokens as f64 / seconds
    );
    println!(
        "prefill {:.0} tok/s, decode {:.0} tok/s, {} steps, peak {} running sequences, {} preemptions",
        report["prefill_tokens_per_second"].as_f64().unwrap_or(0.0),
        report["decode_tokens_per_second"].as_f64().unwrap_or(0.0),
        schedule.steps,
        schedule.peak_running,
        schedule.preemptions
    );
    println!(
        "steps {:.2} s: {:.3} s of engine host work outside the forward pass, {:.3} s preparing steps before their kernels are queued",
        step_seconds,
        step_seconds - stats.forward_seconds,
        stats.prepare_seconds
    );
    println!("{}", llm.describe_cache());
    println!("sampling: {}", report["sampling"]);
}
