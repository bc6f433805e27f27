//! One rank's NCCL communicator, on the rank's own stream: the exchanges of a tensor-parallel
//! forward pass (all-reduce of the embedding and of the row-parallel outputs, all-gather of the
//! sampled candidates).
//! cudarc loads libnccl at run time, like the other CUDA libraries.

use nanovllm_cuda::cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use nanovllm_cuda::cudarc::nccl::{Comm, Id, NcclType, ReduceOp};
use nanovllm_cuda::{Gpu, GpuError};

/// A rank's communicator.
pub(super) struct Nccl {
    comm: Comm,
}

// SAFETY: a communicator may be used from any thread as long as two threads never use it at
// once. `Nccl` stays not `Sync`, so only the thread that holds it (with its `GpuQwen3`) calls it.
#[allow(unsafe_code)]
unsafe impl Send for Nccl {}

impl Nccl {
    /// A fresh id for a group, after checking that libnccl can be loaded (cudarc would panic).
    pub(super) fn new_id() -> Result<Id, GpuError> {
        // SAFETY: only probes whether the library can be loaded.
        #[allow(unsafe_code)]
        let present = unsafe { nanovllm_cuda::cudarc::nccl::sys::is_culib_present() };
        if !present {
            return Err(GpuError::NcclUnavailable);
        }
        Ok(Id::new()?)
    }

    /// Join group `id` as `rank` of `world`: blocks until every rank has joined.
    pub(super) fn join(gpu: &Gpu, rank: usize, world: usize, id: Id) -> Result<Self, GpuError> {
        gpu.ctx.bind_to_thread()?;
        let comm = Comm::from_rank(gpu.stream.clone(), rank, world, id)?;
        Ok(Nccl { comm })
    }

    pub(super) fn world(&self) -> usize {
        self.comm.world_size()
    }

    /// Replace `values` on every rank by their sum over the ranks.
    pub(super) fn all_reduce_sum<T: NcclType>(
        &self,
        values: &mut CudaViewMut<'_, T>,
    ) -> Result<(), GpuError> {
        self.comm.all_reduce_in_place(values, &ReduceOp::Sum)?;
        Ok(())
    }

    /// Every rank's `values`, one after another in rank order, into `gathered` on every rank.
    pub(super) fn all_gather<T: NcclType>(
        &self,
        values: &CudaView<'_, T>,
        gathered: &mut CudaViewMut<'_, T>,
    ) -> Result<(), GpuError> {
        self.comm.all_gather(values, gathered)?;
        Ok(())
    }
}

/// A tensor-parallel rank's communicator and the buffers of its sampling exchange: each rank's
/// best token per row and its score, then every rank's, gathered.
pub(super) struct RankExchange {
    pub(super) nccl: Nccl,
    pub(super) candidate_ids: CudaSlice<i32>,
    pub(super) candidate_values: CudaSlice<f32>,
    pub(super) gathered_ids: CudaSlice<i32>,
    pub(super) gathered_values: CudaSlice<f32>,
}

impl RankExchange {
    pub(super) fn new(gpu: &Gpu, nccl: Nccl, max_rows: usize) -> Result<Self, GpuError> {
        let world = nccl.world();
        Ok(RankExchange {
            candidate_ids: gpu.stream.alloc_zeros(max_rows)?,
            candidate_values: gpu.stream.alloc_zeros(max_rows)?,
            gathered_ids: gpu.stream.alloc_zeros(world * max_rows)?,
            gathered_values: gpu.stream.alloc_zeros(world * max_rows)?,
            nccl,
        })
    }

    /// Gather every rank's candidates for `rows` rows.
    pub(super) fn gather_candidates(&mut self, rows: usize) -> Result<(), GpuError> {
        let world = self.nccl.world();
        self.nccl.all_gather(
            &self.candidate_ids.slice(..rows),
            &mut self.gathered_ids.slice_mut(..world * rows),
        )?;
        self.nccl.all_gather(
            &self.candidate_values.slice(..rows),
            &mut self.gathered_values.slice_mut(..world * rows),
        )
    }
}

/// Sum `values` over the ranks of `exchange` (nothing to do on one GPU).
pub(super) fn sum_over_ranks<T: NcclType>(
    exchange: Option<&RankExchange>,
    mut values: CudaViewMut<'_, T>,
) -> Result<(), GpuError> {
    match exchange {
        Some(exchange) => exchange.nccl.all_reduce_sum(&mut values),
        None => Ok(()),
    }
}
