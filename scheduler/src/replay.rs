//! A workload's schedule with no model. When every request generates exactly its `max_tokens`
//! (benchmarks ignore EOS), the policy sees the sampled tokens only through prefix-cache matches,
//! and those a fixed token keeps (a block's hash chains its sequence's whole prefix). So the steps,
//! the sequences running at once and the preemptions of a benchmark are known without running it:
//! on any machine, in milliseconds, for any KV budget or workload seed.

use crate::{Batch, SamplingParams, ScheduleError, Scheduler, SchedulerConfig};

/// What the policy did over a workload, counted as the engine counts its steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleStats {
    /// Model steps, prefill and decode.
    pub steps: usize,
    /// Steps that decode (one token for each running sequence; under the mixed policy, beside
    /// prefill chunks).
    pub decode_steps: usize,
    /// Prompt tokens computed, those of preempted sequences again (prefix-cache hits excluded).
    pub prefill_tokens: usize,
    /// Tokens decoded.
    pub decode_tokens: usize,
    /// Most sequences holding cache blocks at once.
    pub peak_running: usize,
    /// Sequences preempted (their blocks freed, to be prefilled again).
    pub preemptions: usize,
}

impl ScheduleStats {
    /// Sequences in the average decode step: what the cache held while decoding, tail included.
    pub fn mean_decode_batch(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_steps.max(1) as f64
    }

    /// Count a step about to run, scheduled while `num_running` sequences held blocks.
    pub fn record(&mut self, batch: &Batch, num_running: usize) {
        self.steps += 1;
        self.peak_running = self.peak_running.max(num_running);
        self.prefill_tokens += batch.num_prefill_tokens();
        if batch.decodes > 0 {
            self.decode_steps += 1;
            self.decode_tokens += batch.decodes;
        }
    }
}

/// Run `(prompt, max_tokens)` requests through a scheduler of `config` until each has generated
/// exactly `max_tokens` tokens, feeding it a fixed token in place of the model's.
pub fn replay(
    config: SchedulerConfig,
    requests: impl IntoIterator<Item = (Vec<u32>, usize)>,
) -> Result<ScheduleStats, ScheduleError> {
    let mut scheduler = Scheduler::new(config)?;
    for (prompt, max_tokens) in requests {
        scheduler
            .add(prompt, SamplingParams { max_tokens, ignore_eos: true, ..SamplingParams::default() })?;
    }
    let mut stats = ScheduleStats::default();
    while !scheduler.is_finished() {
        let batch = scheduler.schedule();
        if batch.is_empty() {
            break;
        }
        stats.record(&batch, scheduler.num_running());
        scheduler.postprocess(&batch, &vec![0; batch.num_samples()])?;
    }
    stats.preemptions = scheduler.num_preemptions();
    Ok(stats)
}
