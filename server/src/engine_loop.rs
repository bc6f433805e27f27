//! The engine thread: it builds and owns the engine (an `LLM`, with CUDA graphs, which are not
//! `Send`) and loops: take new requests and stops from a channel, step, send each request what it
//! got on its own channel (through a dispatcher thread, one hand-over per step). A request whose
//! channel is closed (its client went away) is aborted before the next step. When idle, the
//! thread blocks on the channel. Nothing else runs here: tokenizing, decoding text and finding
//! stop strings (a handler that finds one sends a stop), JSON and HTTP live in the handlers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use nanovllm::{Completion, EngineError, SamplingParams, SeqId, StepToken, StopReason};
use tokio::sync::{mpsc, oneshot};

use crate::ServerError;
use crate::engine::{Engine, EngineInfo};
use crate::metrics::Metrics;

/// What a request gets from the engine, one message per step at most, then one per sample that
/// finishes.
#[derive(Debug)]
pub(crate) enum Event {
    /// Tokens drawn in one step, by sample index (with their log-probabilities if asked).
    Tokens(Vec<StepToken>),
    /// One sample finished.
    Finished(Box<Completion>),
    /// The engine failed while the request ran; nothing more comes.
    Failed(String),
}

/// A request for the engine thread.
pub(crate) struct Submission {
    pub(crate) prompt: Vec<u32>,
    /// Its sampling, with `detokenize` off and no stop strings: the handler finds those.
    pub(crate) params: SamplingParams,
    /// Where its events go; closing it aborts the request.
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Its id if the engine took it, the reason if not.
    pub(crate) accepted: oneshot::Sender<Result<SeqId, EngineError>>,
}

/// What handlers tell the engine thread.
enum Command {
    Submit(Submission),
    /// End a sample whose text reached one of its stop strings.
    Stop {
        id: SeqId,
        index: usize,
        stop: String,
    },
}

/// The engine's state as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Loading = 0,
    Ready = 1,
    Draining = 2,
    Failed = 3,
}

/// What the handlers know of the engine thread.
#[derive(Debug)]
pub struct EngineHandle {
    /// `None` once dropping: the closed channel ends the engine loop.
    commands: Option<mpsc::UnboundedSender<Command>>,
    health: Arc<AtomicU8>,
    /// Set once the engine is built.
    info: Arc<OnceLock<EngineInfo>>,
    /// Whether it was built, once known (taken by the first wait).
    built: Mutex<Option<std::sync::mpsc::Receiver<Result<(), EngineError>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineHandle {
    /// Start the engine thread: it runs `build` (loading the model) and then serves. Returns at
    /// once; until the engine is built, [`EngineHandle::info`] is `None` and `/health` answers
    /// 503. [`EngineHandle::wait_until_built`] waits for it.
    pub fn spawn<E: Engine + 'static>(
        build: impl FnOnce() -> Result<E, EngineError> + Send + 'static,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServerError> {
        let (commands, receiver) = mpsc::unbounded_channel();
        let (built, built_receiver) = std::sync::mpsc::channel();
        let health = Arc::new(AtomicU8::new(Health::Loading as u8));
        let info = Arc::new(OnceLock::new());
        let (thread_health, thread_info) = (health.clone(), info.clone());
        let dispatch = dispatcher().map_err(|e| ServerError::EngineThread(e.to_string()))?;
        let thread = std::thread::Builder::new()
            .name("nanovllm-engine".into())
            .spawn(move || match build() {
                Ok(mut engine) => {
                    // Every decode graph is captured before the server is ready, as vLLM does: a
                    // step that captures one mid-run stalls every stream for it, and a server
                    // usually meets its load at once (nano-vllm's workload served at 0.936x the
                    // offline rate with graphs captured on first use, 0.989x in the build that
                    // captured them all at start; H100).
                    if let Err(e) = engine.prepare() {
                        tracing::warn!(error = %e, "capturing decode graphs failed; each is captured when first needed");
                    }
                    let info = engine.info();
                    metrics.set_cache_config(&info.cache_dtype, info.block_size);
                    let _ = thread_info.set(info);
                    thread_health.store(Health::Ready as u8, Ordering::Relaxed);
                    let _ = built.send(Ok(()));
                    let (live, health, outbox) = (HashMap::new(), thread_health, Vec::new());
                    EngineLoop {
                        engine,
                        receiver,
                        live,
                        metrics,
                        health,
                        outbox,
                        dispatch,
                        last_step: None,
                    }
                    .run();
                }
                Err(e) => {
                    thread_health.store(Health::Failed as u8, Ordering::Relaxed);
                    let _ = built.send(Err(e));
                }
            })
            .map_err(|e| ServerError::EngineThread(e.to_string()))?;
        Ok(EngineHandle {
            commands: Some(commands),
            health,
            info,
            built: Mutex::new(Some(built_receiver)),
            thread: Some(thread),
        })
    }

