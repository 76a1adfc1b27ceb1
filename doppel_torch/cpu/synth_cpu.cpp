// doppel-torch CPU fast path: one fused pass per sound, generic over any Patch.
//
// The Python side (doppel_torch/cpu/program.py) flattens a Patch into an int32 "program" (which column of the
// human-unit parameter row feeds which module input, and the wiring); this file renders it. Per sound:
//   control rate (C samples, float64): ADSRs, LFOs (times their amplitude envelope), the modulation matrix;
//   audio rate, in blocks of BLOCK_T samples: endpoint-aligned linear upsampling of the amplitude mod outputs,
//   VCO/FM increments, phase as a running float64 sum (the carry is wrapped to [0, 1) after every block),
//   waveform, VCA, keyed noise, mixer, written straight into the output row; then per-sound peak normalisation.
// Precision: float64 throughout for a float64 output. For a float32 output the phase, the increments and the FM
// modulators stay float64 (float32 cumulative phase is what makes SynthAX's float32 FM synths drift 7-47 %,
// DESIGN.md quirk 6) and the other waveforms, amplitudes and the mix run in float32 (8 SIMD lanes instead of 4):
// about 1e-7 relative L2 from the float64 reference. Sounds are spread over std::threads.
//
// The math equals doppel_torch/reference/functional.py. The transcendental functions of the per-sample loops
// (exp2, sin/cos of 2 pi x, tanh) and of the ADSR power are branch-free polynomials accurate to a few ulps of
// their type, written so that the compiler vectorises the loops that call them.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

constexpr int BLOCK_T = 256;  // audio samples per block; a multiple of 4 (four interleaved prefix-sum chains)
constexpr double PI = 3.14159265358979323846;
constexpr double TWO_PI = 2.0 * PI;
constexpr double LOG2E = 1.4426950408889634074;
constexpr double LN2 = 0.69314718055994530942;
constexpr double LFO_EXPONENT = 2.71828182845904523536;  // math.e, as the reference
constexpr double ROUND_MAGIC = 6755399441055744.0;     // 1.5 * 2^52: (x + M) - M rounds x to an integer

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
    p = p * f + 1.0 / 39916800.0;
    p = p * f + 1.0 / 3628800.0;
    p = p * f + 1.0 / 362880.0;
    p = p * f + 1.0 / 40320.0;
    p = p * f + 1.0 / 5040.0;
    p = p * f + 1.0 / 720.0;
    p = p * f + 1.0 / 120.0;
    p = p * f + 1.0 / 24.0;
    p = p * f + 1.0 / 6.0;
    p = p * f + 0.5;
    p = p * f + 1.0;
    p = p * f + 1.0;
    const int64_t k_int = bits_of(shifted) - bits_of(ROUND_MAGIC);
    return p * from_bits((k_int + 1023) << 52);
}

// log2(x) for a positive normal x: exponent plus 2 atanh((m - 1)/(m + 1)) / ln 2 with m in [sqrt(1/2), sqrt(2)].
static inline double log2_d(double x) {
    const int64_t b = bits_of(x);
    int64_t e = (b >> 52) - 1023;
    double m = from_bits((b & 0x000FFFFFFFFFFFFFLL) | 0x3FF0000000000000LL);
    const bool big = m > 1.4142135623730950488;
    m = big ? 0.5 * m : m;
    e = big ? e + 1 : e;
    const double s = (m - 1.0) / (m + 1.0);
    const double z = s * s;
    double p = 1.0 / 21.0;
    p = p * z + 1.0 / 19.0;
    p = p * z + 1.0 / 17.0;
    p = p * z + 1.0 / 15.0;
    p = p * z + 1.0 / 13.0;
    p = p * z + 1.0 / 11.0;
    p = p * z + 1.0 / 9.0;
    p = p * z + 1.0 / 7.0;
    p = p * z + 1.0 / 5.0;
    p = p * z + 1.0 / 3.0;
    p = p * z + 1.0;
    const double e_d = from_bits(bits_of(ROUND_MAGIC) + e) - ROUND_MAGIC;
    return e_d + (2.0 * LOG2E) * (s * p);
}

