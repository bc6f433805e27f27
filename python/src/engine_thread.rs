//! The thread that owns the engine: Python's calls become jobs sent to it over a channel, each
//! answered on a channel of its own. A panic there ends the thread, and later calls get an error
//! instead of taking the interpreter down.

use std::sync::mpsc;

use nanovllm::{EngineError, LLM};
use pyo3::PyResult;
use pyo3::exceptions::PyRuntimeError;

use crate::errors::to_py;

type Job = Box<dyn FnOnce(&mut LLM) + Send>;

/// The engine thread is gone (it panicked, or the engine could not be built).
#[derive(Debug)]
pub(crate) struct EngineGone;

/// A handle on the engine thread.
pub(crate) struct EngineThread {
    /// `None` once dropping: the closed channel ends the thread.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineThread {
    /// Start the thread and build the engine on it with `build`; returns once it is built.
    pub(crate) fn spawn(build: impl FnOnce() -> Result<LLM, EngineError> + Send + 'static) -> PyResult<Self> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let (built, is_built) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("nanovllm-engine".into())
            .spawn(move || {
                let mut llm = match build() {
                    Ok(llm) => llm,
                    Err(e) => {
                        let _ = built.send(Err(e));
                        return;
                    }
                };
                let _ = built.send(Ok(()));
                while let Ok(job) = receiver.recv() {
                    job(&mut llm);
                }
            })
            .map_err(|e| PyRuntimeError::new_err(format!("the engine thread did not start: {e}")))?;
        let engine = EngineThread { jobs: Some(jobs), thread: Some(thread) };
        match is_built.recv() {
            Ok(Ok(())) => Ok(engine),
            Ok(Err(e)) => Err(to_py(e)),
            Err(_) => Err(EngineGone.into()),
        }
    }

    /// Run `job` on the engine and wait for its result.
    pub(crate) fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut LLM) -> R + Send + 'static,
    ) -> Result<R, EngineGone> {
        let (answer, answered) = mpsc::channel();
        let job: Job = Box::new(move |llm| {
            let _ = answer.send(job(llm));
        });
        self.jobs.as_ref().ok_or(EngineGone)?.send(job).map_err(|_| EngineGone)?;
        answered.recv().map_err(|_| EngineGone)
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