    /// [`EngineHandle::spawn`], then wait until the engine is built.
    pub fn start<E: Engine + 'static>(
        build: impl FnOnce() -> Result<E, EngineError> + Send + 'static,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServerError> {
        let engine = Self::spawn(build, metrics)?;
        engine.wait_until_built()?;
        Ok(engine)
    }

    /// Block until the engine is built (at once if it already was), or return why it could not
    /// be. Call it from outside the async runtime, or through `spawn_blocking`.
    pub fn wait_until_built(&self) -> Result<&EngineInfo, ServerError> {
        let waiting = self.built.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(built) = waiting {
            match built.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ServerError::EngineThread("ended while loading the model".into())),
            }
        }
        self.info().ok_or_else(|| ServerError::EngineThread("the engine failed to load".into()))
    }

    /// What the engine told once built; `None` while it loads.
    pub fn info(&self) -> Option<&EngineInfo> {
        self.info.get()
    }

    /// Hand `submission` to the engine thread; `false` if it has stopped.
    pub(crate) fn submit(&self, submission: Submission) -> bool {
        self.send(Command::Submit(submission))
    }

    /// End sample `index` of request `id`, whose text reached the stop string `stop`.
    pub(crate) fn stop(&self, id: SeqId, index: usize, stop: String) {
        self.send(Command::Stop { id, index, stop });
    }

    fn send(&self, command: Command) -> bool {
        self.commands.as_ref().is_some_and(|c| c.send(command).is_ok())
    }

    pub(crate) fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            0 => Health::Loading,
            1 => Health::Ready,
            2 => Health::Draining,
            _ => Health::Failed,
        }
    }

    /// Turn `/health` to 503 and refuse new requests; those in flight go on.
    pub(crate) fn drain(&self) {
        let _ = self.health.compare_exchange(
            Health::Ready as u8,
            Health::Draining as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        // Closing the channel ends the loop once it is idle: in-flight requests are aborted when
        // their handlers drop their receivers.
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A live request: where its events go, and how many of its samples are still running.
struct Live {
    events: mpsc::UnboundedSender<Event>,
    running: usize,
}

/// Events for handlers, each with its request's channel, handed over once per pass of the loop.
type Batch = Vec<(mpsc::UnboundedSender<Event>, Event)>;

/// Start the dispatcher: a thread that sends each event to its request's channel, so that the
/// engine thread hands over one batch per step instead of waking hundreds of handlers itself
/// (a few microseconds each: a step's worth at 256 streams). It ends when the sender drops.
fn dispatcher() -> Result<std::sync::mpsc::Sender<Batch>, std::io::Error> {
    let (dispatch, batches) = std::sync::mpsc::channel::<Batch>();
    std::thread::Builder::new().name("nanovllm-dispatch".into()).spawn(move || {
        for batch in batches {
            for (to, event) in batch {
                let _ = to.send(event);
            }
        }
    })?;
    Ok(dispatch)
}

struct EngineLoop<E> {
    engine: E,
    receiver: mpsc::UnboundedReceiver<Command>,
    live: HashMap<SeqId, Live>,
    metrics: Arc<Metrics>,
    health: Arc<AtomicU8>,
    /// This pass's events, in order, and where they go.
    outbox: Batch,
    dispatch: std::sync::mpsc::Sender<Batch>,
    /// When the last step returned: the time until the next one is the loop's own.
    last_step: Option<Instant>,
}

impl<E: Engine> EngineLoop<E> {
    fn run(mut self) {
        loop {
            if self.engine.is_finished() {
                // Idle: wait for work, or end when every handle is gone.
                match self.receiver.blocking_recv() {
                    Some(command) => self.command(command),
                    None => return,
                }
            }
            while let Ok(command) = self.receiver.try_recv() {
                self.command(command);
            }
            self.abort_abandoned();
            self.metrics.observe_engine(&self.engine.load());
            if !self.engine.is_finished() {
                self.step();
            }
            if !self.outbox.is_empty() {
                let _ = self.dispatch.send(std::mem::take(&mut self.outbox));
            }
        }
    }

    /// Queue `event` for request `id`'s handler, if it is still there.
    fn emit(&mut self, id: SeqId, event: Event) {
        if let Some(live) = self.live.get(&id) {
            self.outbox.push((live.events.clone(), event));
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Submit(submission) => self.accept(submission),
            Command::Stop { id, index, stop } => {
                match self.engine.finish(id, index, StopReason::Text(stop)) {
                    Ok(Some(completion)) => self.finished(completion),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(request = id, error = %e, "stop failed"),
                }
            }
        }
    }

    fn accept(&mut self, submission: Submission) {
        let Submission { prompt, params, events, accepted } = submission;
        let n = params.n;
        match self.engine.add_request(prompt, params) {
            Ok(id) => {
                if accepted.send(Ok(id)).is_ok() {
                    self.live.insert(id, Live { events, running: n });
                } else {
                    let _ = self.engine.abort(id);
                }
            }
            Err(e) => {
                let _ = accepted.send(Err(e));
            }
        }
    }

    /// Abort the requests whose clients went away (their receivers dropped).
    fn abort_abandoned(&mut self) {
        let gone: Vec<SeqId> =
            self.live.iter().filter(|(_, live)| live.events.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            self.live.remove(&id);
            match self.engine.abort(id) {
                Ok(aborted) => self.metrics.count_finished(&aborted),
                Err(e) => tracing::warn!(request = id, error = %e, "abort failed"),
            }
        }
    }

    fn step(&mut self) {
        let started = Instant::now();
        let between = self.last_step.map(|last| started - last);
        let result = self.engine.step();
        let ended = Instant::now();
        self.last_step = Some(ended);
        let output = match result {
            Ok(output) => output,
            Err(e) => {
                // The engine cannot go on: fail every request and turn /health to 503.
                tracing::error!(error = %e, "engine step failed");
                self.health.store(Health::Failed as u8, Ordering::Relaxed);
                for (_, live) in self.live.drain() {
                    self.outbox.push((live.events, Event::Failed(e.to_string())));
                }
                self.engine.abort_all();
                return;
            }
        };
        // Before any event goes out, so that a client that saw its tokens sees the step in
        // /metrics too.
        self.metrics.observe_engine(&self.engine.load());
        self.metrics.count_step(&output);
        // Where a served step's time goes (`RUST_LOG=nanovllm_server=debug`): the engine's step,
        // and the loop's own work since the previous one (commands, aborts, events).
        tracing::debug!(
            tokens = output.num_tokens,
            prompt_tokens = output.num_prefill_tokens,
            step_us = (ended - started).as_micros() as u64,
            loop_us = between.map(|b| b.as_micros() as u64),
            "engine step"
        );
        // One event per run of one request's tokens (its samples mostly sit together in a batch).
        let mut tokens = output.tokens.into_iter().peekable();
        while let Some(first) = tokens.next() {
            let id = first.id;
            let mut run = vec![first];
            run.extend(std::iter::from_fn(|| tokens.next_if(|t| t.id == id)));
            self.emit(id, Event::Tokens(run));
        }
        for completion in output.finished {
            self.finished(completion);
        }
    }

    /// Count a sample that ended and tell its handler.
    fn finished(&mut self, completion: Completion) {
        self.metrics.count_finished(std::slice::from_ref(&completion));
        let id = completion.id;
        self.emit(id, Event::Finished(Box::new(completion)));
        if let Some(live) = self.live.get_mut(&id) {
            live.running -= 1;
            if live.running == 0 {
                self.live.remove(&id);
            }
        }
    }
}