// sin(2 pi x) and cos(2 pi x) for x in cycles: exact reduction to |y| <= 1/8 cycle, Taylor series to theta^16.
static inline void sincos2pi(double x, double& sin_out, double& cos_out) {
    const double r = x - ((x + ROUND_MAGIC) - ROUND_MAGIC);  // [-1/2, 1/2]
    const double q = (4.0 * r + ROUND_MAGIC) - ROUND_MAGIC;  // quadrant in {-2, -1, 0, 1, 2}
    const double th = TWO_PI * (r - 0.25 * q);               // [-pi/4, pi/4]
    const double z = th * th;
    double s = -1.0 / 1307674368000.0;  // -1/15!
    s = s * z + 1.0 / 6227020800.0;
    s = s * z - 1.0 / 39916800.0;
    s = s * z + 1.0 / 362880.0;
    s = s * z - 1.0 / 5040.0;
    s = s * z + 1.0 / 120.0;
    s = s * z - 1.0 / 6.0;
    s = s * z + 1.0;
    s = s * th;
    double c = 1.0 / 20922789888000.0;  // 1/16!
    c = c * z - 1.0 / 87178291200.0;
    c = c * z + 1.0 / 479001600.0;
    c = c * z - 1.0 / 3628800.0;
    c = c * z + 1.0 / 40320.0;
    c = c * z - 1.0 / 720.0;
    c = c * z + 1.0 / 24.0;
    c = c * z - 0.5;
    c = c * z + 1.0;
    // sin/cos(theta + q pi / 2)
    const bool odd = q == 1.0 || q == -1.0;
    const bool zero = q == 0.0;
    cos_out = odd ? (q > 0.0 ? -s : s) : (zero ? c : -c);
    sin_out = odd ? (q > 0.0 ? c : -c) : (zero ? s : -s);
}

