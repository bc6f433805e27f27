//! The scheduler driven by a fake model whose next token is a hash of every token it reads back
//! from a simulated KV cache through the block table. A request's output therefore depends only
//! on its own tokens, so every schedule (tight budgets, preemption, chunked prefill, prefix hits)
//! must reproduce the output of an unconstrained run, token for token; and a block table that
//! points at the wrong K/V changes the output or trips an assertion. Requests with `n` samples
//! fork siblings whose first tokens differ, and whose copied blocks the fake cache copies as the
//! engine does.

use std::collections::BTreeMap;

use nanovllm_scheduler::{
    Batch, FinishReason, Phase, SamplingParams, ScheduleError, ScheduleStats, Scheduler, SchedulerConfig,
    SeqId, StepPolicy, replay,
};
use proptest::prelude::*;

const VOCAB: u32 = 64;
const EOS: u32 = 0;

/// A simulated KV cache: which (token, position) each slot holds.
struct FakeModel {
    slots: Vec<Option<(u32, usize)>>,
}

impl FakeModel {
    fn new(scheduler: &Scheduler) -> Self {
        let m = scheduler.block_manager();
        FakeModel { slots: vec![None; m.num_blocks() * m.block_size()] }
    }

    /// Writes the K/V of every scheduled token, then reads each sampling sequence's whole history
    /// back through its block table and hashes it.
    fn step(&mut self, scheduler: &Scheduler, batch: &Batch) -> Vec<u32> {
        let block_size = scheduler.block_manager().block_size();
        for item in &batch.seqs {
            let seq = scheduler.sequence(item.id).unwrap();
            for pos in item.start..item.start + item.num_tokens {
                let slot = seq.block_table.slot(pos, block_size).unwrap_or_else(|| {
                    panic!("no slot: {item:?} {pos} len {} table {:?}", seq.len(), seq.block_table)
                });
                self.slots[slot] = Some((seq.token_ids[pos], pos));
            }
        }
        let mut sampled = Vec::new();
        for item in batch.seqs.iter().filter(|s| s.samples > 0) {
            let seq = scheduler.sequence(item.id).unwrap();
            let end = item.start + item.num_tokens;
            assert_eq!(end, seq.len(), "a sampling chunk ends at the last token");
            let mut hash = 0xcbf29ce484222325u64;
            for pos in 0..end {
                let slot = seq.block_table.slot(pos, block_size).unwrap();
                assert_eq!(self.slots[slot], Some((seq.token_ids[pos], pos)), "seq {} pos {pos}", item.id);
                hash = (hash ^ u64::from(seq.token_ids[pos])).wrapping_mul(0x100000001b3);
            }
            // Sibling i's first token: another hash of the same history.
            for i in 0..item.samples as u64 {
                sampled.push(((hash ^ i.wrapping_mul(0x9e3779b97f4a7c15)) >> 33) as u32 % VOCAB);
            }
        }
        sampled
    }

