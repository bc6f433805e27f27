//! nano-vllm's progress bar: requests done, with prefill and decode throughput.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use nanovllm_scheduler::Phase;

/// A progress bar over requests (hidden when disabled or when stderr is not a terminal), for
/// front ends that step the engine themselves.
pub struct Progress {
    bar: ProgressBar,
    prefill_tps: f64,
    decode_tps: f64,
}

impl Progress {
    /// A bar over `requests` requests, drawn when `enabled` (and stderr is a terminal).
    pub fn new(requests: usize, enabled: bool) -> Self {
        let bar = if enabled { ProgressBar::new(requests as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("Generating {bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
                .expect("the template is valid"),
        );
        Progress { bar, prefill_tps: 0.0, decode_tps: 0.0 }
    }

    /// One step done: its phase, the tokens it computed, the requests it finished, its time.
    pub fn step(&mut self, phase: Option<Phase>, tokens: usize, finished: usize, took: Duration) {
        let rate = tokens as f64 / took.as_secs_f64().max(1e-9);
        match phase {
            Some(Phase::Prefill) => self.prefill_tps = rate,
            Some(Phase::Decode) => self.decode_tps = rate,
            None => {}
        }
        self.bar.set_message(format!(
            "Prefill: {:.0} tok/s, Decode: {:.0} tok/s",
            self.prefill_tps, self.decode_tps
        ));
        self.bar.inc(finished as u64);
    }

    /// Clear the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
