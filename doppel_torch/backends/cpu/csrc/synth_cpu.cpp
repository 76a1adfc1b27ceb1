// doppel-torch CPU fast path: one fused pass per sound, generic over any Patch.
//
// It reads the tables of the one lowering of a Patch (doppel_torch/spec/program.py: which column of the human-unit
// parameter row feeds which module input, and the wiring), declared below as X-macros. Per sound:
//   control rate (C samples, float64): ADSRs, LFOs (times their amplitude envelope), the modulation matrix;
//   audio rate, in blocks of BLOCK_T samples: endpoint-aligned linear upsampling of the amplitude mod outputs,
//   phase as a running float64 sum (a VCO's geometric increments and their sum in one pass per control run,
//   phase_geometric; an FM operator's from its modulator's output; the carry wrapped to [0, 1) after every block),
//   waveform, VCA, keyed noise, mixer, written straight into the output row (the next block's lines prefetched);
//   then per-sound peak normalisation.
// Where the time goes, stage by stage, and the cost of a sample's arithmetic alone: bench/cpu_stages.py (a build
// with -DDOPPEL_STAGE_TIMERS; the STAGE marks below compile to nothing otherwise).
// Precision: float64 throughout for a float64 output. For a float32 output the phase, the increments and the FM
// modulators stay float64 (float32 cumulative phase is what makes SynthAX's float32 FM synths drift 7-47 %,
// DESIGN.md quirk 6) and the other waveforms, amplitudes and the mix run in float32 (8 SIMD lanes instead of 4):
// about 1e-7 relative L2 from the float64 reference. Sounds are spread over std::threads.
//
// The math equals doppel_torch/backends/torch/functional.py. The transcendental functions of the per-sample loops
// (exp2, sin/cos of 2 pi x, tanh) and of the ADSR power are branch-free polynomials accurate to a few ulps of
// their type, written so that the compiler vectorises the loops that call them.
// Same bits on every target: the library is built with -ffp-contract=off (build.py), so the compiler never fuses a
// multiply and an add on its own (it would, differently in vector and scalar code), and the polynomials use
// std::fma explicitly, rounded once on every target. Together with IEEE arithmetic (no fast-math) the AVX-512, AVX2,
// SSE2 and scalar builds render the same bits (tests/backends/cpu/test_simd_builds.py), and so do aarch64's NEON and
// scalar builds, cross-compiled and run under qemu-user (tests/backends/cpu/test_cross_arch.py), sounds and gradients.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <new>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <pthread.h>