    /// Copy the blocks the last step's forks got copies of, as the engine copies K/V.
    fn copy_forked_blocks(&mut self, scheduler: &Scheduler) {
        let block_size = scheduler.block_manager().block_size();
        for fork in scheduler.forks() {
            if let Some((from, to)) = fork.copy {
                let (from, to) = (from as usize * block_size, to as usize * block_size);
                self.slots.copy_within(from..from + block_size, to);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Request {
    prompt: Vec<u32>,
    max_tokens: usize,
    ignore_eos: bool,
    n: usize,
}

/// Which request (by the order it was added in) and which of its samples each sequence is.
#[derive(Debug, Default)]
struct Samples {
    of: BTreeMap<SeqId, (usize, usize)>,
    added: usize,
}

impl Samples {
    fn add(&mut self, scheduler: &mut Scheduler, r: &Request) {
        let params =
            SamplingParams { ignore_eos: r.ignore_eos, n: r.n, ..SamplingParams::greedy(r.max_tokens) };
        let id = scheduler.add(r.prompt.clone(), params).unwrap();
        self.of.insert(id, (self.added, 0));
        self.added += 1;
    }

    fn record_forks(&mut self, scheduler: &Scheduler) {
        for fork in scheduler.forks() {
            let (request, _) = self.of[&fork.parent];
            self.of.insert(fork.child, (request, fork.index));
        }
    }
}

#[derive(Debug, Default)]
struct Run {
    /// Each request's outputs, by the order it was added in and the sample's index.
    outputs: BTreeMap<(usize, usize), Vec<u32>>,
    /// Prompt tokens computed in prefill steps.
    prefill_tokens: usize,
    preemptions: usize,
    cached_tokens: usize,
    chunked: bool,
    /// Counted as `replay` counts.
    schedule: ScheduleStats,
}

fn run(config: SchedulerConfig, requests: &[Request]) -> Run {
    let max_model_len = config.max_model_len;
    let mut scheduler = Scheduler::new(config).unwrap();
    let mut samples = Samples::default();
    for r in requests {
        samples.add(&mut scheduler, r);
    }
    let mut model = FakeModel::new(&scheduler);
    let mut result = Run::default();
    // A generous bound on steps: every request needs at most its length in steps, and each
    // preemption costs one recompute of at most max_model_len tokens.
    let mut steps_left =
        requests.iter().map(|r| (r.prompt.len() + r.max_tokens) * r.n).sum::<usize>() * 4 + 100;
    while !scheduler.is_finished() {
        steps_left = steps_left.checked_sub(1).expect("a request starved");
        let batch = scheduler.schedule();
        assert!(!batch.is_empty(), "nothing scheduled with requests pending");
        assert!(batch.num_tokens() <= scheduler.config().max_num_batched_tokens);
        assert!(batch.seqs.len() <= scheduler.config().max_num_seqs);
        assert!(batch.seqs[..batch.decodes].iter().all(|s| s.num_tokens == 1 && s.samples >= 1));
        if batch.phase == Phase::Decode {
            assert_eq!(batch.decodes, batch.seqs.len());
        }
        if let StepPolicy::Mixed { max_prefill_tokens } = scheduler.config().step_policy
            && batch.decodes > 0
        {
            let per_decode = StepPolicy::PREFILL_TOKENS_PER_DECODE;
            assert!(batch.num_prefill_tokens() <= max_prefill_tokens + per_decode * batch.decodes);
        }
        for item in &batch.seqs {
            let seq = scheduler.sequence(item.id).unwrap();
            if item.start == seq.num_cached_tokens && batch.phase == Phase::Prefill {
                result.cached_tokens += seq.num_cached_tokens;
            }
            result.chunked |= item.samples == 0;
            assert!(seq.len() <= max_model_len);
        }
        result.schedule.record(&batch, scheduler.num_running());
        result.prefill_tokens += batch.num_prefill_tokens();
        let sampled = model.step(&scheduler, &batch);
        let finished = scheduler.postprocess(&batch, &sampled).unwrap();
        model.copy_forked_blocks(&scheduler);
        samples.record_forks(&scheduler);
        for seq in finished {
            result.outputs.insert(samples.of[&seq.id], seq.completion().to_vec());
        }
    }
    result.preemptions = scheduler.num_preemptions();
    result.schedule.preemptions = result.preemptions;
    assert_eq!(scheduler.block_manager().num_free_blocks(), scheduler.block_manager().num_blocks());
    result
}

fn config(
    num_blocks: usize,
    block_size: usize,
    max_num_batched_tokens: usize,
    max_num_seqs: usize,
) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens,
        max_model_len: 4096,
        num_blocks,
        block_size,
        eos_token_ids: vec![EOS],
        step_policy: StepPolicy::PrefillFirst,
    }
}

fn mixed(config: SchedulerConfig, max_prefill_tokens: usize) -> SchedulerConfig {
    SchedulerConfig { step_policy: StepPolicy::Mixed { max_prefill_tokens }, ..config }
}

/// Requests with shared stems (prefix hits) and their own tails.
fn workload(seed: u64, count: usize, max_prompt: usize, max_tokens: usize) -> Vec<Request> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    let stems: Vec<Vec<u32>> =
        (0..3).map(|_| (0..max_prompt).map(|_| 1 + next(VOCAB as usize - 1) as u32).collect()).collect();
    (0..count)
        .map(|_| {
            let stem = &stems[next(3)];
            let mut prompt = stem[..next(max_prompt)].to_vec();
            prompt.extend((0..1 + next(8)).map(|_| 1 + next(VOCAB as usize - 1) as u32));
            let n = if next(4) == 0 { 2 + next(2) } else { 1 };
            Request { prompt, max_tokens: 1 + next(max_tokens), ignore_eos: next(2) == 0, n }
        })
        .collect()
}

fn unconstrained(requests: &[Request]) -> Run {
    run(config(100_000, 16, 1 << 20, 1 << 20), requests)
}

/// Blocks for the largest request alone: the tightest cache that must still finish everything.
fn tightest_blocks(requests: &[Request], block_size: usize) -> usize {
    requests.iter().map(|r| (r.prompt.len() + r.max_tokens).div_ceil(block_size)).max().unwrap()
}

#[test]
fn a_tight_cache_preempts_and_still_gives_the_unconstrained_tokens() {
    let requests = workload(7, 40, 60, 40);
    let reference = unconstrained(&requests);
    assert_eq!(reference.preemptions, 0);
    let tight = run(config(tightest_blocks(&requests, 4), 4, 64, 8), &requests);
    assert!(tight.preemptions > 0, "the workload is meant to preempt");
    assert!(tight.chunked, "the workload is meant to chunk prefills");
    assert_eq!(tight.outputs, reference.outputs);
    let tight_mixed = run(mixed(config(tightest_blocks(&requests, 4), 4, 64, 8), 16), &requests);
    assert!(tight_mixed.preemptions > 0, "the workload is meant to preempt");
    assert_eq!(tight_mixed.outputs, reference.outputs);
}

#[test]
fn mixed_steps_decode_every_running_sequence_beside_bounded_prefill_chunks() {
    let mut scheduler = Scheduler::new(mixed(config(64, 4, 64, 8), 8)).unwrap();
    let mut model = FakeModel::new(&scheduler);
    let first = scheduler.add(vec![1, 2, 3], SamplingParams::greedy(20)).unwrap();
    let batch = scheduler.schedule();
    assert_eq!((batch.phase, batch.decodes, batch.num_tokens()), (Phase::Prefill, 0, 3));
    let sampled = model.step(&scheduler, &batch);
    scheduler.postprocess(&batch, &sampled).unwrap();
    // A 60-token prompt arrives while the first decodes: it is prefilled 8 + 8 tokens a step (8,
    // and 8 for the one decoding sequence), and the first decodes in every one of those steps.
    let second = scheduler.add((1..=60).collect(), SamplingParams::greedy(2)).unwrap();
    let mut chunks = Vec::new();
    while scheduler.sequence(second).unwrap().completion().is_empty() {
        let batch = scheduler.schedule();
        assert_eq!(batch.seqs[0].id, first, "the running sequence decodes first: {batch:?}");
        assert_eq!(batch.decodes, 1);
        chunks.extend(batch.seqs[batch.decodes..].iter().map(|s| s.num_tokens));
        let sampled = model.step(&scheduler, &batch);
        scheduler.postprocess(&batch, &sampled).unwrap();
    }
    assert_eq!(chunks, [16, 16, 16, 12]);
}

#[test]
fn n_samples_compute_the_prompt_once_and_differ_from_their_first_token() {
    for (prompt_len, block_size) in [(10, 4), (12, 4)] {
        let prompt: Vec<u32> = (1..=prompt_len).collect();
        let requests = [Request { prompt, max_tokens: 6, ignore_eos: true, n: 4 }];
        let run = run(config(64, block_size, 4096, 8), &requests);
        assert_eq!(
            run.prefill_tokens, prompt_len as usize,
            "the prompt is computed once for the four samples"
        );
        assert_eq!(run.outputs.len(), 4);
        let firsts: std::collections::BTreeSet<u32> = run.outputs.values().map(|o| o[0]).collect();
        assert_eq!(firsts.len(), 4, "each sample's first token is its own draw: {:?}", run.outputs);
        assert!(run.outputs.values().all(|o| o.len() == 6));
    }
    // Too many samples for max_num_seqs can never run.
    let mut scheduler = Scheduler::new(config(64, 4, 4096, 3)).unwrap();
    assert_eq!(
        scheduler.add(vec![1, 2], SamplingParams { n: 4, ..SamplingParams::greedy(2) }),
        Err(ScheduleError::TooManySamples { n: 4, max_num_seqs: 3 })
    );
}

#[test]
fn shared_prefixes_are_served_from_the_cache() {
    let requests = workload(3, 30, 80, 10);
    // Admitted a few at a time, later prompts find the stems that earlier ones computed.
    let staggered = run(config(400, 8, 256, 4), &requests);
    assert!(staggered.cached_tokens > 0, "stems are shared, so some prompt blocks are hits");
    assert_eq!(staggered.outputs, unconstrained(&requests).outputs);
}

#[test]
fn max_num_seqs_bounds_the_running_set() {
    let requests = workload(11, 30, 20, 20);
    let limited = run(config(1000, 16, 4096, 3), &requests);
    assert!(limited.schedule.peak_running <= 3);
    assert_eq!(limited.outputs, unconstrained(&requests).outputs);
}

#[test]
fn a_replay_schedules_as_the_model_did_when_no_request_stops_early() {
    let requests: Vec<Request> =
        workload(5, 40, 60, 40).into_iter().map(|r| Request { ignore_eos: true, n: 1, ..r }).collect();
    let tight = config(tightest_blocks(&requests, 4), 4, 64, 8);
    for config in [tight, config(400, 8, 256, 4), config(100_000, 16, 1 << 20, 1 << 20)] {
        let model_run = run(config.clone(), &requests);
        let replayed = replay(config.clone(), requests.iter().map(|r| (r.prompt.clone(), r.max_tokens)));
        assert_eq!(replayed.unwrap(), model_run.schedule, "{config:?}");
    }
    let tight_run = run(config(tightest_blocks(&requests, 4), 4, 64, 8), &requests);
    assert!(tight_run.preemptions > 0, "the tight cache is meant to preempt");
    assert!(tight_run.cached_tokens > 0, "stems are meant to be prefix hits");
}

#[test]
fn bad_requests_are_rejected_alone_and_the_others_finish() {
    let mut scheduler =
        Scheduler::new(SchedulerConfig { eos_token_ids: vec![EOS], ..SchedulerConfig::new(4, 4, 32) })
            .unwrap();
    let ok = scheduler.add(vec![5, 6, 7], SamplingParams::greedy(5)).unwrap();
    assert_eq!(scheduler.add(vec![], SamplingParams::greedy(5)), Err(ScheduleError::EmptyPrompt));
    assert!(matches!(
        scheduler.add(vec![1; 30], SamplingParams::greedy(5)),
        Err(ScheduleError::TooLong { total: 35, max_model_len: 32, .. })
    ));
    let never = scheduler.add(vec![1; 10], SamplingParams::greedy(10)).unwrap_err();
    assert_eq!(
        never.to_string(),
        "request can never fit in the KV cache: 20 tokens need 5 blocks of 4, the cache has 4"
    );
    assert!(matches!(
        scheduler.add(vec![1], SamplingParams { temperature: -1.0, ..Default::default() }),
        Err(ScheduleError::InvalidSampling { field: "temperature", .. })
    ));
    let ok2 =
        scheduler.add(vec![8, 9], SamplingParams { ignore_eos: true, ..SamplingParams::greedy(14) }).unwrap();
    let mut model = FakeModel::new(&scheduler);
    let mut done = Vec::new();
    while !scheduler.is_finished() {
        let batch = scheduler.schedule();
        let sampled = model.step(&scheduler, &batch);
        done.extend(scheduler.postprocess(&batch, &sampled).unwrap().into_iter().map(|s| s.id));
    }
    done.sort();
    assert_eq!(done, [ok, ok2]);
}

#[test]
fn a_wrong_step_output_is_an_error() {
    let mut scheduler = Scheduler::new(SchedulerConfig::new(4, 4, 32)).unwrap();
    scheduler.add(vec![1, 2], SamplingParams::greedy(2)).unwrap();
    let batch = scheduler.schedule();
    assert_eq!(
        scheduler.postprocess(&batch, &[]).unwrap_err(),
        ScheduleError::StepOutput { expected: 1, got: 0 }
    );
}

#[test]
fn eos_and_stop_tokens_end_a_request_unless_ignored() {
    let mut scheduler =
        Scheduler::new(SchedulerConfig { eos_token_ids: vec![7], ..SchedulerConfig::new(8, 4, 64) }).unwrap();
    let stops = scheduler.add(vec![1], SamplingParams::greedy(10)).unwrap();
    let ignores =
        scheduler.add(vec![1], SamplingParams { ignore_eos: true, ..SamplingParams::greedy(3) }).unwrap();
    let stop_token = scheduler
        .add(vec![1], SamplingParams { stop_token_ids: vec![9], ..SamplingParams::greedy(10) })
        .unwrap();
    let mut finished = BTreeMap::new();
    let mut step = 0;
    while !scheduler.is_finished() {
        let batch = scheduler.schedule();
        // Every sequence gets 7 (EOS) on step 1 and 9 on step 2.
        let token = [3, 7, 9][step.min(2)];
        let sampled = vec![token; batch.num_samples()];
        for seq in scheduler.postprocess(&batch, &sampled).unwrap() {
            finished.insert(seq.id, (seq.completion().to_vec(), seq.finish_reason.unwrap()));
        }
        step += 1;
    }
    use nanovllm_scheduler::FinishReason::{Length, Stop};
    assert_eq!(finished[&stops], (vec![3, 7], Stop));
    assert_eq!(finished[&ignores], (vec![3, 7, 9], Length));
    assert_eq!(finished[&stop_token], (vec![3, 7], Stop), "EOS still stops it");
}

#[test]
fn min_tokens_holds_off_stop_tokens_and_stop_reasons_name_the_token() {
    let mut scheduler =
        Scheduler::new(SchedulerConfig { eos_token_ids: vec![7], ..SchedulerConfig::new(8, 4, 64) }).unwrap();
    let held =
        scheduler.add(vec![1], SamplingParams { min_tokens: 2, ..SamplingParams::greedy(10) }).unwrap();
    let stop_token = scheduler
        .add(vec![1], SamplingParams { stop_token_ids: vec![7, 9], ..SamplingParams::greedy(10) })
        .unwrap();
    let mut finished = BTreeMap::new();
    while !scheduler.is_finished() {
        let batch = scheduler.schedule();
        let sampled = vec![7; batch.num_samples()]; // EOS every time
        for seq in scheduler.postprocess(&batch, &sampled).unwrap() {
            finished.insert(seq.id, (seq.completion().len(), seq.stop_reason.clone()));
        }
    }
    // Two tokens first, then the third (EOS) stops it.
    assert_eq!(finished[&held], (3, None));
    // A stop token that is also EOS is reported as the stop token it is.
    assert_eq!(finished[&stop_token], (1, Some(nanovllm_scheduler::StopReason::Token(7))));
}

#[test]
fn finish_ends_a_running_or_waiting_sequence_and_frees_its_blocks() {
    let mut scheduler = Scheduler::new(SchedulerConfig::new(8, 4, 64)).unwrap();
    let running = scheduler.add(vec![1, 2, 3, 4, 5], SamplingParams::greedy(10)).unwrap();
    let batch = scheduler.schedule();
    scheduler.postprocess(&batch, &[3]).unwrap();
    let waiting = scheduler.add(vec![6], SamplingParams::greedy(10)).unwrap();
    let stop = nanovllm_scheduler::StopReason::Text("end".into());
    let seq = scheduler.finish(running, FinishReason::Stop, Some(stop.clone())).unwrap();
    assert_eq!((seq.finish_reason, seq.stop_reason), (Some(FinishReason::Stop), Some(stop)));
    assert_eq!(scheduler.finish(waiting, FinishReason::Abort, None).unwrap().completion(), [0u32; 0]);
    assert!(scheduler.finish(waiting, FinishReason::Abort, None).is_none(), "already gone");
    assert!(scheduler.is_finished());
    assert_eq!(scheduler.block_manager().num_free_blocks(), 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_schedule_gives_the_unconstrained_tokens(
        seed in any::<u64>(),
        count in 1usize..25,
        max_prompt in 1usize..60,
        max_tokens in 1usize..30,
        block_size in 1usize..9,
        extra_blocks in 0usize..20,
        budget in 1usize..128,
        max_num_seqs in 1usize..10,
        mixed_prefill in proptest::option::of(1usize..64),
    ) {
        let requests: Vec<Request> = workload(seed, count, max_prompt, max_tokens)
            .into_iter()
            .map(|r| Request { n: r.n.min(max_num_seqs), ..r })
            .collect();
        let reference = unconstrained(&requests);
        let num_blocks = tightest_blocks(&requests, block_size) + extra_blocks;
        let mut constrained = config(num_blocks, block_size, budget, max_num_seqs);
        if let Some(tokens) = mixed_prefill {
            constrained = mixed(constrained, tokens);
        }
        prop_assert_eq!(run(constrained, &requests).outputs, reference.outputs);
    }

    /// Requests added and aborted (waiting, running, or already finished; parents and forked
    /// siblings) at any point: once the scheduler is idle every block is free, and the samples not
    /// aborted got exactly the tokens they get alone.
    #[test]
    fn aborts_at_any_point_free_every_block_and_leave_the_others_untouched(
        seed in any::<u64>(),
        count in 1usize..16,
        late in 0usize..16,
        aborts in proptest::collection::vec((0usize..40, 0usize..16), 0..12),
        block_size in 1usize..9,
        extra_blocks in 0usize..10,
        mixed_prefill in proptest::option::of(1usize..32),
    ) {
        let requests = workload(seed, count, 40, 20);
        let reference = unconstrained(&requests);
        let num_blocks = tightest_blocks(&requests, block_size) + extra_blocks;
        let mut config = config(num_blocks, block_size, 48, 6);
        if let Some(tokens) = mixed_prefill {
            config = mixed(config, tokens);
        }
        let mut scheduler = Scheduler::new(config).unwrap();
        let mut samples = Samples::default();
        let late = late.min(count);
        for r in &requests[..late] {
            samples.add(&mut scheduler, r);
        }
        let mut model = FakeModel::new(&scheduler);
        let (mut outputs, mut aborted) = (BTreeMap::new(), Vec::new());
        let mut step = 0;
        while step <= 3 || !scheduler.is_finished() {
            if step == 3 {
                for r in &requests[late..] {
                    samples.add(&mut scheduler, r);
                }
            }
            for &(_, victim) in aborts.iter().filter(|(at, _)| *at == step) {
                let id = victim as SeqId;
                if let Some(seq) = scheduler.finish(id, FinishReason::Abort, None) {
                    prop_assert_eq!(seq.finish_reason, Some(FinishReason::Abort));
                    aborted.push(samples.of[&id]);
                }
            }
            let batch = scheduler.schedule();
            let sampled = model.step(&scheduler, &batch);
            let finished = scheduler.postprocess(&batch, &sampled).unwrap();
            model.copy_forked_blocks(&scheduler);
            samples.record_forks(&scheduler);
            for seq in finished {
                outputs.insert(samples.of[&seq.id], seq.completion().to_vec());
            }
            step += 1;
            prop_assert!(step < 10_000, "a request starved");
        }
        let blocks = scheduler.block_manager();
        prop_assert_eq!(blocks.num_free_blocks(), blocks.num_blocks());
        for (sample, output) in &outputs {
            if !aborted.contains(sample) {
                prop_assert_eq!(Some(output), reference.outputs.get(sample), "sample {:?}", sample);
            }
        }
        for (&(request, _), expected) in reference.outputs.iter().filter(|((_, index), _)| *index == 0) {
            if !aborted.contains(&(request, 0)) {
                prop_assert_eq!(outputs.get(&(request, 0)), Some(expected), "request {}", request);
            }
        }
    }
}

#[test]
fn abort_all_releases_every_block() {
    let requests = workload(5, 10, 40, 30);
    let mut scheduler = Scheduler::new(config(tightest_blocks(&requests, 4) + 5, 4, 64, 8)).unwrap();
    for r in &requests {
        scheduler
            .add(
                r.prompt.clone(),
                SamplingParams { ignore_eos: true, ..SamplingParams::greedy(r.max_tokens) },
            )
            .unwrap();
    }
    let mut model = FakeModel::new(&scheduler);
    for _ in 0..5 {
        let batch = scheduler.schedule();
        let sampled = model.step(&scheduler, &batch);
        scheduler.postprocess(&batch, &sampled).unwrap();
    }
    assert!(scheduler.num_running() > 0);
    let aborted = scheduler.abort_all();
    assert_eq!(aborted.len(), requests.len());
    assert!(scheduler.is_finished());
    assert_eq!(scheduler.block_manager().num_free_blocks(), scheduler.block_manager().num_blocks());
}
