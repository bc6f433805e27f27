//! The model on one or more GPUs: tensor parallelism as nano-vllm does it. Each GPU holds one
//! rank's shard (cut as [`crate::Qwen3Model::shard`] cuts it, read from the source) in a
//! [`GpuQwen3`]. Rank 0 runs in the caller's thread;
//! every other rank in a thread of its own, which takes the same commands over a channel and queues
//! the same work on its GPU, the ranks meeting in NCCL collectives. The ranks are threads of one
//! process, so the group's NCCL id reaches them in memory: no port is opened, and two engines on
//! one host cannot collide (nano-vllm's fixed port 2333 can).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use nanovllm_cuda::cudarc::nccl::Id;
use nanovllm_cuda::{Gpu, GpuError};
use nanovllm_kv_cache::BlockId;
use nanovllm_kv_quant::CacheDtype;

use super::step::StepInputs;
use super::{GpuLimits, GpuQwen3, Nccl, SampleBatch, check_samples};
use crate::{ModelError, Sampled, SeqInput, WeightSource};

/// What every rank does, in the same order.
#[derive(Clone)]
enum Command {
    /// Join the group's NCCL communicator, then run the warm-up step.
    Connect(Id),
    FreeMemory,
    AllocateCache(usize),
    CaptureGraphs,
    CopyBlocks(Vec<(BlockId, BlockId)>),
    /// Run a step, then sample (all ranks take part) or return this rank's logit columns.
    Step {
        step: StepInputs,
        samples: Option<SampleBatch>,
    },
}

enum Reply {
    Done,
    Memory {
        free: usize,
        total: usize,
    },
    /// Decode graphs not captured yet.
    Captured(usize),
    Logits(Vec<f32>),
    Tokens(Vec<Sampled>),
}

impl GpuQwen3 {
    fn obey(&mut self, command: Command, rank: usize, world: usize) -> Result<Reply, GpuError> {
        match command {
            Command::Connect(id) => {
                let nccl = Nccl::join(&self.ops.gpu, rank, world, id)?;
                self.connect(nccl)?;
                self.warm_up()?;
                Ok(Reply::Done)
            }
            Command::FreeMemory => {
                let (free, total) = self.ops.gpu.ctx.mem_get_info()?;
                Ok(Reply::Memory { free, total })
            }
            Command::AllocateCache(num_blocks) => {
                self.allocate_cache(num_blocks)?;
                Ok(Reply::Done)
            }
            Command::CaptureGraphs => Ok(Reply::Captured(self.capture_decode_graphs()?)),
            Command::CopyBlocks(copies) => {
                self.copy_blocks(&copies)?;
                Ok(Reply::Done)
            }
            Command::Step { step, samples } => {
                let outputs = step.logit_rows.len();
                let draws = samples.as_ref().map_or(&[][..], SampleBatch::samples);
                let rows = self.launch(step, draws)?.rows;
                match samples {
                    Some(samples) => Ok(Reply::Tokens(self.sample(&samples, rows)?)),
                    None => Ok(Reply::Logits(self.logits(outputs)?)),
                }
            }
        }
    }
}

