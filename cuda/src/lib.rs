//! The GPU runtime of nanovllm, shared by every crate with kernels: finding the GPU, the one
//! stream work is queued on, compiling CUDA C to CUBIN with NVRTC for the device's own compute
//! capability (with an on-disk cache), programmatic dependent launches, and [`GpuError`].
//!
//! This is the only crate of the workspace that depends on cudarc; the others reach the CUDA
//! libraries through [`cudarc`], re-exported here, so that one version of it is in use.
//! cudarc loads libcuda, libnvrtc, libcublas and libnccl at run time, so this builds where no
//! CUDA is installed; a machine without them gets [`GpuError::Unavailable`], never a panic.
//!
//! # Example
//!
//! ```no_run
//! use nanovllm_cuda::Gpu;
//!
//! let gpu = Gpu::open()?; // the first GPU, or why there is none
//! let module = gpu.module("hello", "extern \"C\" __global__ void noop() {}", &[])?;
//! let _noop = module.load_function("noop")?;
//! println!("{}", gpu.describe());
//! # Ok::<(), nanovllm_cuda::GpuError>(())
//! ```

mod dependent_launch;
mod module_cache;

use std::sync::{Arc, Mutex};

pub use cudarc;
use cudarc::cublas::result::CublasError;
use cudarc::driver::{CudaContext, CudaModule, CudaStream, DriverError, sys::CUresult};
use cudarc::nccl::result::NcclError;

pub use dependent_launch::{DependentLaunch, dependent_launches};
pub use module_cache::{KernelSource, ModuleCache};

/// The device side of [`DependentLaunch`]: `wait_for_previous_kernel()` and `start_next_kernel()`,
/// to prepend to the source of every kernel launched that way.
pub const DEPENDENT_LAUNCH_CUH: &str = include_str!("dependent_launch.cuh");

/// What can go wrong on the GPU path.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable NVIDIA driver or GPU on this machine.
    #[error("no CUDA GPU available: {0}")]
    Unavailable(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] DriverError),
    /// A kernel did not compile.
    #[error("NVRTC could not compile {name}: {log}")]
    Compile {
        /// The kernel module.
        name: String,
        /// The compiler's log.
        log: String,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS error: {0}")]
    Blas(#[from] CublasError),
    /// Shapes that the kernels do not support.
    #[error("unsupported by the CUDA kernels: {0}")]
    Unsupported(String),
    /// An NCCL call failed. (cudarc's `NcclError` is not a `std::error::Error`, so it is held
    /// as it is, with a `From` of its own, rather than as a `#[from]` source.)
    #[error("NCCL error: {:?}", .0.0)]
    Nccl(NcclError),
    /// Tensor parallelism needs libnccl, which the loader cannot find.
    #[error(
        "libnccl is not installed: put a directory holding libnccl.so (a link to libnccl.so.2) on LD_LIBRARY_PATH"
    )]
    NcclUnavailable,
    /// The thread of a tensor-parallel rank could not start.
    #[error("could not start the thread of GPU rank {rank}: {source}")]
    RankThread {
        /// The rank.
        rank: usize,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A tensor-parallel rank's thread stopped, or answered out of turn.
    #[error("GPU rank {rank} {problem}")]
    Rank {
        /// The rank.
        rank: usize,
        /// What it did.
        problem: &'static str,
    },
}

impl From<NcclError> for GpuError {
    fn from(error: NcclError) -> Self {
        GpuError::Nccl(error)
    }
}

impl GpuError {
    /// Whether the GPU ran out of memory (an allocation in the driver or in cuBLAS failed), as
    /// opposed to a fault: the caller can retry with a smaller budget.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            GpuError::Driver(DriverError(code)) => *code == CUresult::CUDA_ERROR_OUT_OF_MEMORY,
            GpuError::Blas(CublasError(status)) => {
                *status == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED
            }
            _ => false,
        }
    }
}

/// The primary context of each GPU this process has opened, kept for the process's life. Dropping
/// the last handle of a primary context destroys it, and the engine opens a GPU several times as
/// it starts (to name it, to read its free memory before taking any, to load the model): without
/// this each of those would create the context again, a fraction of a second each.
static PRIMARY_CONTEXTS: Mutex<Vec<(usize, Arc<CudaContext>)>> = Mutex::new(Vec::new());

