// mma.cuh's helpers on the host (same names and semantics), for the emulation: fp16 by hand (round
// to nearest even), the m16n8k16 MMA from the fragments of all 32 lanes with its products summed
// in fp32 one by one after the accumulator, movmatrix as an exchange. INT4 and the shared helpers
// only.
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define FLT_MIN_NORMAL 1.17549435e-38f
#define INT8_F16_BIAS 0x64806480u
#define INT4_LOW_BIAS 0x64086408u
#define INT4_HIGH_BIAS 0x54805480u
#define KEY_CODES_BIASED (!FP8 && !INT4)
inline unsigned int int4_low_biased(unsigned int x) { return (x & 0x000f000fu) | 0x64006400u; }
inline unsigned int int4_high_biased(unsigned int x) { return (x & 0x00f000f0u) | 0x54005400u; }
inline unsigned f16x2_op(unsigned a, unsigned b, int op) {
    unsigned r = 0;
    for (int h = 0; h < 2; ++h) {
        float x = h2f((a >> (16 * h)) & 0xffff), y = h2f((b >> (16 * h)) & 0xffff);
        r |= (unsigned)f2h(op == 0 ? x - y : x * y) << (16 * h);
    }
    return r;
}
inline unsigned int sub_f16x2(unsigned int a, unsigned int b) { return f16x2_op(a, b, 0); }
inline unsigned int mul_f16x2(unsigned int a, unsigned int b) { return f16x2_op(a, b, 1); }
inline unsigned int pack2(float first, float second) { return f2h(first) | ((unsigned)f2h(second) << 16); }
inline float lo_h(unsigned x) { return h2f(x & 0xffff); }
inline float hi_h(unsigned x) { return h2f(x >> 16); }
inline void mma_from(float* d, const float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    WarpShare* w = my_warp; int lane = lane_id();
    unsigned* s = w->slot[lane];
    s[0] = a0; s[1] = a1; s[2] = a2; s[3] = a3; s[4] = b0; s[5] = b1;
    w->bar.arrive_and_wait();
    auto A = [&](int m, int k) {  // A[m][k]
        int g = m % 8, t = (k % 8) / 2, reg = (m >= 8) + 2 * (k >= 8);
        unsigned v = w->slot[4 * g + t][reg];
        return k % 2 ? hi_h(v) : lo_h(v);
    };
    auto B = [&](int k, int n) {
        int t = (k % 8) / 2, reg = 4 + (k >= 8);
        unsigned v = w->slot[4 * n + t][reg];
        return k % 2 ? hi_h(v) : lo_h(v);
    };
    int g = lane / 4, t = lane % 4;
    float out[4];
    for (int e = 0; e < 4; ++e) {
        int m = g + 8 * (e / 2), n = 2 * t + e % 2;
        float sum = c[e];
        for (int k = 0; k < 16; ++k) sum += A(m, k) * B(k, n);
        out[e] = sum;
    }
    w->bar.arrive_and_wait();
    for (int e = 0; e < 4; ++e) d[e] = out[e];
}
inline void mma(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    float c[4] = {d[0], d[1], d[2], d[3]};
    mma_from(d, c, a0, a1, a2, a3, b0, b1);
}
inline float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
inline float fast_exp2(float x) { return std::exp2(x); }
inline float pow2_at_least(float x) { return __uint_as_float((__float_as_uint(x) + 0x007fffffu) & 0x7f800000u); }
inline float pow2_inverse(float p) { return __uint_as_float(0x7f000000u - __float_as_uint(p)); }
inline float pow2_log2(float p) { return (float)((int)(__float_as_uint(p) >> 23) - 127); }
inline unsigned int transpose8x8(unsigned int x) {
    WarpShare* w = my_warp; int lane = lane_id();
    w->slot[lane][0] = x; w->bar.arrive_and_wait();
    int g = lane / 4, t = lane % 4;
    auto at = [&](int r, int c) { unsigned v = w->slot[4 * r + c / 2][0]; return c % 2 ? v >> 16 : v & 0xffff; };
    unsigned r = at(2 * t, g) | (at(2 * t + 1, g) << 16);
    w->bar.arrive_and_wait();
    return r;
}
inline float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
// ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16: lanes 0-15 name the rows of the two 8x8
// matrices; each lane gets, of each, elements (2t, g) and (2t + 1, g) (g = lane / 4, t = lane % 4).
inline void ldmatrix_x2_trans(const unsigned short* row, unsigned int& b0, unsigned int& b1) {
    WarpShare* w = my_warp;
    const int lane = lane_id(), g = lane / 4, t = lane % 4;
    const uintptr_t mine = (uintptr_t)row;
    w->slot[lane][0] = (unsigned)mine;
    w->slot[lane][1] = (unsigned)(mine >> 32);
    w->bar.arrive_and_wait();
    auto at = [&](int l) { return (const unsigned short*)(((uintptr_t)w->slot[l][1] << 32) | w->slot[l][0]); };
    unsigned r[2];
    for (int i = 0; i < 2; ++i) r[i] = at(8 * i + 2 * t)[g] | ((unsigned)at(8 * i + 2 * t + 1)[g] << 16);
    w->bar.arrive_and_wait();
    b0 = r[0];
    b1 = r[1];
}