static inline double cos2pi(double x) {
    double s, c;
    sincos2pi(x, s, c);
    return c;
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

static inline void sincos2pi_f(double x, float& sin_out, float& cos_out) {
    const float r = (float)(x - ((x + ROUND_MAGIC) - ROUND_MAGIC));  // [-1/2, 1/2]
    const float q = (4.0f * r + ROUND_MAGIC_F) - ROUND_MAGIC_F;
    const float th = 6.28318530717958647f * (r - 0.25f * q);
    const float z = th * th;
    float s = 1.0f / 362880.0f;  // 1/9!, truncation < 2e-9
    s = s * z - 1.0f / 5040.0f;
    s = s * z + 1.0f / 120.0f;
    s = s * z - 1.0f / 6.0f;
    s = s * z + 1.0f;
    s = s * th;
    float c = -1.0f / 3628800.0f;  // -1/10!, truncation < 2e-10
    c = c * z + 1.0f / 40320.0f;
    c = c * z - 1.0f / 720.0f;
    c = c * z + 1.0f / 24.0f;
    c = c * z - 0.5f;
    c = c * z + 1.0f;
    const bool odd = q == 1.0f || q == -1.0f;
    const bool zero = q == 0.0f;
    cos_out = odd ? (q > 0.0f ? -s : s) : (zero ? c : -c);
    sin_out = odd ? (q > 0.0f ? c : -c) : (zero ? s : -s);
}

static inline float tanh_f(float y) {
    y = y < -9.0f ? -9.0f : (y > 9.0f ? 9.0f : y);  // tanh(9) = 1 - 3e-8: 1 in float32
    const float x = 2.8853900817779268f * y;       // 2 y log2(e), in [-26, 26]
    const float shifted = x + ROUND_MAGIC_F;
    const float k = shifted - ROUND_MAGIC_F;
    const float f = (x - k) * 0.69314718055994531f;
    float p = 1.0f / 40320.0f;  // 1/8!, truncation < 5e-9
    p = p * f + 1.0f / 5040.0f;
    p = p * f + 1.0f / 720.0f;
    p = p * f + 1.0f / 120.0f;
    p = p * f + 1.0f / 24.0f;
    p = p * f + 1.0f / 6.0f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    const int32_t k_int = bits_of_f(shifted) - bits_of_f(ROUND_MAGIC_F);
    const float e = p * from_bits_f((k_int + 127) << 23);
    return (e - 1.0f) / (e + 1.0f);
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

// ---- the program ----------------------------------------------------------------------------------------
// Layout of the int32 program (doppel_torch/cpu/program.py writes it):
//   header: n_kb n_env n_lfo n_in n_out n_osc n_mix noise_amp
//   keyboards n_kb x [midi_f0 duration]
//   envelopes n_env x [attack decay sustain release alpha keyboard]
//   lfos      n_lfo x [frequency mod_depth initial_phase sin tri saw rsaw sqr rate_env amp_env]
//   mod inputs n_in x [signal]  (signal < n_env: envelope; else lfo signal - n_env)
//   mod matrix n_out x n_in [column]
//   oscillators n_osc x [kind keyboard tuning mod_depth initial_phase shape pitch amp source] (kind 0 sine,
//     1 square_saw, 2 fm; unused fields -1)
//   mixer n_mix x [input level]  (input: oscillator index, or -1 for the noise)
// Integers other than kind/keyboard/signal/source/input/pitch/amp/noise_amp are columns of the parameter row.

struct Kb { int midi, dur; };
struct Env { int attack, decay, sustain, release, alpha, kb; };
struct Lfo { int freq, depth, phase, w[5], rate_env, amp_env; };
struct Osc { int kind, kb, tuning, depth, phase, shape, pitch, amp, source; };
struct Mix { int input, level; };

struct Program {
    int n_kb, n_env, n_lfo, n_in, n_out, n_osc, n_mix, noise_amp;
    std::vector<Kb> kb;
    std::vector<Env> env;
    std::vector<Lfo> lfo;
    std::vector<int> inputs, matrix;
    std::vector<Osc> osc;
    std::vector<Mix> mix;

    bool parse(const int32_t* p, int64_t len) {
        if (len < 8) return false;
        n_kb = p[0]; n_env = p[1]; n_lfo = p[2]; n_in = p[3]; n_out = p[4]; n_osc = p[5]; n_mix = p[6];
        noise_amp = p[7];
        const int64_t need = 8 + 2LL * n_kb + 6LL * n_env + 10LL * n_lfo + n_in + (int64_t)n_out * n_in
                             + 9LL * n_osc + 2LL * n_mix;
        if (need != len) return false;
        const int32_t* q = p + 8;
        for (int i = 0; i < n_kb; ++i, q += 2) kb.push_back({q[0], q[1]});
        for (int i = 0; i < n_env; ++i, q += 6) env.push_back({q[0], q[1], q[2], q[3], q[4], q[5]});
        for (int i = 0; i < n_lfo; ++i, q += 10)
            lfo.push_back({q[0], q[1], q[2], {q[3], q[4], q[5], q[6], q[7]}, q[8], q[9]});
        for (int i = 0; i < n_in; ++i) inputs.push_back(*q++);
        for (int i = 0; i < n_out * n_in; ++i) matrix.push_back(*q++);
        for (int i = 0; i < n_osc; ++i, q += 9) osc.push_back({q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8]});
        for (int i = 0; i < n_mix; ++i, q += 2) mix.push_back({q[0], q[1]});
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
};

// Per-thread buffers. Control-rate signals, phases and increments are float64; the audio-rate amplitudes,
// waveforms and mix are S (the output's type): float32 runs 8 lanes where float64 runs 4.
template <typename S>
struct Work {
    std::vector<double> env, lfo, mods, inc, cyc, tmp, geo;
    std::vector<S> up, out, noise;
    std::vector<double> out_fm;  // float64 output of FM modulators (the carrier integrates their errors)
    Work(const Program& p, const Shape& s)
        : env((size_t)p.n_env * s.n_control), lfo((size_t)p.n_lfo * s.n_control), mods((size_t)p.n_out * s.n_control),
          inc(BLOCK_T), cyc(BLOCK_T), tmp(std::max<int64_t>(s.n_control, BLOCK_T)),
          geo((size_t)std::max(p.n_osc, 1) * 3 * s.n_control), up((size_t)p.n_out * (BLOCK_T + 8)),
          out((size_t)std::max(p.n_osc, 1) * BLOCK_T), noise(BLOCK_T), out_fm((size_t)std::max(p.n_osc, 1) * BLOCK_T) {}
};

// ---- control rate -----------------------------------------------------------------------------------------

static inline double pow_d(double r, double alpha) { return exp2_d(alpha * log2_d(r)); }

// ADSR ramp r_t = min((max(t - start, 0) + eps) / dur + eps, 1) (inverse: 1 - r), zero duration -> 1; then r^alpha
// (0 where r = 0). The power is evaluated only where r is neither 0 nor 1 and, before `start`, once.
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
    for (int64_t t = 0; t < C; ++t) {
        double ramp = (double)t;
        if (HAS_START) ramp = std::max(ramp - start, 0.0);
        const double r = std::min((ramp + eps) / dur + eps, 1.0);
        out[t] = INVERSE ? 1.0 - r : r;
    }
    int64_t lo = 0, hi = C;
    if (HAS_START) {
        // first t past the start (t > start): earlier samples all hold the value of ramp 0
        const int64_t first = std::min<int64_t>(C, std::max<int64_t>(0, (int64_t)std::floor(start) + 1));
        if (first > 0) {
            const double r0 = out[0];
            const double v = r0 > 0.0 ? (r0 < 1.0 ? pow_d(r0, alpha) : 1.0) : 0.0;
            for (int64_t t = 0; t < first; ++t) out[t] = v;
        }
        lo = first;
    }
    // The ramp is monotonic after the start: r reaches 1 (inverse: 0) and stays there.
    while (hi > lo && (out[hi - 1] == (INVERSE ? 0.0 : 1.0))) --hi;
    for (int64_t t = lo; t < hi; ++t) {
        const double r = out[t];
        const double pw = pow_d(r > 0.0 ? r : 1.0, alpha);
        out[t] = r > 0.0 ? pw : 0.0;
    }
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
        adsr_ramp<false, false>(new_attack, 0.0, alpha, s, env);
        adsr_ramp<true, true>(new_decay, new_attack, alpha, s, tmp);
        for (int64_t t = 0; t < C; ++t) env[t] = env[t] * ((1.0 - sus) * tmp[t] + sus);
        adsr_ramp<true, true>(release, note_on, alpha, s, tmp);
        for (int64_t t = 0; t < C; ++t) env[t] = env[t] * tmp[t];
    }
    for (int l = 0; l < p.n_lfo; ++l) {
        const Lfo& L = p.lfo[l];
        const double* rate_env = &w.env[(size_t)L.rate_env * C];
        const double* amp_env = &w.env[(size_t)L.amp_env * C];
        double mode[5], total = 0.0;
        for (int k = 0; k < 5; ++k) total += (mode[k] = std::pow(h[L.w[k]], LFO_EXPONENT));
        for (int k = 0; k < 5; ++k) mode[k] /= total;
        const double f = h[L.freq], depth = h[L.depth], phase0 = h[L.phase] / TWO_PI;
        double* out = &w.lfo[(size_t)l * C];
        double cycles = 0.0;
        for (int64_t t = 0; t < C; ++t) {  // wrapped running phase in cycles (serial, C steps)
            cycles += std::max(f + depth * rate_env[t], 0.0) / s.control_rate;
            cycles -= std::floor(cycles);
            tmp[t] = cycles + phase0;  // the reference's argument 2 pi cycles + phase0, in cycles
        }
        for (int64_t t = 0; t < C; ++t) {
            const double x = tmp[t];
            double sv, cosv;
            sincos2pi(x + 0.5, sv, cosv);  // cos(argument + pi)
            const double square = cosv > 0.0 ? 1.0 : (cosv < 0.0 ? 0.0 : 0.5);  // (sign(cos) + 1) / 2
            cosv = (cosv + 1.0) / 2.0;
            const double saw = x - std::floor(x);  // remainder(argument, 2 pi) / 2 pi
            const double rsaw = 1.0 - saw;
            double tri = 2.0 * saw;
            tri = tri > 1.0 ? 2.0 - tri : tri;
            const double v = mode[0] * cosv + mode[1] * tri + mode[2] * saw + mode[3] * rsaw + mode[4] * square;
            out[t] = v * amp_env[t];
        }
    }
    for (int o = 0; o < p.n_out; ++o) {
        double* out = &w.mods[(size_t)o * C];
        for (int64_t t = 0; t < C; ++t) out[t] = 0.0;
        for (int i = 0; i < p.n_in; ++i) {
            const int sig = p.inputs[i];
            const double* src = sig < p.n_env ? &w.env[(size_t)sig * C] : &w.lfo[(size_t)(sig - p.n_env) * C];
            const double a = h[p.matrix[(size_t)o * p.n_in + i]];
            for (int64_t t = 0; t < C; ++t) out[t] += a * src[t];
        }
    }
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

template <typename S>
static inline void wave_sine(const double* cyc, S* out);
template <>
inline void wave_sine<double>(const double* cyc, double* out) {
    for (int t = 0; t < BLOCK_T; ++t) out[t] = cos2pi(cyc[t]);
}
template <>
inline void wave_sine<float>(const double* cyc, float* out) {
    for (int t = 0; t < BLOCK_T; ++t) {
        float sv, cv;
        sincos2pi_f(cyc[t], sv, cv);
        out[t] = cv;
    }
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

// One sound: control stage, then audio blocks written straight into dst (B row of the output), then the peak.
template <typename S>
static void render_sound(const Program& p, const Shape& s, const double* h, const int64_t* keys, const double* noise,
                         int normalize, S* dst, Work<S>& w) {
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
        base[k] = O.kind == 2 ? 440.0 * std::exp2((f0 + tuning - 69.0) / 12.0)  // FM carrier f0 in Hz
                              : f0 + tuning;                                     // VCO: MIDI
        if (O.kind == 1) {
            const double max_f0 = 440.0 * std::exp2((f0 + tuning + std::max(depth[k], 0.0) - 69.0) / 12.0);
            partials[k] = 12000.0 / (max_f0 * std::log10(max_f0));
            shape[k] = h[O.shape];
        }
    }
    // FM modulators keep float64 waveforms and amplitudes even for a float32 output: in float32 their rounding,
    // integrated by the carrier's phase, costs voicefm 1e-4 relative L2 (1e-7 with float64 modulators).
    std::vector<char> modulator(p.n_osc, 0);
    for (const Osc& O : p.osc)
        if (O.kind == 2) modulator[O.source] = 1;
    // Amplitudes and the noise level are upsampled to audio rate; pitches are read per run (below).
    std::vector<char> audio_rate(p.n_out, 0);
    audio_rate[p.noise_amp] = 1;
    for (const Osc& O : p.osc)
        if (O.amp >= 0) audio_rate[O.amp] = 1;
    // Per control run c of each VCO: its first increment, the ratio between neighbours, and whether the whole
    // run stays inside the MIDI clamp (the pitch is linear in a run, so its two ends decide).
    for (int k = 0; k < p.n_osc; ++k) {
        const Osc& O = p.osc[k];
        if (O.kind == 2) continue;
        const double* x = &w.mods[(size_t)O.pitch * C];
        double* start = &w.geo[(size_t)k * 3 * C];
        double* ratio = start + C;
        double* inside = ratio + C;
        const double b = base[k], d = depth[k], scale = 440.0 * inv_sr, step = s.lam_step;
        for (int64_t c = 0; c < C - 1; ++c) {
            const double la = lam_d[s.run_start[c]], le = lam_d[std::min(s.run_end[c], N) - 1];
            const double ma = b + d * ((1.0 - la) * x[c] + la * x[c + 1]);
            const double me = b + d * ((1.0 - le) * x[c] + le * x[c + 1]);
            inside[c] = (ma >= 0.0 && ma <= 127.0 && me >= 0.0 && me <= 127.0) ? 1.0 : 0.0;
            start[c] = scale * exp2_d((ma - 69.0) * (1.0 / 12.0));
            ratio[c] = exp2_d(d * (x[c + 1] - x[c]) * step * (1.0 / 12.0));
        }
    }
    for (int64_t n0 = 0; n0 < N; n0 += BLOCK_T) {
        const int64_t len = std::min<int64_t>(BLOCK_T, N - n0);
        // Upsampling run by run (a run = the samples between two control points): broadcasts, no gathers.
        for (int64_t a = n0; a < n0 + BLOCK_T;) {
            const int32_t c = s.up_idx[a];
            const int64_t e = std::min<int64_t>(s.run_end[c], n0 + BLOCK_T);
            for (int o = 0; o < p.n_out; ++o) {
                if (!audio_rate[o]) continue;
                const S x0 = (S)w.mods[(size_t)o * C + c], x1 = (S)w.mods[(size_t)o * C + c + 1];
                S* u = up + (size_t)o * UP_STRIDE - n0;
                // Whole vectors of LANES: a run's overhang is overwritten by the next run (or is padding).
                for (int64_t t = a; t < e; t += LANES)
                    for (int l = 0; l < LANES; ++l) u[t + l] = ((S)1 - lam[t + l]) * x0 + lam[t + l] * x1;
            }
            a = e;
        }
        for (int k = 0; k < p.n_osc; ++k) {
            const Osc& O = p.osc[k];
            S* out = &w.out[(size_t)k * BLOCK_T];
            if (O.kind == 2) {
                const double* src = &w.out_fm[(size_t)O.source * BLOCK_T];
                const double f0_hz = base[k], index = depth[k];
                for (int t = 0; t < BLOCK_T; ++t) {
                    double f = f0_hz + index * f0_hz * (double)src[t];
                    f = f < 0.0 ? 0.0 : (f > nyquist ? nyquist : f);
                    inc[t] = f * inv_sr;
                }
            } else {
                // Within a run the MIDI pitch is linear in the sample index, so the increment is geometric:
                // inc[n + 1] = inc[n] * R (float64, <= 10 ulp drift per run). Runs that touch the [0, 127]
                // clamp take the per-sample exp2 (same math, clamped).
                const double* pitch = &w.mods[(size_t)O.pitch * C];
                const double b = base[k], d = depth[k], scale = 440.0 * inv_sr;
                const double* start = &w.geo[(size_t)k * 3 * C];
                const double* ratio = start + C;
                const double* inside = ratio + C;
                for (int64_t a = n0; a < n0 + BLOCK_T;) {
                    const int32_t c = s.up_idx[a];
                    const int64_t e = std::min<int64_t>(s.run_end[c], n0 + BLOCK_T);
                    if (inside[c] != 0.0) {
                        const double g = a == s.run_start[c] ? start[c] : geo_next[k];
                        geo_next[k] = geometric_fill(g, ratio[c], inc + (a - n0), e - a);
                    } else {
                        const double x0 = pitch[c], x1 = pitch[c + 1];
                        for (int64_t t = a; t < e; ++t) {
                            const double l = lam_d[t];
                            double midi = b + d * ((1.0 - l) * x0 + l * x1);
                            midi = midi < 0.0 ? 0.0 : (midi > 127.0 ? 127.0 : midi);
                            inc[t - n0] = scale * exp2_d((midi - 69.0) * (1.0 / 12.0));
                        }
                    }
                    a = e;
                }
            }
            carry[k] = phase_block(inc, carry[k], phase0[k], cyc);
            if (modulator[k]) {
                double* fm = &w.out_fm[(size_t)k * BLOCK_T];
                if (O.kind == 1)
                    wave_square_saw<double>(cyc, partials[k], shape[k], fm);
                else
                    wave_sine<double>(cyc, fm);
                if (O.kind != 2) {  // float64 VCA, upsampled here run by run
                    for (int64_t a = n0; a < n0 + BLOCK_T;) {
                        const int32_t c = s.up_idx[a];
                        const int64_t e = std::min<int64_t>(s.run_end[c], n0 + BLOCK_T);
                        const double x0 = w.mods[(size_t)O.amp * C + c], x1 = w.mods[(size_t)O.amp * C + c + 1];
                        for (int64_t t = a; t < e; ++t) fm[t - n0] *= (1.0 - lam_d[t]) * x0 + lam_d[t] * x1;
                        a = e;
                    }
                }
                for (int t = 0; t < BLOCK_T; ++t) out[t] = (S)fm[t];
                continue;
            }
            if (O.kind == 1)
                wave_square_saw<S>(cyc, partials[k], shape[k], out);
            else
                wave_sine<S>(cyc, out);
            if (O.kind != 2) {
                const S* amp = up + (size_t)O.amp * UP_STRIDE;
                for (int t = 0; t < BLOCK_T; ++t) out[t] *= amp[t];
            }
        }
        S* z = w.noise.data();
        {
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
        S* m = dst + n0;
        for (int j = 0; j < p.n_mix; ++j) {
            const Mix& M = p.mix[j];
            const S level = (S)h[M.level];
            const S* x = M.input >= 0 ? &w.out[(size_t)M.input * BLOCK_T] : z;
            if (j == 0)
                for (int64_t t = 0; t < len; ++t) m[t] = level * x[t];
            else
                for (int64_t t = 0; t < len; ++t) m[t] += level * x[t];
        }
    }
    if (normalize) {
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
        if (peak > (S)1)
            for (int64_t t = 0; t < N; ++t) dst[t] = dst[t] / peak;
    }
}

}  // namespace

extern "C" {

// Render `batch` sounds. human: (batch, m) float64 parameters in human units; keys: (batch, 2) int64 noise keys
// (k1, k2 of doppel_torch.rng.sound_keys) or null when noise is given; noise: float64 rows of n_samples with row
// stride noise_stride (0: one row for all) or null; out: (batch, n_samples) float32 (out_is_double 0) or float64.
// Returns 0, or a negative code: -1 malformed program, -2 bad sizes.
int doppel_cpu_render(const double* human, int64_t batch, int64_t m, const int32_t* program, int64_t program_len,
                      const int64_t* keys, const double* noise, int64_t noise_stride, void* out, int out_is_double,
                      int64_t n_samples, int64_t n_control, double sample_rate, double control_rate, double eps,
                      int normalize, int n_threads) {
    Program p;
    if (!p.parse(program, program_len)) return -1;
    if (batch < 0 || n_samples < 2 || n_control < 2 || m <= 0) return -2;
    Shape s;
    s.n_samples = n_samples;
    s.n_control = n_control;
    s.n_padded = (n_samples + BLOCK_T - 1) / BLOCK_T * BLOCK_T;
    s.sample_rate = sample_rate;
    s.control_rate = control_rate;
    s.eps = eps;
    s.up_idx.resize(s.n_padded);
    s.up_lam.resize(s.n_padded + 8);  // + one vector: the upsampling reads whole vectors past a run's end
    const double scale = (double)(n_control - 1) / (double)(n_samples - 1);
    for (int64_t n = 0; n < s.n_padded; ++n) {
        const double src = scale * (double)std::min(n, n_samples - 1);
        int64_t i = (int64_t)src;
        i = std::min<int64_t>(i, n_control - 2);
        s.up_idx[n] = (int32_t)i;
        s.up_lam[n] = src - (double)i;
    }
    s.run_end.assign(n_control, 0);
    for (int64_t n = 0; n < s.n_padded; ++n) s.run_end[s.up_idx[n]] = n + 1;
    s.run_start.assign(n_control, s.n_padded);
    for (int64_t n = s.n_padded - 1; n >= 0; --n) s.run_start[s.up_idx[n]] = n;
    s.lam_step = scale;
    for (int64_t n = s.n_padded; n < s.n_padded + 8; ++n) s.up_lam[n] = 1.0;
    s.up_lam_f.assign(s.up_lam.begin(), s.up_lam.end());
    if (batch == 0) return 0;
    n_threads = std::max(1, std::min<int>(n_threads, (int)batch));
    std::atomic<int64_t> next(0);
    auto worker = [&]() {
        if (out_is_double) {
            Work<double> w(p, s);
            for (int64_t b; (b = next.fetch_add(1)) < batch;)
                render_sound(p, s, human + b * m, keys ? keys + 2 * b : nullptr,
                             noise ? noise + b * noise_stride : nullptr, normalize, (double*)out + b * n_samples, w);
        } else {
            Work<float> w(p, s);
            for (int64_t b; (b = next.fetch_add(1)) < batch;)
                render_sound(p, s, human + b * m, keys ? keys + 2 * b : nullptr,
                             noise ? noise + b * noise_stride : nullptr, normalize, (float*)out + b * n_samples, w);
        }
    };
    if (n_threads == 1) {
        worker();
    } else {
        std::vector<std::thread> pool;
        for (int i = 0; i < n_threads; ++i) pool.emplace_back(worker);
        for (auto& th : pool) th.join();
    }
    return 0;
}

}  // extern "C"