/// A rank > 0: its thread and the channels to it.
struct Worker {
    rank: usize,
    commands: Option<Sender<Command>>,
    replies: Receiver<Result<Reply, GpuError>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Start rank `rank`: it opens its GPU and loads its shard of `source`, then answers (see
    /// [`Worker::reply`]).
    fn spawn(
        rank: usize,
        world: usize,
        source: Arc<dyn WeightSource>,
        dtype: CacheDtype,
        block_size: usize,
        limits: GpuLimits,
    ) -> Result<Self, GpuError> {
        let (commands, inbox) = channel();
        let (outbox, replies) = channel();
        let serve = move || {
            let loaded = Gpu::open_ordinal(rank)
                .and_then(|gpu| GpuQwen3::load(&gpu, &*source, (rank, world), dtype, block_size, limits));
            drop(source);
            let mut runner = match loaded {
                Ok(runner) => runner,
                Err(e) => {
                    // The leader is waiting for this answer; if it is gone, so is the group.
                    let _ = outbox.send(Err(e));
                    return;
                }
            };
            let mut reply = Ok(Reply::Done);
            loop {
                if outbox.send(reply).is_err() {
                    return;
                }
                let Ok(command) = inbox.recv() else { return };
                reply = runner.obey(command, rank, world);
            }
        };
        let thread = std::thread::Builder::new()
            .name(format!("gpu-rank-{rank}"))
            .spawn(serve)
            .map_err(|source| GpuError::RankThread { rank, source })?;
        Ok(Worker { rank, commands: Some(commands), replies, thread: Some(thread) })
    }

    fn send(&self, command: Command) -> Result<(), GpuError> {
        let sent = self.commands.as_ref().map(|c| c.send(command).is_ok());
        if sent == Some(true) { Ok(()) } else { Err(self.stopped()) }
    }

    fn reply(&self) -> Result<Reply, GpuError> {
        self.replies.recv().map_err(|_| self.stopped())?
    }

    fn stopped(&self) -> GpuError {
        GpuError::Rank { rank: self.rank, problem: "stopped" }
    }
}

/// A Qwen3 model on `world` GPUs (1: the whole model on the first GPU), with the interface of
/// [`GpuQwen3`].
pub struct GpuGroup {
    leader: GpuQwen3,
    workers: Vec<Worker>,
}

impl std::fmt::Debug for GpuGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuGroup").field("world", &self.world()).field("rank_0", &self.leader).finish()
    }
}

impl GpuGroup {
    /// The model of `source` on GPUs `0..world`, each rank warmed up as [`GpuQwen3::new`] does;
    /// the cache comes with [`GpuGroup::allocate_cache`].
    pub fn new(
        source: Arc<dyn WeightSource>,
        world: usize,
        dtype: CacheDtype,
        block_size: usize,
        limits: GpuLimits,
    ) -> Result<Self, GpuError> {
        if world <= 1 {
            let leader = GpuQwen3::new(&Gpu::open()?, &*source, dtype, block_size, limits)?;
            return Ok(GpuGroup { leader, workers: Vec::new() });
        }
        let gpus = Gpu::count()?;
        if gpus < world {
            return Err(GpuError::Unsupported(format!(
                "tensor parallelism over {world} GPUs; this machine has {gpus}"
            )));
        }
        source.config().check_tensor_parallel(world).map_err(|e| GpuError::Unsupported(e.to_string()))?;
        let id = Nccl::new_id()?;
        let mut workers = Vec::with_capacity(world - 1);
        for rank in 1..world {
            workers.push(Worker::spawn(rank, world, source.clone(), dtype, block_size, limits)?);
        }
        let leader =
            Gpu::open().and_then(|gpu| GpuQwen3::load(&gpu, &*source, (0, world), dtype, block_size, limits));
        // Every rank loads before any joins the group: a rank that failed would leave the others
        // waiting in NCCL for it.
        let loaded: Vec<_> = workers.iter().map(Worker::reply).collect();
        let leader = leader?;
        for result in loaded {
            result?;
        }
        let mut group = GpuGroup { leader, workers };
        group.on_every_rank(Command::Connect(id))?;
        Ok(group)
    }

    /// GPUs in the group.
    pub fn world(&self) -> usize {
        self.workers.len() + 1
    }

    /// Free and total bytes of the GPU with the least free memory: the KV budget of every rank.
    pub fn free_memory(&mut self) -> Result<(usize, usize), GpuError> {
        let mut least = (usize::MAX, 0);
        for reply in self.on_every_rank(Command::FreeMemory)? {
            if let Reply::Memory { free, total } = reply
                && free < least.0
            {
                least = (free, total);
            }
        }
        Ok(least)
    }