fn primary_context(ordinal: usize) -> Result<Arc<CudaContext>, DriverError> {
    let mut held = PRIMARY_CONTEXTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, ctx)) = held.iter().find(|(held_ordinal, _)| *held_ordinal == ordinal) {
        ctx.bind_to_thread()?;
        return Ok(ctx.clone());
    }
    let ctx = CudaContext::new(ordinal)?;
    held.push((ordinal, ctx.clone()));
    Ok(ctx)
}

/// A GPU: its context, the stream work is queued on, and its compiled modules.
#[derive(Debug, Clone)]
pub struct Gpu {
    /// The CUDA context of the device.
    pub ctx: Arc<CudaContext>,
    /// The stream every kernel and copy of the engine runs on, in order.
    pub stream: Arc<CudaStream>,
    /// Compiled kernel modules, by source and defines.
    pub modules: Arc<ModuleCache>,
}

impl Gpu {
    /// GPUs the driver sees, or why it cannot be asked (no driver library).
    pub fn count() -> Result<usize, GpuError> {
        // SAFETY: only probes whether the driver library can be loaded.
        #[allow(unsafe_code)]
        let driver = unsafe { cudarc::driver::sys::is_culib_present() };
        if !driver {
            return Err(GpuError::Unavailable("libcuda is not installed".into()));
        }
        let count = CudaContext::device_count().map_err(|e| GpuError::Unavailable(e.to_string()))?;
        Ok(count.max(0) as usize)
    }

    /// The first GPU, or why there is none (no driver library, no device).
    pub fn open() -> Result<Self, GpuError> {
        Self::open_ordinal(0)
    }

    /// GPU `ordinal` (0 is the first), or why there is none.
    pub fn open_ordinal(ordinal: usize) -> Result<Self, GpuError> {
        let count = Self::count()?;
        // SAFETY: as above, for libnvrtc.
        #[allow(unsafe_code)]
        let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
        if !nvrtc {
            return Err(GpuError::Unavailable(
                "libnvrtc (the CUDA runtime compiler) is not installed".into(),
            ));
        }
        if count <= ordinal {
            return Err(GpuError::Unavailable(format!(
                "the driver reports {count} device(s), so there is no GPU {ordinal}"
            )));
        }
        let ctx = primary_context(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        // All work runs in order on one stream, so cudarc's events that order buffers across
        // streams are not needed; without them a launch costs less host time, and a step can be
        // captured in a CUDA graph.
        // SAFETY: no buffer is used from a second stream (Gpu has one).
        #[allow(unsafe_code)]
        unsafe {
            ctx.disable_event_tracking();
        }
        // A stream of its own: the legacy default stream cannot be captured in a graph.
        let stream = ctx.new_stream()?;
        Ok(Gpu { modules: Arc::new(ModuleCache::new(major, minor)), ctx, stream })
    }

    /// The device's name and compute capability, for logs.
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        format!("{name} (sm_{})", self.modules.arch_number())
    }

    /// Compile (or fetch from the caches) a module from `source` with `#define`s prepended.
    pub fn module(
        &self,
        name: &'static str,
        source: &str,
        defines: &[(&'static str, String)],
    ) -> Result<Arc<CudaModule>, GpuError> {
        self.load(&KernelSource { name, source: source.to_owned(), defines: defines.to_vec() })
    }

    /// Compile (or fetch from the caches) `kernel`.
    pub fn load(&self, kernel: &KernelSource) -> Result<Arc<CudaModule>, GpuError> {
        self.modules.load(&self.ctx, kernel)
    }

    /// Compile (or read from the disk cache) and load `kernels` side by side, a thread each, so
    /// that a cold start waits for the slowest compilation rather than for all of them in turn;
    /// the [`load`](Self::load)s that follow find the modules in memory. Errors are not reported
    /// here: each module's own `load` reports its error, after its caller's checks.
    pub fn load_ahead(&self, kernels: &[KernelSource]) {
        std::thread::scope(|scope| {
            for kernel in kernels {
                scope.spawn(move || self.load(kernel).is_ok());
            }
        });
    }
}
