// CUDA on the host, for the emulation tests of the cache kernels (scripts/emulate-kernels.sh): one
// std::thread per CUDA thread, one thread block at a time; warp collectives (shuffles, votes, and
// the MMA and transposes of mma_host.cuh) exchange values through a per-warp table between two
// barriers; __syncwarp with a partial mask waits for that mask's lanes only. __shared__ variables
// become statics, shared by the block's threads. Kernels run one after another, so a dependent
// launch's wait is a no-op. Only what the kernels use is here.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <functional>
#include <thread>
#include <vector>
using std::min; using std::max;
#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(a, b)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
struct dim3h { unsigned x = 0, y = 0, z = 0; };
thread_local dim3h threadIdx, blockIdx;
dim3h blockDim, gridDim;
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
struct int2 { int x, y; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline int2 make_int2(int a, int b) { return {a, b}; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    uint8_t b[8];
    memcpy(b, &x, 4); memcpy(b + 4, &y, 4);
    unsigned r = 0;
    for (int k = 0; k < 4; ++k) r |= (unsigned)b[(s >> (4 * k)) & 7] << (8 * k);
    return r;
}
// fp16
inline float h2f(uint16_t h) {
    int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? std::ldexp((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp((float)(m | 1024), e - 25);
    return sign ? -v : v;
}
inline uint16_t f2h(float f) {  // round to nearest even
    if (std::isnan(f)) return 0x7e00;
    uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    double a = std::fabs((double)f);
    if (a >= 65520.0) return sign | 0x7c00;
    if (a < std::ldexp(1.0, -14)) {  // subnormal: multiple of 2^-24
        double q = std::nearbyint(a * std::ldexp(1.0, 24));
        return sign | (uint16_t)q;
    }
    int e; double fr = std::frexp(a, &e);  // a = fr * 2^e, fr in [0.5, 1)
    double q = std::nearbyint(fr * 2048.0);  // 11 significant bits
    if (q == 2048.0) { q = 1024.0; e += 1; }
    int exp = e - 1 + 15;
    if (exp >= 31) return sign | 0x7c00;
    return sign | (uint16_t)(exp << 10) | (uint16_t)((unsigned)q - 1024);
}
#include <atomic>
#include <bit>
struct MaskBarrier { std::atomic<int> count{0}, gen{0}; };
thread_local MaskBarrier* my_mask_barrier;
inline void syncwarp_mask(unsigned mask) {
    MaskBarrier* b = my_mask_barrier; int n = std::popcount(mask);
    int g = b->gen.load();
    if (b->count.fetch_add(1) + 1 == n) { b->count = 0; b->gen++; }
    else while (b->gen.load() == g) std::this_thread::yield();
}
// warps and blocks
struct WarpShare { std::barrier<> bar{32}; unsigned slot[32][16]; };
thread_local WarpShare* my_warp;
thread_local std::barrier<>* my_block;
inline int lane_id() { return threadIdx.x % 32; }
inline void __syncthreads() { my_block->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { my_warp->bar.arrive_and_wait(); }
template <class T> inline T __shfl_sync(unsigned, T v, int src) {
    unsigned u; memcpy(&u, &v, 4);
    my_warp->slot[lane_id()][0] = u; my_warp->bar.arrive_and_wait();
    unsigned r = my_warp->slot[src & 31][0]; my_warp->bar.arrive_and_wait();
    T out; memcpy(&out, &r, 4); return out;
}
template <class T> inline T __shfl_xor_sync(unsigned m, T v, int x) { return __shfl_sync(m, v, lane_id() ^ x); }
inline bool __any_sync(unsigned, bool p) {
    my_warp->slot[lane_id()][0] = p; my_warp->bar.arrive_and_wait();
    bool any = false; for (int l = 0; l < 32; ++l) any |= my_warp->slot[l][0] != 0;
    my_warp->bar.arrive_and_wait(); return any;
}
inline unsigned __ballot_sync(unsigned, bool p) {
    my_warp->slot[lane_id()][0] = p; my_warp->bar.arrive_and_wait();
    unsigned r = 0; for (int l = 0; l < 32; ++l) r |= (my_warp->slot[l][0] != 0) << l;
    my_warp->bar.arrive_and_wait(); return r;
}
inline void wait_for_previous_kernel() {}
inline void start_next_kernel() {}
// Launch: every block in turn, each with its threads (warps of 32 consecutive linear thread ids).
inline void launch(dim3h grid, dim3h block_dim, const std::function<void()>& kernel) {
    gridDim = grid; blockDim = block_dim;
    const unsigned threads = block_dim.x * block_dim.y;
    for (unsigned z = 0; z < grid.z; ++z) for (unsigned y = 0; y < grid.y; ++y) for (unsigned x = 0; x < grid.x; ++x) {
        std::barrier<> block(threads);
        std::vector<WarpShare> warps(threads / 32);
        std::vector<MaskBarrier> masks(threads / 32);
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
                threadIdx = {t % block_dim.x, t / block_dim.x, 0}; blockIdx = {x, y, z};
                my_warp = &warps[t / 32]; my_block = &block; my_mask_barrier = &masks[t / 32];
                kernel();
            });
        for (auto& th : pool) th.join();
    }
}
inline void launch(dim3h grid, unsigned threads, const std::function<void()>& kernel) {
    launch(grid, {threads, 1, 1}, kernel);
}