namespace {

constexpr int BLOCK_T = 256;  // audio samples per block; a multiple of 4 (four interleaved prefix-sum chains)
constexpr double PI = 3.14159265358979323846;
constexpr double TWO_PI = 2.0 * PI;
constexpr double LOG2E = 1.4426950408889634074;
constexpr double LN2 = 0.69314718055994530942;
constexpr double LFO_EXPONENT = 2.71828182845904523536;  // math.e, as the reference
constexpr double ROUND_MAGIC = 6755399441055744.0;     // 1.5 * 2^52: (x + M) - M rounds x to an integer
constexpr int LFO_PHASE_BITS = 44;                      // functional.LFO_PHASE_BITS: LFO phase in fixed point
constexpr double LFO_SCALE = (double)(1ULL << LFO_PHASE_BITS);
constexpr uint64_t LFO_MASK = (1ULL << LFO_PHASE_BITS) - 1;

// ---- eight-lane vectors: one source for AVX-512, AVX2, SSE2, NEON or plain scalar code; element-wise IEEE
// arithmetic, so every target computes the same values.
// With AVX-512 a vd is one register: GCC / Clang's vector extension type. With narrower registers it is a struct of
// register-wide pieces of the extension (AVX2: two of four lanes; SSE2, NEON: four pairs) with the same operators,
// piece by piece. GCC 12 lowers an extension type wider than the registers through the stack wherever a vector is
// built from scalars, stored or indexed (written in 16-byte pieces and reloaded whole, missing store forwarding):
// on an AVX2 machine (Zen 3) the backward call ran 4x slower than on an AVX-512 one (Zen 4), its stages up to 9x
// where the register width accounts for 2x (python bench/cpu_stages.py --grad). Common to both forms: a mask's
// ternary is vselect(mask, a, b), a vector's bits as_bits / as_doubles, lane i of a vector v[i], set by vset.
// VINLINE: a function of vectors is always inlined (one not inlined takes a struct of pieces through memory)
#define VINLINE inline __attribute__((always_inline))
constexpr int VLANES = 8;  // one AVX-512 register of float64, two AVX2 ones, four SSE2 / NEON ones
// -DDOPPEL_VECTOR_EXTENSION: the one-type form on any target (tests/backends/cpu/test_simd_builds.py builds both)
#if defined(__AVX512F__) || defined(DOPPEL_VECTOR_EXTENSION)
typedef double vd __attribute__((vector_size(VLANES * sizeof(double))));
typedef int64_t vi __attribute__((vector_size(VLANES * sizeof(int64_t))));
static VINLINE vd vselect(const vi& m, const vd& a, const vd& b) { return m ? a : b; }
static VINLINE vi vselect(const vi& m, const vi& a, const vi& b) { return m ? a : b; }
static VINLINE vi as_bits(const vd& x) { return (vi)x; }
static VINLINE vd as_doubles(const vi& x) { return (vd)x; }
template <typename V, typename E> static inline void vset(V& v, int i, E x) { v[i] = x; }

static VINLINE vd vld(const double* p) {  // unaligned load
    vd v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

static VINLINE void vst(double* p, const vd& v) { std::memcpy(p, &v, sizeof v); }  // unaligned store

template <typename T> static VINLINE vd vld_double(const T* p) {  // VLANES values of T as float64
    vd v;
    for (int q = 0; q < VLANES; ++q) v[q] = (double)p[q];
    return v;
}

template <int N> static VINLINE vd lanes_down(const vd& v) {  // lane l <- v[l + N], 0 past the last lane
    static_assert(VLANES == 8 && (N == 1 || N == 2 || N == 4), "lanes_down shifts eight lanes by 1, 2 or 4");
    const vd zero = {};
#if defined(__clang__)
    if constexpr (N == 1) return __builtin_shufflevector(v, zero, 1, 2, 3, 4, 5, 6, 7, 8);
    if constexpr (N == 2) return __builtin_shufflevector(v, zero, 2, 3, 4, 5, 6, 7, 8, 8);
    return __builtin_shufflevector(v, zero, 4, 5, 6, 7, 8, 8, 8, 8);
#else
    return __builtin_shuffle(v, zero, vi{N, N + 1, N + 2, N + 3, N + 4 < 8 ? N + 4 : 8, N + 5 < 8 ? N + 5 : 8,
                                         N + 6 < 8 ? N + 6 : 8, N + 7 < 8 ? N + 7 : 8});
#endif
}
#else
#if defined(__AVX__)
constexpr int VPIECE = 4;  // lanes per register
#else
constexpr int VPIECE = 2;
#endif
constexpr int NPIECE = VLANES / VPIECE;
typedef double vdp __attribute__((vector_size(VPIECE * sizeof(double))));
typedef int64_t vip __attribute__((vector_size(VPIECE * sizeof(int64_t))));
typedef double vdp_u __attribute__((vector_size(VPIECE * sizeof(double)), aligned(sizeof(double)), may_alias));

template <typename P, typename E>
struct VPieces {  // VLANES lanes of E as NPIECE vectors P
    P p[NPIECE];
    VPieces() : p{} {}
    VPieces(E a0, E a1, E a2, E a3, E a4, E a5, E a6, E a7) {
        const E a[VLANES] = {a0, a1, a2, a3, a4, a5, a6, a7};
        for (int k = 0; k < NPIECE; ++k)
            for (int l = 0; l < VPIECE; ++l) p[k][l] = a[k * VPIECE + l];
    }
    E operator[](int i) const { return p[(unsigned)i / VPIECE][(unsigned)i % VPIECE]; }
};
typedef VPieces<vdp, double> vd;
typedef VPieces<vip, int64_t> vi;
template <typename V, typename E> static inline void vset(V& v, int i, E x) {
    v.p[(unsigned)i / VPIECE][(unsigned)i % VPIECE] = x;
}

// Binary operators piece by piece: vector OP vector, vector OP scalar, scalar OP vector (R: the result's type).
#define DOPPEL_VOP(T, S, R, OP)                                                                                       \
    static VINLINE R operator OP(const T& a, const T& b) {                                                             \
        R r;                                                                                                          \
        for (int k = 0; k < NPIECE; ++k) r.p[k] = a.p[k] OP b.p[k];                                                   \
        return r;                                                                                                     \
    }                                                                                                                 \
    static VINLINE R operator OP(const T& a, S b) {                                                                    \
        R r;                                                                                                          \
        for (int k = 0; k < NPIECE; ++k) r.p[k] = a.p[k] OP b;                                                        \
        return r;                                                                                                     \
    }                                                                                                                 \
    static VINLINE R operator OP(S a, const T& b) {                                                                    \
        R r;                                                                                                          \
        for (int k = 0; k < NPIECE; ++k) r.p[k] = a OP b.p[k];                                                        \
        return r;                                                                                                     \
    }
#define DOPPEL_VASSIGN(T, S, OP)                                                                                      \
    static VINLINE T& operator OP##=(T& a, const T& b) { return a = a OP b; }                                          \
    static VINLINE T& operator OP##=(T& a, S b) { return a = a OP b; }
DOPPEL_VOP(vd, double, vd, +) DOPPEL_VOP(vd, double, vd, -) DOPPEL_VOP(vd, double, vd, *) DOPPEL_VOP(vd, double, vd, /)
DOPPEL_VASSIGN(vd, double, +) DOPPEL_VASSIGN(vd, double, -) DOPPEL_VASSIGN(vd, double, *)
DOPPEL_VASSIGN(vd, double, /)
DOPPEL_VOP(vd, double, vi, <) DOPPEL_VOP(vd, double, vi, >) DOPPEL_VOP(vd, double, vi, <=)
DOPPEL_VOP(vd, double, vi, >=) DOPPEL_VOP(vd, double, vi, ==) DOPPEL_VOP(vd, double, vi, !=)
DOPPEL_VOP(vi, int64_t, vi, +) DOPPEL_VOP(vi, int64_t, vi, -) DOPPEL_VOP(vi, int64_t, vi, &)
DOPPEL_VOP(vi, int64_t, vi, |) DOPPEL_VOP(vi, int64_t, vi, ^) DOPPEL_VOP(vi, int64_t, vi, <)
DOPPEL_VOP(vi, int64_t, vi, >) DOPPEL_VOP(vi, int64_t, vi, ==)
DOPPEL_VASSIGN(vi, int64_t, +) DOPPEL_VASSIGN(vi, int64_t, &) DOPPEL_VASSIGN(vi, int64_t, |)
#undef DOPPEL_VOP
#undef DOPPEL_VASSIGN

static VINLINE vd operator-(const vd& a) {
    vd r;
    for (int k = 0; k < NPIECE; ++k) r.p[k] = -a.p[k];
    return r;
}

static VINLINE vi operator>>(const vi& a, int n) {
    vi r;
    for (int k = 0; k < NPIECE; ++k) r.p[k] = a.p[k] >> n;
    return r;
}

static VINLINE vd vselect(const vi& m, const vd& a, const vd& b) {
    vd r;
    for (int k = 0; k < NPIECE; ++k) r.p[k] = m.p[k] ? a.p[k] : b.p[k];
    return r;
}

static VINLINE vi vselect(const vi& m, const vi& a, const vi& b) {
    vi r;
    for (int k = 0; k < NPIECE; ++k) r.p[k] = m.p[k] ? a.p[k] : b.p[k];
    return r;
}

static VINLINE vi as_bits(const vd& x) {
    vi r;
    for (int k = 0; k < NPIECE; ++k) r.p[k] = (vip)x.p[k];
    return r;
}

static VINLINE vd as_doubles(const vi& x) {
    vd r;
    for (int k = 0; k < NPIECE; ++k) r.p[k] = (vdp)x.p[k];
    return r;
}

static VINLINE vd vld(const double* p) {  // unaligned load, a register at a time
    vd v;
    for (int k = 0; k < NPIECE; ++k) v.p[k] = *(const vdp_u*)(p + k * VPIECE);
    return v;
}

static VINLINE void vst(double* p, const vd& v) {  // unaligned store, a register at a time
    for (int k = 0; k < NPIECE; ++k) *(vdp_u*)(p + k * VPIECE) = v.p[k];
}

template <typename T> static VINLINE vd vld_double(const T* p) {  // VLANES values of T as float64
    typedef T tp_u __attribute__((vector_size(VPIECE * sizeof(T)), aligned(sizeof(T)), may_alias));
    vd v;
    for (int k = 0; k < NPIECE; ++k) v.p[k] = __builtin_convertvector(*(const tp_u*)(p + k * VPIECE), vdp);
    return v;
}

// Lanes N.. of a, then of b: a register-wide window (N < VPIECE).
template <int N> static VINLINE vdp piece_window(const vdp& a, const vdp& b) {
#if defined(__clang__)
    if constexpr (VPIECE == 4) return __builtin_shufflevector(a, b, N, N + 1, N + 2, N + 3);
    else return __builtin_shufflevector(a, b, N, N + 1);
#else
    if constexpr (VPIECE == 4) return __builtin_shuffle(a, b, vip{N, N + 1, N + 2, N + 3});
    else return __builtin_shuffle(a, b, vip{N, N + 1});
#endif
}

template <int N> static VINLINE vd lanes_down(const vd& v) {  // lane l <- v[l + N], 0 past the last lane
    constexpr int Q = N / VPIECE, R = N % VPIECE;
    const vdp zero = {};
    vd r;
    for (int k = 0; k < NPIECE; ++k) {
        const vdp a = k + Q < NPIECE ? v.p[k + Q] : zero;
        if constexpr (R == 0) {
            r.p[k] = a;
        } else {
            const vdp b = k + Q + 1 < NPIECE ? v.p[k + Q + 1] : zero;
            r.p[k] = piece_window<R>(a, b);
        }
    }
    return r;
}
#endif

static VINLINE vd vselect(bool m, const vd& a, const vd& b) { return m ? a : b; }  // a scalar condition
static VINLINE double vselect(bool m, double a, double b) { return m ? a : b; }  // code generic over double and vd

// ---- branch-free float64 math, vectorisable -------------------------------------------------------------

static inline int64_t bits_of(double x) {
    int64_t i;
    std::memcpy(&i, &x, 8);
    return i;
}

static inline double from_bits(int64_t i) {
    double x;
    std::memcpy(&x, &i, 8);
    return x;
}

// 2^x for x in [-1020, 1020]: integer part into the exponent, 2^f (|f| <= 1/2) by its Taylor series (error < 1e-16).
static inline double exp2_d(double x) {
    x = x < -1020.0 ? -1020.0 : (x > 1020.0 ? 1020.0 : x);
    const double shifted = x + ROUND_MAGIC;
    const double k = shifted - ROUND_MAGIC;
    const double f = (x - k) * LN2;
    double p = 1.0 / 479001600.0;  // 1/12!
    p = std::fma(p, f, 1.0 / 39916800.0);
    p = std::fma(p, f, 1.0 / 3628800.0);
    p = std::fma(p, f, 1.0 / 362880.0);
    p = std::fma(p, f, 1.0 / 40320.0);
    p = std::fma(p, f, 1.0 / 5040.0);
    p = std::fma(p, f, 1.0 / 720.0);
    p = std::fma(p, f, 1.0 / 120.0);
    p = std::fma(p, f, 1.0 / 24.0);
    p = std::fma(p, f, 1.0 / 6.0);
    p = std::fma(p, f, 0.5);
    p = std::fma(p, f, 1.0);
    p = std::fma(p, f, 1.0);
    const int64_t k_int = bits_of(shifted) - bits_of(ROUND_MAGIC);
    return p * from_bits((k_int + 1023) << 52);
}

// log2(x) for a positive normal x: exponent plus 2 atanh((m - 1)/(m + 1)) / ln 2 with m in [sqrt(1/2), sqrt(2)].
static inline double log2_d(double x) {
    const int64_t b = bits_of(x);
    int64_t e = (int64_t)((uint64_t)b >> 52) - 1023;  // x > 0: a logical shift (vectorises on AVX2, which has no arithmetic one)
    double m = from_bits((b & 0x000FFFFFFFFFFFFFLL) | 0x3FF0000000000000LL);
    const bool big = m > 1.4142135623730950488;
    m = big ? 0.5 * m : m;
    e = big ? e + 1 : e;
    const double s = (m - 1.0) / (m + 1.0);
    const double z = s * s;
    double p = 1.0 / 21.0;
    p = std::fma(p, z, 1.0 / 19.0);
    p = std::fma(p, z, 1.0 / 17.0);
    p = std::fma(p, z, 1.0 / 15.0);
    p = std::fma(p, z, 1.0 / 13.0);
    p = std::fma(p, z, 1.0 / 11.0);
    p = std::fma(p, z, 1.0 / 9.0);
    p = std::fma(p, z, 1.0 / 7.0);
    p = std::fma(p, z, 1.0 / 5.0);
    p = std::fma(p, z, 1.0 / 3.0);
    p = std::fma(p, z, 1.0);
    const double e_d = from_bits(bits_of(ROUND_MAGIC) + e) - ROUND_MAGIC;
    return e_d + (2.0 * LOG2E) * (s * p);
}

// sin(2 pi w) = w P(w^2) for |w| <= 1/4 cycle: one odd polynomial serves sine and cosine (cos(2 pi r) = sin(2 pi
// (1/4 - |r|))), so no quadrant selection is needed. Coefficients: a least-squares fit of sin(2 pi w) / w in w^2 in
// 40-digit arithmetic (bench/fit_polynomials.py prints them), rounded to the type; worst error 3.3e-16 (float64, degree 8
// in w^2) and 1.9e-7 (float32, degree 4), 1-2 ulp of 1.
static inline double sin2pi_quarter(double w) {
    const double z = w * w;
    double p = 0.10089281012943845;
    p = std::fma(p, z, -0.7177331329666157);
    p = std::fma(p, z, 3.819928075920329);
    p = std::fma(p, z, -15.094641678528019);
    p = std::fma(p, z, 42.05869392563526);
    p = std::fma(p, z, -76.70585975283137);
    p = std::fma(p, z, 81.6052492760737);
    p = std::fma(p, z, -41.341702240399755);
    p = std::fma(p, z, 6.283185307179586);
    return w * p;
}

static inline float sin2pi_quarter_f(float w) {
    const float z = w * w;
    float p = 39.759613037109375f;
    p = std::fma(p, z, -76.58169555664062f);
    p = std::fma(p, z, 81.60253143310547f);
    p = std::fma(p, z, -41.34168243408203f);
    p = std::fma(p, z, 6.2831854820251465f);
    return w * p;
}

// cos(2 pi x) for x in cycles: r = x - round(x) in [-1/2, 1/2] exactly, then 1/4 - |r| (exact) into the quarter sine.
static inline double cos2pi(double x) {
    const double r = x - ((x + ROUND_MAGIC) - ROUND_MAGIC);
    return sin2pi_quarter(0.25 - std::fabs(r));
}

// sin and cos of 2 pi x: the sine's argument folded into the quarter, r or +-1/2 - r.
static inline void sincos2pi(double x, double& sin_out, double& cos_out) {
    const double r = x - ((x + ROUND_MAGIC) - ROUND_MAGIC);
    const double a = std::fabs(r);
    const double w = a > 0.25 ? std::copysign(0.5, r) - r : r;
    sin_out = sin2pi_quarter(w);
    cos_out = sin2pi_quarter(0.25 - a);
}

// tanh(y) = (e^{2y} - 1) / (e^{2y} + 1); |y| clamped at 20 where tanh is 1 to float64 precision.
static inline double tanh_d(double y) {
    y = y < -20.0 ? -20.0 : (y > 20.0 ? 20.0 : y);
    const double e = exp2_d((2.0 * LOG2E) * y);
    return (e - 1.0) / (e + 1.0);
}

// float32 versions for waveforms that only reach the float32 output (8 lanes instead of 4): the argument is
// reduced in float64 (exact, |r| <= 1/2 cycle) and only the bounded remainder is evaluated in float32.
constexpr float ROUND_MAGIC_F = 12582912.0f;  // 1.5 * 2^23

static inline int32_t bits_of_f(float x) {
    int32_t i;
    std::memcpy(&i, &x, 4);
    return i;
}

static inline float from_bits_f(int32_t i) {
    float x;
    std::memcpy(&x, &i, 4);
    return x;
}

// float32 sine and cosine: the reduction and the folds in float64 (exact), only the quarter sine in float32.
static inline float cos2pi_f(double x) {
    const double r = x - ((x + ROUND_MAGIC) - ROUND_MAGIC);
    return sin2pi_quarter_f((float)(0.25 - std::fabs(r)));
}

static inline void sincos2pi_f(double x, float& sin_out, float& cos_out) {
    const double r = x - ((x + ROUND_MAGIC) - ROUND_MAGIC);
    const double a = std::fabs(r);
    const double w = a > 0.25 ? std::copysign(0.5, r) - r : r;
    sin_out = sin2pi_quarter_f((float)w);
    cos_out = sin2pi_quarter_f((float)(0.25 - a));
}

static inline float tanh_f(float y) {
    y = y < -9.0f ? -9.0f : (y > 9.0f ? 9.0f : y);  // tanh(9) = 1 - 3e-8: 1 in float32
    const float x = 2.8853900817779268f * y;       // 2 y log2(e), in [-26, 26]
    const float shifted = x + ROUND_MAGIC_F;
    const float k = shifted - ROUND_MAGIC_F;
    const float f = (x - k) * 0.69314718055994531f;
    // e^f on |f| <= ln(2) / 2: degree 5, least squares in relative error (bench/fit_polynomials.py); tanh_f's worst
    // error 1.4e-7 over [-10, 10], as with the degree-8 Taylor series it replaces (float32 rounding dominates)
    float p = 0.008291716687381268f;
    p = std::fma(p, f, 0.04191502928733826f);
    p = std::fma(p, f, 0.1666766256093979f);
    p = std::fma(p, f, 0.49998900294303894f);
    p = std::fma(p, f, 0.9999996423721313f);
    p = std::fma(p, f, 1.0000001192092896f);
    const int32_t k_int = bits_of_f(shifted) - bits_of_f(ROUND_MAGIC_F);
    const float e = p * from_bits_f((k_int + 127) << 23);
    return (e - 1.0f) / (e + 1.0f);
}

// ---- threads ----------------------------------------------------------------------------------------------
// The sounds of a call are spread over n_threads workers. Where the process has an OpenMP runtime (torch's own
// libgomp, found by build.py and handed over with doppel_cpu_use_openmp), the workers are its threads through the
// GOMP_parallel entry point: right after a torch op those threads still spin (libgomp's default wait policy), and
// threads of our own would share the cores with them (measured: a (128, 340) to_human before a parametric render
// took it from 11,400 to 8,600 sounds/s). Otherwise, std::threads started for the call. Every worker takes whole
// sounds from one counter, so the result does not depend on which thread renders what. GNU libgomp hangs in a child
// forked after its threads started, so a forked child (pthread_atfork) goes back to threads of its own.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
static std::atomic<GompParallel> g_gomp_parallel{nullptr};
static void forget_openmp_in_child() { g_gomp_parallel = nullptr; }

template <typename F>
static void run_parallel(int n_threads, F& worker) {
    const GompParallel gomp = g_gomp_parallel.load();
    if (gomp != nullptr && n_threads > 1) {
        gomp([](void* f) { (*static_cast<F*>(f))(); }, &worker, (unsigned)n_threads, 0u);
        return;
    }
    std::vector<std::thread> pool;
    for (int i = 1; i < n_threads; ++i) {
        try {
            pool.emplace_back(worker);
        } catch (...) {  // no more threads to be had (a process or memory limit): the ones started do the work
            break;
        }
    }
    worker();
    for (auto& th : pool) th.join();
}

// ---- keyed noise, bit-equal to doppel_torch/rng.py --------------------------------------------------------

static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

// ---- stage timers: a profiling build only (-DDOPPEL_STAGE_TIMERS; bench/cpu_stages.py) ---------------------
// STAGE(name) charges the time since the previous mark to `name`: marks sit after each stage's code, so the
// stages partition a sound's time. One thread (the counters are shared); the cycle counter on x86-64, else the
// steady clock. A normal build compiles every mark to nothing.
#define STAGE_LIST(X) X(envelopes) X(lfos) X(mod_matrix) X(pitch_setup) X(upsample) X(increment) X(phase) X(waveform) X(fm_modulator) \
    X(vca) X(filter) X(noise) X(mix) X(normalize)
#ifdef DOPPEL_STAGE_TIMERS
enum : int {
#define STAGE_ID(name) STAGE_##name,
    STAGE_LIST(STAGE_ID) N_STAGES
};
static uint64_t g_stage_ticks[N_STAGES];
static uint64_t g_stage_last;
static inline uint64_t stage_now() {
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#else
    return (uint64_t)std::chrono::steady_clock::now().time_since_epoch().count();
#endif
}
#define STAGE_START() (g_stage_last = stage_now())
#define STAGE(name) do { const uint64_t t_ = stage_now(); g_stage_ticks[STAGE_##name] += t_ - g_stage_last; \
    g_stage_last = t_; } while (0)
#else
#define STAGE_START() ((void)0)
#define STAGE(name) ((void)0)
#endif

// ---- the program ----------------------------------------------------------------------------------------
// The tables of doppel_torch/spec/program.py (`TABLES`), declared once here as X-macros: the column enums and the
// signature string that the loader compares with `layout_signature()` both come from these lists, so a column
// added on one side only is a clear error at load time, never a wrong sound.
// words = [n_tables, (rows, cols) per table, the tables' rows in order, mix_filter].

#define KEYBOARDS(X) X(midi_f0) X(duration)
#define ENVELOPES(X) X(attack) X(decay) X(sustain) X(release) X(alpha) X(keyboard)
#define LFOS(X) X(frequency) X(mod_depth) X(initial_phase) X(sin) X(tri) X(saw) X(rsaw) X(sqr) X(rate_env) X(amp_env)
#define MOD_INPUTS(X) X(kind) X(index)
#define MOD_OUTPUTS(X) X(role)
#define OSCILLATORS(X) X(kind) X(keyboard) X(tuning) X(mod_depth) X(initial_phase) X(shape) X(pitch) X(amp) \
    X(source) X(filter) X(slot)
#define FILTERS(X) X(kind) X(cutoff) X(mod_depth) X(control) X(target)
#define NOISE(X) X(amp)
#define MIXER(X) X(source) X(index) X(level)
#define TABLE_LIST(X) X(keyboards, KEYBOARDS) X(envelopes, ENVELOPES) X(lfos, LFOS) X(mod_inputs, MOD_INPUTS) \
    X(mod_outputs, MOD_OUTPUTS) X(oscillators, OSCILLATORS) X(filters, FILTERS) X(noise, NOISE) X(mixer, MIXER)
#define CODE_LIST(X) X(INPUT_ENVELOPE, 0) X(INPUT_LFO, 1) X(ROLE_PITCH, 0) X(ROLE_AMP, 1) X(ROLE_NOISE, 2) \
    X(ROLE_CUTOFF, 3) X(OSC_SINE, 0) X(OSC_SQUARE_SAW, 1) X(OSC_FM, 2) X(FILTER_LPF, 0) X(MIX_OSCILLATOR, 0) \
    X(MIX_NOISE, 1)

#define COLUMN(name) name,
#define TABLE_ENUM(table, COLS) namespace table { enum : int { COLS(COLUMN) N_COLS }; }
TABLE_LIST(TABLE_ENUM)
#define CODE_ENUM(name, value) constexpr int name = value;
CODE_LIST(CODE_ENUM)
enum : int {
#define TABLE_ID(table, COLS) T_##table,
    TABLE_LIST(TABLE_ID) T_matrix, N_TABLES
};

static std::string layout_signature() {
    std::string s;
    auto table = [&](const char* name, std::initializer_list<const char*> cols) {
        s += name;
        s += '=';
        bool first = true;
        for (const char* c : cols) {
            if (!first) s += ',';
            s += c;
            first = false;
        }
        s += ';';
    };
#define QUOTED(name) #name,
#define ADD_TABLE(name, COLS) table(#name, {COLS(QUOTED)});
    TABLE_LIST(ADD_TABLE)
    s += "matrix=*|";
    bool first = true;
#define ADD_CODE(name, value) s += (first ? "" : ","); s += #name "=" #value; first = false;
    CODE_LIST(ADD_CODE)
    return s;
}

struct Kb { int midi, dur; };
struct Env { int attack, decay, sustain, release, alpha, kb; };
struct Lfo { int freq, depth, phase, w[5], rate_env, amp_env; };
struct Osc { int kind, kb, tuning, depth, phase, shape, pitch, amp, source, filter, slot; };
struct Filt { int kind, cutoff, depth, control, target; };
struct Mix { int source, index, level; };

struct Program {
    int n_kb = 0, n_env = 0, n_lfo = 0, n_in = 0, n_out = 0, n_osc = 0, n_filt = 0, n_mix = 0, noise_amp = -1;
    int mix_filter = -1;
    std::vector<Kb> kb;
    std::vector<Env> env;
    std::vector<Lfo> lfo;
    std::vector<int> input_kind, input_index, role, matrix;
    std::vector<Osc> osc;
    std::vector<Filt> filt;
    std::vector<Mix> mix;

