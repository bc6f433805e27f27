// What every emulation test includes before its kernel source: CUDA on the host, the INT4 format's
// defines (QUANT, SCALED, INT4; not FP8) and the headers the kernels are compiled with, with
// mma.cuh's helpers from mma_host.cuh. The test defines its shape (HEAD_DIM, BLOCK_SIZE, ...) first.
#pragma once
#include "host.cuh"
#define QUANT 1
#define SCALED 1
#define FP8 0
#define INT4 1
#include "kv_quant.cuh"
#include "layout.cuh"
#include "mma_host.cuh"
