// The device side of a programmatic dependent launch (nanovllm_cuda::DependentLaunch).
#pragma once

// Every kernel launched as a dependent launch calls this before it reads anything the kernel
// ahead of it in the stream wrote, and on every path, early exits included: the kernel ahead may
// itself still be waiting for the one before it, and a kernel that ended without waiting could let
// the next one read results that are not there yet.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// A kernel calls this where the kernel after it, if a dependent launch, may begin: that kernel's
// blocks then take SMs as this one's leave them, once every block of this one has called it, and
// run what comes before their wait_for_previous_kernel() (loading weights) beside this one. It
// changes nothing for a kernel after it launched the usual way.
__device__ __forceinline__ void start_next_kernel() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}