    // false on a malformed program (sizes that disagree with the declared columns, or a row out of range)
    bool parse(const int32_t* p, int64_t len) {
        static const int cols[N_TABLES] = {
#define TABLE_COLS(table, COLS) table::N_COLS,
            TABLE_LIST(TABLE_COLS) -1};
        if (len < 1 + 2 * N_TABLES || p[0] != N_TABLES) return false;
        int rows[N_TABLES];
        int64_t need = 1 + 2 * N_TABLES + 1;
        for (int t = 0; t < N_TABLES; ++t) {
            rows[t] = p[1 + 2 * t];
            const int c = p[2 + 2 * t];
            if (rows[t] < 0 || c < 0 || (t != T_matrix && c != cols[t])) return false;
            need += (int64_t)rows[t] * c;
        }
        n_kb = rows[T_keyboards]; n_env = rows[T_envelopes]; n_lfo = rows[T_lfos]; n_in = rows[T_mod_inputs];
        n_out = rows[T_mod_outputs]; n_osc = rows[T_oscillators]; n_filt = rows[T_filters]; n_mix = rows[T_mixer];
        if (need != len || rows[T_matrix] != n_out || p[2 + 2 * T_matrix] != n_in || rows[T_noise] > 1) return false;
        const int32_t* q = p + 1 + 2 * N_TABLES;
        for (int i = 0; i < n_kb; ++i, q += keyboards::N_COLS) kb.push_back({q[keyboards::midi_f0], q[keyboards::duration]});
        for (int i = 0; i < n_env; ++i, q += envelopes::N_COLS)
            env.push_back({q[envelopes::attack], q[envelopes::decay], q[envelopes::sustain], q[envelopes::release],
                           q[envelopes::alpha], q[envelopes::keyboard]});
        for (int i = 0; i < n_lfo; ++i, q += lfos::N_COLS)
            lfo.push_back({q[lfos::frequency], q[lfos::mod_depth], q[lfos::initial_phase],
                           {q[lfos::sin], q[lfos::tri], q[lfos::saw], q[lfos::rsaw], q[lfos::sqr]}, q[lfos::rate_env],
                           q[lfos::amp_env]});
        for (int i = 0; i < n_in; ++i, q += mod_inputs::N_COLS) {
            input_kind.push_back(q[mod_inputs::kind]);
            input_index.push_back(q[mod_inputs::index]);
        }
        for (int i = 0; i < n_out; ++i, q += mod_outputs::N_COLS) role.push_back(q[mod_outputs::role]);
        for (int i = 0; i < n_osc; ++i, q += oscillators::N_COLS)
            osc.push_back({q[oscillators::kind], q[oscillators::keyboard], q[oscillators::tuning],
                           q[oscillators::mod_depth], q[oscillators::initial_phase], q[oscillators::shape],
                           q[oscillators::pitch], q[oscillators::amp], q[oscillators::source], q[oscillators::filter],
                           q[oscillators::slot]});
        for (int i = 0; i < n_filt; ++i, q += filters::N_COLS)
            filt.push_back({q[filters::kind], q[filters::cutoff], q[filters::mod_depth], q[filters::control],
                            q[filters::target]});
        if (rows[T_noise] == 1) noise_amp = q[noise::amp];
        q += rows[T_noise] * noise::N_COLS;
        for (int i = 0; i < n_mix; ++i, q += mixer::N_COLS) mix.push_back({q[mixer::source], q[mixer::index], q[mixer::level]});
        for (int i = 0; i < n_out * n_in; ++i) matrix.push_back(*q++);
        mix_filter = *q;
        // Rows that index other tables must be in range (columns of theta are checked against m by the caller).
        auto in = [](int v, int n) { return v >= 0 && v < n; };
        for (const Env& e : env) if (!in(e.kb, n_kb)) return false;
        for (const Lfo& l : lfo) if (!in(l.rate_env, n_env) || !in(l.amp_env, n_env)) return false;
        for (int i = 0; i < n_in; ++i)
            if (!in(input_index[i], input_kind[i] == INPUT_LFO ? n_lfo : n_env)) return false;
        for (int k = 0; k < n_osc; ++k) {
            const Osc& o = osc[k];
            if (!in(o.kb, n_kb) || (o.filter >= 0 && !in(o.filter, n_filt))) return false;
            if (o.kind == OSC_FM ? !in(o.source, k) : (!in(o.pitch, n_out) || !in(o.amp, n_out))) return false;
        }
        for (const Filt& f : filt) if (!in(f.control, n_out) || f.target >= n_osc) return false;
        for (const Mix& x : mix) if (x.source == MIX_OSCILLATOR ? !in(x.index, n_osc) : noise_amp < 0) return false;
        return (noise_amp < 0 || in(noise_amp, n_out)) && mix_filter < n_filt;
    }

