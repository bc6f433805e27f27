//! The continuous-batching scheduler of nanovllm: which sequences the model runs next.
//!
//! This crate's one job is the policy, with no model and no tensors: requests come in as token
//! ids with [`SamplingParams`]; each [`Scheduler::schedule`] returns a [`Batch`] (a prefill step
//! of prompt chunks, or a decode step of one token per sequence); the model runs it and hands the
//! sampled tokens to [`Scheduler::postprocess`], which returns the sequences that finished.
//! Blocks of the paged KV cache are allocated, shared by prefix and freed here, through
//! [`nanovllm_kv_cache::BlockManager`].
//!
//! # Example
//!
//! A "model" that always answers `prompt length + position`, run to completion:
//!
//! ```
//! use nanovllm_scheduler::{SamplingParams, Scheduler, SchedulerConfig};
//!
//! let mut scheduler = Scheduler::new(SchedulerConfig::new(64, 16, 256))?;
//! scheduler.add(vec![1, 2, 3], SamplingParams::greedy(4))?;
//! scheduler.add(vec![4, 5], SamplingParams::greedy(2))?;
//!
//! let mut outputs = Vec::new();
//! while !scheduler.is_finished() {
//!     let batch = scheduler.schedule();
//!     let sampled: Vec<u32> = batch
//!         .seqs
//!         .iter()
//!         .flat_map(|s| std::iter::repeat_n((s.start + s.num_tokens) as u32 * 10, s.samples))
//!         .collect();
//!     for seq in scheduler.postprocess(&batch, &sampled)? {
//!         outputs.push((seq.id, seq.completion().to_vec()));
//!     }
//! }
//! outputs.sort();
//! assert_eq!(outputs, [(0, vec![30, 40, 50, 60]), (1, vec![20, 30])]);
//! # Ok::<(), nanovllm_scheduler::ScheduleError>(())
//! ```

mod error;
mod replay;
mod sampling;
mod scheduler;
mod sequence;

pub use error::ScheduleError;
pub use replay::{ScheduleStats, replay};
pub use sampling::{MAX_LOGPROBS, SamplingParams};
pub use scheduler::{Batch, Fork, Phase, ScheduledSeq, Scheduler, SchedulerConfig, StepPolicy};
pub use sequence::{FinishReason, SeqId, Sequence, Status, StopReason};