    /// Allocate `num_blocks` cache blocks on every rank (each holds its kv heads of every block)
    /// and plan the decode graphs, as [`GpuQwen3::allocate_cache`].
    pub fn allocate_cache(&mut self, num_blocks: usize) -> Result<(), GpuError> {
        self.on_every_rank(Command::AllocateCache(num_blocks)).map(drop)
    }

    /// [`GpuQwen3::capture_decode_graphs`] on every rank (together: the graphs hold NCCL's work).
    pub fn capture_decode_graphs(&mut self) -> Result<usize, GpuError> {
        let replies = self.on_every_rank(Command::CaptureGraphs)?;
        Ok(replies.iter().map(|reply| if let Reply::Captured(n) = reply { *n } else { 0 }).max().unwrap_or(0))
    }

    /// [`GpuQwen3::copy_blocks`] on every rank (each holds its kv heads of every block).
    pub fn copy_blocks(&mut self, copies: &[(BlockId, BlockId)]) -> Result<(), GpuError> {
        self.on_every_rank(Command::CopyBlocks(copies.to_vec())).map(drop)
    }

    /// Decode batch sizes replayed from CUDA graphs (0 when eager), captured or not yet.
    pub fn decode_graphs(&self) -> usize {
        self.leader.decode_graphs()
    }

    /// [`GpuQwen3::prepare_seconds`] of rank 0 (one GPU: the steps' preparation; under tensor
    /// parallelism it is not counted).
    pub fn prepare_seconds(&self) -> f64 {
        self.leader.prepare_seconds()
    }

    /// [`GpuQwen3::forward`], every rank's logit columns joined.
    pub fn forward(&mut self, seqs: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let step = self.leader.lay_out(seqs)?;
        let outputs = step.logit_rows.len();
        let shards = self.on_every_rank(Command::Step { step, samples: None })?;
        let shards: Vec<Vec<f32>> = shards
            .into_iter()
            .map(|reply| match reply {
                Reply::Logits(logits) => Ok(logits),
                _ => Err(GpuError::Rank { rank: 0, problem: "answered a step without logits" }),
            })
            .collect::<Result<_, _>>()?;
        let columns = self.leader.vocab.len();
        Ok((0..outputs)
            .map(|row| shards.iter().flat_map(|s| &s[row * columns..(row + 1) * columns]).copied().collect())
            .collect())
    }

    /// [`GpuQwen3::forward_sampled`]: every rank samples among its token ids, rank 0's picks come back.
    pub fn forward_sampled(
        &mut self,
        seqs: &[SeqInput<'_>],
        batch: &SampleBatch,
    ) -> Result<Vec<Sampled>, ModelError> {
        if self.workers.is_empty() {
            return self.leader.forward_sampled(seqs, batch);
        }
        let step = self.leader.lay_out(seqs)?;
        check_samples(&step, batch)?;
        match self.on_every_rank(Command::Step { step, samples: Some(batch.clone()) })?.swap_remove(0) {
            Reply::Tokens(tokens) => Ok(tokens),
            _ => Err(GpuError::Rank { rank: 0, problem: "answered a sampled step without tokens" }.into()),
        }
    }

    /// Send `command` to every rank (a copy to each other rank; rank 0, this thread, last, so that
    /// one GPU copies nothing) and collect the replies in rank order. Every rank's reply is taken
    /// even when one failed, so none is left for the next.
    fn on_every_rank(&mut self, command: Command) -> Result<Vec<Reply>, GpuError> {
        for worker in &self.workers {
            worker.send(command.clone())?;
        }
        let world = self.world();
        let mine = self.leader.obey(command, 0, world);
        let theirs: Vec<_> = self.workers.iter().map(Worker::reply).collect();
        std::iter::once(mine).chain(theirs).collect()
    }
}

impl Drop for GpuGroup {
    fn drop(&mut self) {
        // Closing a rank's channel ends its loop; its thread frees its GPU memory as it exits.
        for worker in &mut self.workers {
            worker.commands = None;
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}