    // every theta column the program reads lies in [0, m)
    bool columns_within(int64_t m) const {
        auto ok = [m](int c) { return c >= 0 && c < m; };
        for (const Kb& k : kb) if (!ok(k.midi) || !ok(k.dur)) return false;
        for (const Env& e : env)
            if (!ok(e.attack) || !ok(e.decay) || !ok(e.sustain) || !ok(e.release) || !ok(e.alpha)) return false;
        for (const Lfo& l : lfo) {
            if (!ok(l.freq) || !ok(l.depth) || !ok(l.phase)) return false;
            for (int w : l.w) if (!ok(w)) return false;
        }
        for (int c : matrix) if (!ok(c)) return false;
        for (const Osc& o : osc)
            if (!ok(o.tuning) || !ok(o.depth) || !ok(o.phase) || (o.kind == OSC_SQUARE_SAW && !ok(o.shape))) return false;
        for (const Filt& f : filt) if (!ok(f.cutoff) || !ok(f.depth)) return false;
        for (const Mix& x : mix) if (!ok(x.level)) return false;
        return true;
    }
};

struct Shape {
    int64_t n_samples, n_control, n_padded;
    double sample_rate, control_rate, eps;
    std::vector<int32_t> up_idx;  // (n_padded,) control index of each audio sample (endpoint-aligned)
    std::vector<double> up_lam;   // (n_padded,) its interpolation weight
    std::vector<float> up_lam_f;  // the same in float32
    std::vector<int64_t> run_end;    // (n_control,) one past the last sample reading control index c
    std::vector<int64_t> run_start;  // (n_control,) the first sample reading control index c
    double lam_step;                 // (C - 1) / (N - 1): interpolation weight gained per sample
    std::vector<double> lam_first;   // (n_control,) interpolation weight of run c's first sample
    std::vector<double> lam_last;    // (n_control,) and of its last sample (contiguous: the per-run loops vectorise)
    // The runs of each block, the same for every sound: run_a[run_first[b] .. run_first[b + 1]) are the first samples
    // of block b's runs (its end, n0 + BLOCK_T, follows the last), run_c their control index. The per-run loops read
    // them in order instead of chasing up_idx -> run_end from one run to the next (a chain of dependent loads).
    std::vector<int64_t> run_first, run_a;
    std::vector<int32_t> run_c;
};

// Per-thread buffers. Control-rate signals, phases and increments are float64; the audio-rate amplitudes,
// waveforms and mix are S (the output's type): float32 runs 8 lanes where float64 runs 4.
template <typename S>
struct Work {
    std::vector<double> env, lfo, mods, inc, cyc, tmp, geo;
    std::vector<S> up, out, noise;
    std::vector<double> out_fm;  // float64 output of FM modulators (the carrier integrates their errors)
    std::vector<double> fa;      // a filter's per-sample coefficients for one block
    // keep_ramps (the gradient path): render_control keeps each envelope's attack, decay and release ramps in ramps
    // (n_env, 3, C) for the envelopes' adjoint, which would otherwise recompute their powers
    bool keep_ramps = false;
    std::vector<double> ramps;
    Work(const Program& p, const Shape& s)
        : env((size_t)p.n_env * s.n_control), lfo((size_t)p.n_lfo * s.n_control), mods((size_t)p.n_out * s.n_control),
          inc(BLOCK_T), cyc(BLOCK_T + 8), tmp(std::max<int64_t>(s.n_control, BLOCK_T)),
          geo((size_t)std::max(p.n_osc, 1) * 3 * s.n_control), up((size_t)p.n_out * (BLOCK_T + 8)),
          out((size_t)std::max(p.n_osc, 1) * BLOCK_T), noise(BLOCK_T), out_fm((size_t)std::max(p.n_osc, 1) * BLOCK_T),
          fa(BLOCK_T) {}
};

// ---- control rate -----------------------------------------------------------------------------------------

static inline double pow_d(double r, double alpha) { return exp2_d(alpha * log2_d(r)); }

// ADSR ramp r_t = min((max(t - start, 0) + eps) / dur + eps, 1) (inverse: 1 - r), zero duration -> 1; then r^alpha
// (0 where r = 0). r is monotonic after the start, so it is evaluated (division and power) only between the start
// and the first t where it reaches 1, found from an estimate and checked with the same expression; before the
// start it holds its value at ramp 0 (one power), from that t on it is 1 (inverse: 0).
template <bool HAS_START, bool INVERSE>
static void adsr_ramp(double dur_s, double start_s, double alpha, const Shape& s, double* out) {
    const int64_t C = s.n_control;
    const double dur = dur_s * s.control_rate;
    if (!(dur > 0.0)) {
        for (int64_t t = 0; t < C; ++t) out[t] = 1.0;
        return;
    }
    const double start = HAS_START ? start_s * s.control_rate : 0.0;
    const double eps = s.eps;
    auto ramp_at = [&](int64_t t) {
        double ramp = (double)t;
        if (HAS_START) ramp = std::max(ramp - start, 0.0);
        return std::min((ramp + eps) / dur + eps, 1.0);
    };
    auto power = [alpha](double r) { return r > 0.0 ? (r < 1.0 ? pow_d(r, alpha) : 1.0) : 0.0; };
    // first t past the start (t > start): earlier samples all hold the value of ramp 0
    const int64_t lo = HAS_START ? std::min<int64_t>(C, std::max<int64_t>(0, (int64_t)std::floor(start) + 1)) : 0;
    if (lo > 0) {
        const double v = power(INVERSE ? 1.0 - ramp_at(0) : ramp_at(0));
        for (int64_t t = 0; t < lo; ++t) out[t] = v;
    }
    // hi: the first t >= lo with r_t = 1 (C if none); the estimate start + (1 - eps) dur - eps is within a step
    const double guess = start + (1.0 - eps) * dur - eps;
    int64_t hi = guess < (double)lo ? lo : (guess > (double)C ? C : (int64_t)guess);
    while (hi > lo && ramp_at(hi - 1) >= 1.0) --hi;
    while (hi < C && ramp_at(hi) < 1.0) ++hi;
    for (int64_t t = lo; t < hi; ++t) {
        // through int32 (C < 2^31: control indices are int32, Shape::up_idx): AVX2 converts int32 lanes to float64, not int64 ones (the loop vectorises)
        double ramp = (double)(int32_t)t;
        if (HAS_START) ramp = std::max(ramp - start, 0.0);
        const double r0 = std::min((ramp + eps) / dur + eps, 1.0);
        const double r = INVERSE ? 1.0 - r0 : r0;
        const double pw = pow_d(r > 0.0 ? r : 1.0, alpha);
        out[t] = r > 0.0 ? pw : 0.0;
    }
    for (int64_t t = hi; t < C; ++t) out[t] = INVERSE ? 0.0 : 1.0;
}

template <typename S>
static void render_control(const Program& p, const Shape& s, const double* h, Work<S>& w) {
    const int64_t C = s.n_control;
    double* tmp = w.tmp.data();
    for (int e = 0; e < p.n_env; ++e) {
        const Env& E = p.env[e];
        const double attack = h[E.attack], decay = h[E.decay], sus = h[E.sustain], release = h[E.release];
        const double alpha = h[E.alpha], note_on = h[p.kb[E.kb].dur];
        const double new_attack = std::min(attack, note_on);
        const double new_decay = std::min(std::max(note_on - attack, 0.0), decay);
        double* env = &w.env[(size_t)e * C];
        double* att = w.keep_ramps ? &w.ramps[(size_t)3 * e * C] : env;
        double* dec = w.keep_ramps ? att + C : tmp;
        double* rel = w.keep_ramps ? att + 2 * C : tmp;
        adsr_ramp<false, false>(new_attack, 0.0, alpha, s, att);
        adsr_ramp<true, true>(new_decay, new_attack, alpha, s, dec);
        for (int64_t t = 0; t < C; ++t) env[t] = att[t] * ((1.0 - sus) * dec[t] + sus);
        adsr_ramp<true, true>(release, note_on, alpha, s, rel);
        for (int64_t t = 0; t < C; ++t) env[t] = env[t] * rel[t];
    }
    STAGE(envelopes);
    for (int l = 0; l < p.n_lfo; ++l) {
        const Lfo& L = p.lfo[l];
        const double* rate_env = &w.env[(size_t)L.rate_env * C];
        const double* amp_env = &w.env[(size_t)L.amp_env * C];
        double mode[5], total = 0.0;
        for (int k = 0; k < 5; ++k) total += (mode[k] = std::pow(h[L.w[k]], LFO_EXPONENT));
        for (int k = 0; k < 5; ++k) mode[k] /= total;
        const double f = h[L.freq], depth = h[L.depth];
        double* out = &w.lfo[(size_t)l * C];
        // The phase in fixed point, exactly as functional.fixed_point_phase: every backend sums the same integers.
        uint64_t acc = 0;
        const uint64_t start = (uint64_t)(int64_t)(((h[L.phase] / TWO_PI) * LFO_SCALE + ROUND_MAGIC) - ROUND_MAGIC);
        for (int64_t t = 0; t < C; ++t) {  // serial, C steps
            const double inc = std::max(f + depth * rate_env[t], 0.0) / s.control_rate;
            acc = (acc + (uint64_t)(int64_t)((inc * LFO_SCALE + ROUND_MAGIC) - ROUND_MAGIC)) & LFO_MASK;
            tmp[t] = (double)((acc + start) & LFO_MASK) * (1.0 / LFO_SCALE);  // u in [0, 1), exact
        }
        for (int64_t t = 0; t < C; ++t) {
            const double u = tmp[t];
            double sv, cosv;
            sincos2pi(u, sv, cosv);
            const double square = u > 0.25 && u < 0.75 ? 1.0 : (u == 0.25 || u == 0.75 ? 0.5 : 0.0);
            cosv = (1.0 - cosv) / 2.0;  // (cos(2 pi u + pi) + 1) / 2
            const double saw = u;
            const double rsaw = 1.0 - saw;
            double tri = 2.0 * saw;
            tri = tri > 1.0 ? 2.0 - tri : tri;
            const double v = mode[0] * cosv + mode[1] * tri + mode[2] * saw + mode[3] * rsaw + mode[4] * square;
            out[t] = v * amp_env[t];
        }
    }
    STAGE(lfos);
    for (int o = 0; o < p.n_out; ++o) {
        double* out = &w.mods[(size_t)o * C];
        for (int64_t t = 0; t < C; ++t) out[t] = 0.0;
        for (int i = 0; i < p.n_in; ++i) {
            const int j = p.input_index[i];
            const double* src = p.input_kind[i] == INPUT_LFO ? &w.lfo[(size_t)j * C] : &w.env[(size_t)j * C];
            const double a = h[p.matrix[(size_t)o * p.n_in + i]];
            for (int64_t t = 0; t < C; ++t) out[t] += a * src[t];
        }
    }
    STAGE(mod_matrix);
}

// ---- audio rate ---------------------------------------------------------------------------------------------

// cyc[t] = carry + phase0 + sum_{u <= t} inc[u] over one block, as four interleaved chains (no serial latency
// bound); returns the new carry, wrapped to [0, 1).
static inline double phase_block(const double* inc, double carry, double phase0, double* cyc) {
    constexpr int Q = BLOCK_T / 4;
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (int i = 0; i < Q; ++i)
        for (int j = 0; j < 4; ++j) {
            acc[j] += inc[j * Q + i];
            cyc[j * Q + i] = acc[j];
        }
    double off[4];
    off[0] = carry;
    off[1] = off[0] + acc[0];
    off[2] = off[1] + acc[1];
    off[3] = off[2] + acc[2];
    const double next = off[3] + acc[3];
    for (int j = 0; j < 4; ++j) {
        const double o = off[j] + phase0;
        double* c = cyc + j * Q;
        for (int i = 0; i < Q; ++i) c[i] += o;
    }
    return next - std::floor(next);
}

// out[j] = g r^j for j < len, four interleaved chains; returns g r^len.
static inline double geometric_fill(double g, double r, double* out, int64_t len) {
    const double r2 = r * r, r4 = r2 * r2;
    double p0 = g, p1 = g * r, p2 = g * r2, p3 = p1 * r2;
    int64_t j = 0;
    for (; j + 4 <= len; j += 4) {
        out[j] = p0;
        out[j + 1] = p1;
        out[j + 2] = p2;
        out[j + 3] = p3;
        p0 *= r4;
        p1 *= r4;
        p2 *= r4;
        p3 *= r4;
    }
    const double rest[4] = {p0, p1, p2, p3};
    for (int64_t l = 0; j + l < len; ++l) out[j + l] = rest[l];
    return rest[len - j];
}

// The phases of one geometric segment of a run, increments and running sum in one pass: inc[j] = g r^j and
// cyc[j] = P + sum_{i <= j} inc[i] for j < len, eight at a time: cyc[8k + l] = Q_k + G_k W_l with G_k = g r^{8k},
// W_l = sum_{i <= l} r^i and Q_{k+1} = Q_k + G_k W_7, i.e. two scalar recurrences per eight samples instead of a
// serial add per sample (the eight lanes are one multiply-add of broadcasts). Writes whole groups of eight (up to 7
// values past len, which the next segment overwrites: cyc has room); sets P to cyc[len - 1], returns g r^len.
// WITH_INC: the increments too, into inc (the gradient path's recompute; whole groups of eight as cyc).
template <bool WITH_INC = false>
static inline double phase_geometric(double g, double r, double& P, double* __restrict cyc, int64_t len,
                                     double* __restrict inc = nullptr) {
    // r^l and sum_{i <= l} r^i by products and sums of depth 3 (the run's start is not a long serial chain)
    const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
    const vd R = {1.0, r, r2, r2 * r, r4, r4 * r, r4 * r2, r4 * (r2 * r)};
    const double w1 = 1.0 + r, w3 = w1 + r2 * w1;
    const vd W = {1.0, w1, w1 + r2, w3, w3 + r4, w3 + r4 * w1, w3 + r4 * (w1 + r2), w3 + r4 * w3};
    double G = g, Q = P;
    int64_t j = 0;
    for (; j + 8 < len; j += 8) {
        vst(cyc + j, Q + G * W);
        if (WITH_INC) vst(inc + j, G * R);
        Q = Q + G * W[7];
        G = G * r8;
    }
    vst(cyc + j, Q + G * W);
    if (WITH_INC) vst(inc + j, G * R);
    P = Q + G * W[len - 1 - j];  // = cyc[len - 1], without waiting for the store
    return len - j == 8 ? G * r8 : G * R[len - j];
}

// Per control run c of a VCO (pitch row x (C,), base b and depth d in MIDI, scale = 440 / sample_rate, step = the
// interpolation weight gained per sample, lam_first / lam_last = the weights of each run's first and last sample):
// geo = [start (C), ratio (C), inside (C)], the run's first increment, the ratio between neighbouring increments,
// and whether the whole run stays inside the MIDI clamp (the pitch is linear in a run, so its two ends decide).
// 1: inside the clamp (geometric); 2: clamped over the whole run (one constant increment, the value the per-sample
// path computes there: 12-19 % of runs on random theta); 0: crosses a clamp (per sample). Two passes, so that the
// exp2 pass vectorises (8 lanes): the run's first MIDI pitch, then the increments.
static inline void vco_runs(const double* __restrict x, double b, double d, double scale, double step,
                            const double* __restrict lam_first, const double* __restrict lam_last, int64_t C,
                            double* __restrict geo) {
    double* __restrict start = geo;
    double* __restrict ratio = start + C;
    double* __restrict inside = ratio + C;
    for (int64_t c = 0; c < C - 1; ++c) {
        const double la = lam_first[c], le = lam_last[c];
        const double ma = b + d * ((1.0 - la) * x[c] + la * x[c + 1]);
        const double me = b + d * ((1.0 - le) * x[c] + le * x[c + 1]);
        const bool above = ma > 127.0 && me > 127.0, below = ma < 0.0 && me < 0.0;
        const bool in = ma >= 0.0 && ma <= 127.0 && me >= 0.0 && me <= 127.0;
        inside[c] = in ? 1.0 : (above || below ? 2.0 : 0.0);
        start[c] = in ? ma : (above ? 127.0 : (below ? 0.0 : ma));  // the MIDI pitch the first increment reads
    }
    for (int64_t c = 0; c < C - 1; ++c) {
        start[c] = scale * exp2_d((start[c] - 69.0) * (1.0 / 12.0));
        ratio[c] = exp2_d(d * (x[c + 1] - x[c]) * step * (1.0 / 12.0));
    }
}

template <typename S>
static inline void wave_sine(const double* cyc, S* out);
template <>
inline void wave_sine<double>(const double* cyc, double* out) {
    for (int t = 0; t < BLOCK_T; ++t) out[t] = cos2pi(cyc[t]);
}
template <>
inline void wave_sine<float>(const double* cyc, float* out) {
    for (int t = 0; t < BLOCK_T; ++t) out[t] = cos2pi_f(cyc[t]);
}

template <typename S>
static inline void wave_square_saw(const double* cyc, double partials, double shape, S* out);
template <>
inline void wave_square_saw<double>(const double* cyc, double partials, double shape, double* out) {
    const double a = PI * partials / 2.0, sh = shape;
    for (int t = 0; t < BLOCK_T; ++t) {
        double sv, cv;
        sincos2pi(cyc[t], sv, cv);
        out[t] = (1.0 - sh / 2.0) * tanh_d(a * sv) * (1.0 + sh * cv);
    }
}
template <>
inline void wave_square_saw<float>(const double* cyc, double partials, double shape, float* out) {
    const float a = (float)(PI * partials / 2.0), sh = (float)shape;
    for (int t = 0; t < BLOCK_T; ++t) {
        float sv, cv;
        sincos2pi_f(cyc[t], sv, cv);
        out[t] = (1.0f - sh / 2.0f) * tanh_f(a * sv) * (1.0f + sh * cv);
    }
}

// The one-pole low-pass of filters row f over one block, in place: y[n] = a[n] x[n] + (1 - a[n]) y[n - 1] with
// a = w / (1 + w), w = 2 pi cutoff / sample_rate (SynthAX's dt / (tau + dt)), the cutoff midi_to_hz(cutoff +
// depth * control) clamped to [0, Nyquist]; `state` carries y across blocks. The coefficients are vectorised, the
// recurrence is serial (one multiply-add per sample).
template <typename S, typename T>
static void lowpass_block(const Program& p, const Shape& s, const double* h, const S* up, int f, double& state,
                          double* a, T* x, int64_t len = BLOCK_T) {
    const Filt& F = p.filt[f];
    const S* control = up + (size_t)F.control * (BLOCK_T + 8);
    const double cutoff = h[F.cutoff], depth = h[F.depth], nyquist = s.sample_rate / 2.0;
    const double scale = TWO_PI / s.sample_rate;
    for (int64_t t = 0; t < len; ++t) {
        double hz = 440.0 * exp2_d((cutoff + depth * (double)control[t] - 69.0) * (1.0 / 12.0));
        hz = hz > nyquist ? nyquist : hz;
        const double wv = scale * hz;
        a[t] = wv / (1.0 + wv);
    }
    double y = state;
    for (int64_t t = 0; t < len; ++t) {
        y = a[t] * (double)x[t] + (1.0 - a[t]) * y;
        x[t] = (T)y;
    }
    state = y;
}

// The gradient path's checkpoint of one block start: a row of n_osc + n_filt float64, every oscillator's phase carry
// then every filter's state (written by render_sound and grad_sound_forward, read by grad_sound_backward).
static inline int64_t grad_state_width(const Program& p) { return (int64_t)p.n_osc + p.n_filt; }

static inline void write_checkpoint(const Program& p, const double* carry, const double* filter_state, double* row) {
    for (int k = 0; k < p.n_osc; ++k) row[k] = carry[k];
    for (int f = 0; f < p.n_filt; ++f) row[p.n_osc + f] = filter_state[f];
}

// One sound: control stage, then audio blocks written straight into dst (B row of the output), then the peak.
// ckpt, when not null, also receives what the gradient path's backward reads (synth_cpu_grad.inc,
// grad_sound_backward): per block start (n_blocks, n_osc + n_filt) float64 rows, every oscillator's phase carry (its
// cumulative phase without phase0, wrapped to [0, 1): the convention of phase_block) and every filter's state; and
// *peak / *arg, max |mix| before normalisation and its first index. A float32 differentiable render is then this
// render, bit for bit.
template <typename S>
static void render_sound(const Program& p, const Shape& s, const double* h, const int64_t* keys, const double* noise,
                         int normalize, S* dst, Work<S>& w, double* ckpt = nullptr, double* peak_out = nullptr,
                         int64_t* arg_out = nullptr) {
    STAGE_START();
    render_control(p, s, h, w);
    const int64_t C = s.n_control, N = s.n_samples;
    const double inv_sr = 1.0 / s.sample_rate, nyquist = s.sample_rate / 2.0;
    const uint32_t k1 = keys ? (uint32_t)keys[0] : 0u, k2 = keys ? (uint32_t)keys[1] : 0u;
    constexpr int LANES = 32 / sizeof(S);  // one 256-bit vector
    constexpr int64_t UP_STRIDE = BLOCK_T + 8;
    S* up = w.up.data();
    double* inc = w.inc.data();
    double* cyc = w.cyc.data();
    const double* lam_d = s.up_lam.data();
    const S* lam = std::is_same<S, float>::value ? (const S*)(const void*)s.up_lam_f.data() : (const S*)(const void*)lam_d;
    // Per-oscillator constants.
    std::vector<double> base(p.n_osc), depth(p.n_osc), phase0(p.n_osc), partials(p.n_osc), shape(p.n_osc),
        carry(p.n_osc, 0.0), geo_next(p.n_osc, 0.0);
    for (int k = 0; k < p.n_osc; ++k) {
        const Osc& O = p.osc[k];
        const double f0 = h[p.kb[O.kb].midi], tuning = h[O.tuning];
        depth[k] = h[O.depth];
        phase0[k] = h[O.phase] / TWO_PI;  // in cycles
        base[k] = O.kind == OSC_FM ? 440.0 * std::exp2((f0 + tuning - 69.0) / 12.0)  // FM carrier f0 in Hz
                              : f0 + tuning;                                     // VCO: MIDI
        if (O.kind == OSC_SQUARE_SAW) {
            const double max_f0 = 440.0 * std::exp2((f0 + tuning + std::max(depth[k], 0.0) - 69.0) / 12.0);
            partials[k] = 12000.0 / (max_f0 * std::log10(max_f0));
            shape[k] = h[O.shape];
        }
    }
    // FM modulators keep float64 waveforms and amplitudes even for a float32 output: in float32 their rounding,
    // integrated by the carrier's phase, costs voicefm 1e-4 relative L2 (1e-7 with float64 modulators).
    // Amplitudes, the noise level and filter cutoffs are upsampled to audio rate; pitches are read per run (below).
    std::vector<char> audio_rate(p.n_out, 0);
    for (int o = 0; o < p.n_out; ++o) audio_rate[o] = p.role[o] != ROLE_PITCH;
    std::vector<double> filter_state(p.n_filt, 0.0);
    for (int k = 0; k < p.n_osc; ++k)
        if (p.osc[k].kind != OSC_FM)
            vco_runs(&w.mods[(size_t)p.osc[k].pitch * C], base[k], depth[k], 440.0 * inv_sr, s.lam_step,
                     s.lam_first.data(), s.lam_last.data(), C, &w.geo[(size_t)k * 3 * C]);
    STAGE(pitch_setup);
    for (int64_t n0 = 0; n0 < N; n0 += BLOCK_T) {
        const int64_t len = std::min<int64_t>(BLOCK_T, N - n0);
        if (ckpt) write_checkpoint(p, carry.data(), filter_state.data(), ckpt + (n0 / BLOCK_T) * grad_state_width(p));
        // The next block's output lines, requested now for writing: their misses overlap this block's work
        // instead of stalling the mix (measured: the mix's read-modify-write passes cost 5-9 % without).
        for (int64_t t = n0 + BLOCK_T; t < std::min<int64_t>(N, n0 + 2 * BLOCK_T); t += 64 / (int64_t)sizeof(S))
            __builtin_prefetch(dst + t, 1, 3);
        // Upsampling run by run (a run = the samples between two control points): broadcasts, no gathers.
        const int64_t* run_a = &s.run_a[s.run_first[n0 / BLOCK_T]];
        const int32_t* run_c = &s.run_c[s.run_first[n0 / BLOCK_T]];
        const int n_runs = (int)(s.run_first[n0 / BLOCK_T + 1] - s.run_first[n0 / BLOCK_T]) - 1;
        for (int r = 0; r < n_runs; ++r) {
            const int64_t a = run_a[r], e = run_a[r + 1];
            const int32_t c = run_c[r];
            for (int o = 0; o < p.n_out; ++o) {
                if (!audio_rate[o]) continue;
                const S x0 = (S)w.mods[(size_t)o * C + c], x1 = (S)w.mods[(size_t)o * C + c + 1];
                S* u = up + (size_t)o * UP_STRIDE - n0;
                // Whole vectors of LANES: a run's overhang is overwritten by the next run (or is padding).
                for (int64_t t = a; t < e; t += LANES)
                    for (int l = 0; l < LANES; ++l) u[t + l] = ((S)1 - lam[t + l]) * x0 + lam[t + l] * x1;
            }
        }
        STAGE(upsample);
        for (int k = 0; k < p.n_osc; ++k) {
            const Osc& O = p.osc[k];
            S* out = &w.out[(size_t)k * BLOCK_T];
            if (O.kind == OSC_FM) {
                const double* src = &w.out_fm[(size_t)O.source * BLOCK_T];
                const double f0_hz = base[k], index = depth[k];
                for (int t = 0; t < BLOCK_T; ++t) {
                    double f = f0_hz + index * f0_hz * (double)src[t];
                    f = f < 0.0 ? 0.0 : (f > nyquist ? nyquist : f);
                    inc[t] = f * inv_sr;
                }
                STAGE(increment);
                carry[k] = phase_block(inc, carry[k], phase0[k], cyc);
            } else {
                // Within a run the MIDI pitch is linear in the sample index, so the increment is geometric:
                // inc[n + 1] = inc[n] * R (float64, <= 10 ulp drift per run), summed into the phase by
                // phase_geometric; a run clamped to 0 or 127 throughout has R = 1. Runs that cross the clamp take
                // the per-sample exp2 (same math, clamped) and a serial sum.
                const double* pitch = &w.mods[(size_t)O.pitch * C];
                const double b = base[k], d = depth[k], scale = 440.0 * inv_sr;
                const double* start = &w.geo[(size_t)k * 3 * C];
                const double* ratio = start + C;
                const double* inside = ratio + C;
                double P = carry[k] + phase0[k];
                for (int r = 0; r < n_runs; ++r) {
                    const int64_t a = run_a[r], e = run_a[r + 1];
                    const int32_t c = run_c[r];
                    double* seg = cyc + (a - n0);
                    if (inside[c] == 2.0) {
                        phase_geometric(start[c], 1.0, P, seg, e - a);
                    } else if (inside[c] != 0.0) {
                        const double g = a == s.run_start[c] ? start[c] : geo_next[k];
                        geo_next[k] = phase_geometric(g, ratio[c], P, seg, e - a);
                    } else {
                        const double x0 = pitch[c], x1 = pitch[c + 1];
                        for (int64_t t = a; t < e; ++t) {
                            const double l = lam_d[t];
                            double midi = b + d * ((1.0 - l) * x0 + l * x1);
                            midi = midi < 0.0 ? 0.0 : (midi > 127.0 ? 127.0 : midi);
                            P += scale * exp2_d((midi - 69.0) * (1.0 / 12.0));
                            seg[t - a] = P;
                        }
                    }
                }
                carry[k] = (P - phase0[k]) - std::floor(P - phase0[k]);
            }
            STAGE(phase);
            if (O.slot >= 0) {
                double* fm = &w.out_fm[(size_t)k * BLOCK_T];
                if (O.kind == OSC_SQUARE_SAW)
                    wave_square_saw<double>(cyc, partials[k], shape[k], fm);
                else
                    wave_sine<double>(cyc, fm);
                STAGE(fm_modulator);
                if (O.kind != OSC_FM) {  // float64 VCA, upsampled here run by run
                    for (int r = 0; r < n_runs; ++r) {
                        const int64_t a = run_a[r], e = run_a[r + 1];
                        const int32_t c = run_c[r];
                        const double x0 = w.mods[(size_t)O.amp * C + c], x1 = w.mods[(size_t)O.amp * C + c + 1];
                        for (int64_t t = a; t < e; ++t) fm[t - n0] *= (1.0 - lam_d[t]) * x0 + lam_d[t] * x1;
                    }
                }
                STAGE(vca);
                if (O.filter >= 0) lowpass_block(p, s, h, up, O.filter, filter_state[O.filter], w.fa.data(), fm);
                for (int t = 0; t < BLOCK_T; ++t) out[t] = (S)fm[t];
                STAGE(filter);
                continue;
            }
            if (O.kind == OSC_SQUARE_SAW)
                wave_square_saw<S>(cyc, partials[k], shape[k], out);
            else
                wave_sine<S>(cyc, out);
            STAGE(waveform);
            if (O.kind != OSC_FM) {
                const S* amp = up + (size_t)O.amp * UP_STRIDE;
                for (int t = 0; t < BLOCK_T; ++t) out[t] *= amp[t];
            }
            STAGE(vca);
            if (O.filter >= 0) lowpass_block(p, s, h, up, O.filter, filter_state[O.filter], w.fa.data(), out);
            STAGE(filter);
        }
        S* z = w.noise.data();
        if (p.noise_amp >= 0) {
            const S* amp = up + (size_t)p.noise_amp * UP_STRIDE;
            if (noise) {
                for (int64_t t = 0; t < len; ++t) z[t] = (S)noise[n0 + t] * amp[t];
            } else {
                for (int64_t t = 0; t < len; ++t) {  // U[-1, 1) with 24 bits: exact in float32
                    const uint32_t bits = mix32(mix32((uint32_t)(n0 + t) + k1) ^ k2);
                    z[t] = ((S)2 * ((S)(int32_t)(bits >> 8) * (S)(1.0 / 16777216.0)) - (S)1) * amp[t];
                }
            }
        }
        STAGE(noise);
        S* m = dst + n0;
        for (int j = 0; j < p.n_mix; ++j) {
            const Mix& M = p.mix[j];
            const S level = (S)h[M.level];
            const S* x = M.source == MIX_OSCILLATOR ? &w.out[(size_t)M.index * BLOCK_T] : z;
            if (j == 0)
                for (int64_t t = 0; t < len; ++t) m[t] = level * x[t];
            else
                for (int64_t t = 0; t < len; ++t) m[t] += level * x[t];
        }
        STAGE(mix);
        if (p.mix_filter >= 0) lowpass_block(p, s, h, up, p.mix_filter, filter_state[p.mix_filter], w.fa.data(), m, len);
        STAGE(filter);
    }
    if (normalize || peak_out) {
        // max |x| as an integer max over the bit patterns with the sign cleared (same order for x >= 0; NaN
        // cannot occur): a reduction the compiler vectorises without fast-math.
        using I = typename std::conditional<sizeof(S) == 8, int64_t, int32_t>::type;
        const I mask = std::numeric_limits<I>::max();
        I top = 0;
        for (int64_t t = 0; t < N; ++t) {
            I bits;
            std::memcpy(&bits, &dst[t], sizeof(S));
            bits &= mask;
            top = bits > top ? bits : top;
        }
        S peak;
        std::memcpy(&peak, &top, sizeof(S));
        if (peak_out) {  // the first sample at the peak (the same bits, sign cleared)
            // A chunk at a time with a branch-free test the compiler vectorises, then the chunk that holds it
            // sample by sample (the sample-by-sample search alone, early exit and all, ran N / 2 scalar steps).
            constexpr int64_t CHUNK = 64;
            int64_t at = 0;
            for (; at + CHUNK < N; at += CHUNK) {
                int hit = 0;
                for (int64_t t = at; t < at + CHUNK; ++t) {
                    I bits;
                    std::memcpy(&bits, &dst[t], sizeof(S));
                    hit |= (bits & mask) == top;
                }
                if (hit) break;
            }
            for (; at + 1 < N; ++at) {
                I bits;
                std::memcpy(&bits, &dst[at], sizeof(S));
                if ((bits & mask) == top) break;
            }
            *peak_out = (double)peak;
            *arg_out = at;
        }
        if (normalize && peak > (S)1)
            for (int64_t t = 0; t < N; ++t) dst[t] = dst[t] / peak;
    }
    STAGE(normalize);
}


// The endpoint-aligned linear upsampling of N samples from C control points (functional.upsample), over n_padded
// samples (the padding reads the last sample's position): each sample's control index and interpolation weight, and
// one past the last sample of each control index's run. Returns (C - 1) / (N - 1), the weight gained per sample.
static double upsampling_table(int64_t n_samples, int64_t n_control, int64_t n_padded, std::vector<int32_t>& idx,
                               std::vector<double>& lam, std::vector<int64_t>& run_end) {
    idx.resize(n_padded);
    lam.resize(n_padded);
    const double scale = (double)(n_control - 1) / (double)(n_samples - 1);
    for (int64_t n = 0; n < n_padded; ++n) {
        const double src = scale * (double)std::min(n, n_samples - 1);
        const int64_t i = std::min<int64_t>((int64_t)src, n_control - 2);
        idx[n] = (int32_t)i;
        lam[n] = src - (double)i;
    }
    run_end.assign(n_control, 0);
    for (int64_t n = 0; n < n_padded; ++n) run_end[idx[n]] = n + 1;
    return scale;
}

// ckpt / peak / arg: null, or render_sound's checkpoints ((batch, n_blocks, n_osc + n_filt) float64), peaks and
// their indices (batch,) for the gradient path's backward.
static int render_batch(const double* human, int64_t batch, int64_t m, const int32_t* program, int64_t program_len,
                        const int64_t* keys, const double* noise, int64_t noise_stride, void* out, int out_is_double,
                        int64_t n_samples, int64_t n_control, double sample_rate, double control_rate, double eps,
                        int normalize, int n_threads, double* ckpt = nullptr, double* peak = nullptr,
                        int64_t* arg = nullptr) {
    Program p;
    if (!p.parse(program, program_len) || !p.columns_within(m)) return -1;
    if (batch < 0 || n_samples < 2 || n_control < 2 || m <= 0) return -2;
    Shape s;
    s.n_samples = n_samples;
    s.n_control = n_control;
    s.n_padded = (n_samples + BLOCK_T - 1) / BLOCK_T * BLOCK_T;
    s.sample_rate = sample_rate;
    s.control_rate = control_rate;
    s.eps = eps;
    s.lam_step = upsampling_table(n_samples, n_control, s.n_padded, s.up_idx, s.up_lam, s.run_end);
    s.up_lam.resize(s.n_padded + 8, 1.0);  // + one vector: the upsampling reads whole vectors past a run's end
    s.run_start.assign(n_control, s.n_padded);
    for (int64_t n = s.n_padded - 1; n >= 0; --n) s.run_start[s.up_idx[n]] = n;
    s.up_lam_f.assign(s.up_lam.begin(), s.up_lam.end());
    for (int64_t n0 = 0; n0 < s.n_padded; n0 += BLOCK_T) {
        s.run_first.push_back((int64_t)s.run_a.size());
        for (int64_t a = n0; a < n0 + BLOCK_T; a = std::min<int64_t>(s.run_end[s.up_idx[a]], n0 + BLOCK_T)) {
            s.run_a.push_back(a);
            s.run_c.push_back(s.up_idx[a]);
        }
        s.run_a.push_back(n0 + BLOCK_T);  // the block's end closes its last run
        s.run_c.push_back(-1);
    }
    s.run_first.push_back((int64_t)s.run_a.size());
    s.lam_first.assign(n_control, 0.0);
    s.lam_last.assign(n_control, 0.0);
    for (int64_t c = 0; c + 1 < n_control; ++c) {
        s.lam_first[c] = s.up_lam[s.run_start[c]];
        s.lam_last[c] = s.up_lam[std::min(s.run_end[c], n_samples) - 1];
    }
    if (batch == 0) return 0;
    const int64_t ckpt_stride = grad_state_width(p) * (s.n_padded / BLOCK_T);
    n_threads = std::max(1, std::min<int>(n_threads, (int)batch));
    std::atomic<int64_t> next(0);
    std::atomic<int> failed(0);
    // No C++ exception may leave a thread (std::terminate) or cross into Python: a worker records it and stops all.
    auto worker = [&]() noexcept {
        try {
        auto render_all = [&](auto* dst) {  // dst: the output as float* or double*
            Work<std::remove_pointer_t<decltype(dst)>> w(p, s);
            for (int64_t b; (b = next.fetch_add(1)) < batch;)
                render_sound(p, s, human + b * m, keys ? keys + 2 * b : nullptr,
                             noise ? noise + b * noise_stride : nullptr, normalize, dst + b * n_samples, w,
                             ckpt ? ckpt + b * ckpt_stride : nullptr, peak ? peak + b : nullptr, arg ? arg + b : nullptr);
        };
        if (out_is_double)
            render_all((double*)out);
        else
            render_all((float*)out);
        } catch (const std::bad_alloc&) {
            failed = -3;
            next = batch;
        } catch (...) {
            failed = -4;
            next = batch;
        }
    };
    run_parallel(n_threads, worker);
    return failed.load();
}

}  // namespace

