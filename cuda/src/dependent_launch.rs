//! Kernel launches that may begin before the kernel ahead of them in the stream has finished.

use std::mem::size_of;
use std::sync::OnceLock;

use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchConfig, SyncOnDrop, sys};

use super::{Gpu, GpuError};

/// The arguments of a programmatic dependent launch (compute capability 9.0 and later): the GPU
/// starts the kernel's blocks as soon as every block of the kernel ahead of it has exited, instead
/// of after that kernel has finished and its writes are flushed, and the kernel itself waits for
/// those writes (`griddepcontrol.wait`, `wait_for_previous_kernel` in dependent_launch.cuh) only where it
/// reads them. For the split combine this saves 1.2-1.5 us of decode attention over one context of
/// 32,768 keys (29 us; docs/perf-history.md, version 26).
/// On older GPUs, under `NANOVLLM_DEPENDENT_LAUNCH=0` (for measuring what the launches save), or
/// after [`DependentLaunch::dependent`]`(false)`, it is an ordinary launch, with the same
/// argument list. cudarc's `LaunchArgs` cannot pass launch attributes,
/// hence this builder; CUDA graph capture keeps the dependency as a programmatic edge.
pub struct DependentLaunch<'a> {
    gpu: &'a Gpu,
    function: &'a CudaFunction,
    /// Each argument's bytes: pointers and scalars of at most 8 bytes, zero-padded.
    values: Vec<u64>,
    /// Each buffer's stream-ordering guard, alive until the launch is queued.
    guards: Vec<SyncOnDrop<'a>>,
    /// Whether the launch asks to begin early ([`dependent_launches`] unless
    /// [`DependentLaunch::dependent`] says).
    dependent: bool,
}

/// Whether kernels launched through [`DependentLaunch`] ask to begin early, as they do unless the
/// environment sets `NANOVLLM_DEPENDENT_LAUNCH=0` (read once).
pub fn dependent_launches() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("NANOVLLM_DEPENDENT_LAUNCH").map_or(true, |v| v != "0"))
}

impl<'a> DependentLaunch<'a> {
    /// A launch of `function` on `gpu`'s stream, with no arguments yet.
    pub fn new(gpu: &'a Gpu, function: &'a CudaFunction) -> Self {
        let dependent = dependent_launches();
        DependentLaunch { gpu, function, values: Vec::new(), guards: Vec::new(), dependent }
    }

    /// Whether the launch is a dependent one or an ordinary one (for a kernel that does not wait,
    /// or a test of both).
    pub fn dependent(&mut self, dependent: bool) -> &mut Self {
        self.dependent = dependent;
        self
    }

    /// Pass a buffer the kernel reads.
    pub fn buffer<T>(&mut self, buffer: &'a impl DevicePtr<T>) -> &mut Self {
        let (pointer, guard) = buffer.device_ptr(&self.gpu.stream);
        self.values.push(pointer);
        self.guards.push(guard);
        self
    }

    /// Pass a buffer the kernel writes.
    pub fn buffer_mut<T>(&mut self, buffer: &'a mut impl DevicePtrMut<T>) -> &mut Self {
        let (pointer, guard) = buffer.device_ptr_mut(&self.gpu.stream);
        self.values.push(pointer);
        self.guards.push(guard);
        self
    }

    /// Pass a scalar (`int`, `long long`, `float`...).
    pub fn scalar<T: bytemuck::NoUninit>(&mut self, value: T) -> &mut Self {
        const { assert!(size_of::<T>() <= size_of::<u64>(), "kernel scalars of at most 8 bytes") };
        let mut slot = 0u64;
        bytemuck::bytes_of_mut(&mut slot)[..size_of::<T>()].copy_from_slice(bytemuck::bytes_of(&value));
        self.values.push(slot);
        self
    }

    /// Queue the kernel (the buffers' guards are released once it is queued).
    ///
    /// # Safety
    ///
    /// The arguments must match the kernel's parameters in number, order and type, and the kernel
    /// must stay within the buffers it was given; it must wait (`griddepcontrol.wait`) before it
    /// reads anything the kernel ahead of it writes, and write nothing that kernel reads.
    #[allow(unsafe_code)]
    pub unsafe fn launch(mut self, config: LaunchConfig) -> Result<(), GpuError> {
        let mut params: Vec<*mut std::ffi::c_void> =
            self.values.iter_mut().map(|value| (value as *mut u64).cast()).collect();
        let mut attribute = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue { pad: [0; 64] },
        };
        attribute.value.programmaticStreamSerializationAllowed = 1;
        let dependent = self.dependent && self.gpu.modules.arch_number() >= 90;
        let launch = sys::CUlaunchConfig {
            gridDimX: config.grid_dim.0,
            gridDimY: config.grid_dim.1,
            gridDimZ: config.grid_dim.2,
            blockDimX: config.block_dim.0,
            blockDimY: config.block_dim.1,
            blockDimZ: config.block_dim.2,
            sharedMemBytes: config.shared_mem_bytes,
            hStream: self.gpu.stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: u32::from(dependent),
        };
        // SAFETY: `params` points at one live value per kernel parameter (the caller's contract),
        // each holding the parameter's bytes; the attribute and config outlive the call.
        unsafe {
            sys::cuLaunchKernelEx(
                &launch,
                self.function.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()?;
        Ok(())
    }
}