extern "C" {

// Hand over the process's OpenMP runtime: `gomp_parallel` is its GOMP_parallel(fn, data, num_threads, flags), or
// null for threads of our own (the default).
void doppel_cpu_use_openmp(void* gomp_parallel) {
    static const int registered = pthread_atfork(nullptr, nullptr, forget_openmp_in_child);
    (void)registered;
    g_gomp_parallel = (GompParallel)gomp_parallel;
}

// The table layout this library was compiled with, for the loader to compare with doppel_torch.spec.program.
const char* doppel_cpu_layout() {
    static const std::string signature = layout_signature();
    return signature.c_str();
}



// The noise keys of rng.sound_keys, bit-equal: keys[2 b], keys[2 b + 1] = k1, k2 of global sound index[b] under the
// 32-bit key `base` (rng.seed_key(seed, stream)); GOLDEN as rng.GOLDEN. (In Python this is 18 small tensor ops.)
void doppel_cpu_sound_keys(uint32_t base, uint32_t golden, const int64_t* index, int64_t batch, int64_t* keys) {
    const uint32_t salt = base * golden;
    for (int64_t b = 0; b < batch; ++b) {
        const uint64_t i = (uint64_t)index[b];
        const uint32_t k1 = mix32(mix32((uint32_t)i ^ base) ^ (uint32_t)(i >> 32));
        keys[2 * b] = k1;
        keys[2 * b + 1] = mix32(k1 ^ salt);
    }
}

// Render `batch` sounds. human: (batch, m) float64 parameters in human units; keys: (batch, 2) int64 noise keys
// (k1, k2 of doppel_torch.rng.sound_keys) or null when noise is given; noise: float64 rows of n_samples with row
// stride noise_stride (0: one row for all) or null; out: (batch, n_samples) float32 (out_is_double 0) or float64.
// Returns 0, or a negative code: -1 malformed program, -2 bad sizes, -3 out of memory, -4 another C++ error.
int doppel_cpu_render(const double* human, int64_t batch, int64_t m, const int32_t* program, int64_t program_len,
                      const int64_t* keys, const double* noise, int64_t noise_stride, void* out, int out_is_double,
                      int64_t n_samples, int64_t n_control, double sample_rate, double control_rate, double eps,
                      int normalize, int n_threads) {
    try {
        return render_batch(human, batch, m, program, program_len, keys, noise, noise_stride, out, out_is_double,
                            n_samples, n_control, sample_rate, control_rate, eps, normalize, n_threads);
    } catch (const std::bad_alloc&) {
        return -3;
    } catch (...) {
        return -4;
    }
}

#ifdef DOPPEL_STAGE_TIMERS
// The profiling build's primitives in isolation: nanoseconds per element of each per-sample building block of
// render_sound, looped `rounds` times over one block in L1 (bench/cpu_stages.py sums them into the cost of the
// arithmetic a synth's sample needs). Names in doppel_cpu_primitive_names() order.
const char* doppel_cpu_primitive_names() {
    return "sine_f32,square_saw_f32,sine_f64,phase_geometric,phase_sum,pow_f64,upsample_f32,multiply_f32,noise_f32,"
           "fm_increment_f64";
}

int doppel_cpu_primitive_ns(int64_t rounds, double* out) {
    alignas(64) static double cyc[BLOCK_T + 8], inc[BLOCK_T], fm[BLOCK_T];
    alignas(64) static float y[BLOCK_T + 32], amp[BLOCK_T + 32], lam[BLOCK_T + 32];
    for (int t = 0; t < BLOCK_T; ++t) {
        cyc[t] = 0.37 + 0.0173 * t;
        inc[t] = 0.0173 + 1e-6 * t;
        fm[t] = 0.5 * cos2pi(0.01 * t);
        lam[t] = (float)(t % 33) / 33.0f;
        amp[t] = 0.5f;
    }
    volatile double sink = 0.0;
    auto time_ns = [&](auto&& body) {
        body();
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t r = 0; r < rounds; ++r) body();
        const auto t1 = std::chrono::steady_clock::now();
        sink = sink + cyc[7] + y[5];
        return std::chrono::duration<double, std::nano>(t1 - t0).count() / ((double)rounds * BLOCK_T);
    };
    int i = 0;
    out[i++] = time_ns([&] { wave_sine<float>(cyc, y); cyc[0] += y[3] * 1e-30; });
    out[i++] = time_ns([&] { wave_square_saw<float>(cyc, 40.0, 0.5, y); cyc[0] += y[3] * 1e-30; });
    out[i++] = time_ns([&] { wave_sine<double>(cyc, fm); cyc[0] += fm[3] * 1e-30; });
    out[i++] = time_ns([&] {  // eight runs of 32 samples, as a block of a 1 s sound at 480 Hz control rate
        double P = cyc[BLOCK_T - 1] * 1e-30, g = 0.0173 + cyc[BLOCK_T - 2] * 1e-30;
        for (int a = 0; a < BLOCK_T; a += 32) g = phase_geometric(g, 1.0000001 + inc[a] * 1e-30, P, cyc + a, 32);
        cyc[0] += P * 1e-30 + g * 1e-30;
    });
    out[i++] = time_ns([&] { const double c = phase_block(inc, 0.3, 0.1, cyc); inc[0] += c * 1e-30; });
    out[i++] = time_ns([&] {
        for (int t = 0; t < BLOCK_T; ++t) fm[t] = pow_d(0.001 + 0.0039 * t, 1.7);
        cyc[0] += fm[3] * 1e-30;
    });
    out[i++] = time_ns([&] {  // one run of 32 samples at a time, whole 16-lane vectors (as render_sound)
        for (int a = 0; a < BLOCK_T; a += 32) {
            const float x0 = amp[a], x1 = amp[a + 1];
            for (int t = a; t < a + 32; t += 16)
                for (int l = 0; l < 16; ++l) y[t + l] = (1.0f - lam[t + l]) * x0 + lam[t + l] * x1;
        }
        amp[0] += y[3] * 1e-30f;
    });
    out[i++] = time_ns([&] { for (int t = 0; t < BLOCK_T; ++t) y[t] *= amp[t]; amp[0] += y[3] * 1e-30f; });
    out[i++] = time_ns([&] {
        for (int t = 0; t < BLOCK_T; ++t) {
            const uint32_t bits = mix32(mix32((uint32_t)t + 12345u) ^ 678u);
            y[t] = (2.0f * ((float)(int32_t)(bits >> 8) * (float)(1.0 / 16777216.0)) - 1.0f) * amp[t];
        }
        amp[0] += y[3] * 1e-30f;
    });
    out[i++] = time_ns([&] {
        for (int t = 0; t < BLOCK_T; ++t) {
            double f = 220.0 + 3.0 * 220.0 * fm[t];
            f = f < 0.0 ? 0.0 : (f > 8000.0 ? 8000.0 : f);
            inc[t] = f * (1.0 / 16000.0);
        }
        fm[0] += inc[3] * 1e-30;
    });
    return i;
}

// The profiling build's counters: names (comma-separated) and ticks per stage since the last read (reset).
const char* doppel_cpu_stage_names() {
#define STAGE_NAME(name) #name ","
    return STAGE_LIST(STAGE_NAME);
}
int doppel_cpu_stage_read(uint64_t* out) {
    for (int i = 0; i < N_STAGES; ++i) {
        out[i] = g_stage_ticks[i];
        g_stage_ticks[i] = 0;
    }
    return N_STAGES;
}
#endif

}  // extern "C"

// The differentiable path (audio-rate forward with checkpoints, and its adjoint): same translation unit, own file.
#include "synth_cpu_grad.inc"

// The spectral loss's per-bin passes (doppel_torch/matching/loss.py on CPU tensors): the same translation unit, own file.
#include "spectral_cpu.inc"
