// A command-line driver for the kernel built for another architecture (tests/backends/cpu/test_cross_arch.py runs
// it under qemu-user): reads one request file, calls doppel_cpu_render or the gradient pair, writes the result.
// Request (native byte order): int64 batch, m, program_len, n_samples, n_control, out_is_double, normalize, grad;
// float64 sample_rate, control_rate, eps; float64 human[batch * m]; int32 program[program_len];
// int64 keys[batch * 2]; when grad: out-type dL/d audio[batch * n_samples].
// Reply: the audio (out type), then, when grad, float64 dL/d human[batch * m].
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

extern "C" {
int doppel_cpu_render(const double*, int64_t, int64_t, const int32_t*, int64_t, const int64_t*, const double*,
                      int64_t, void*, int, int64_t, int64_t, double, double, double, int, int);
int doppel_cpu_grad_forward(const double*, int64_t, int64_t, const int32_t*, int64_t, const int64_t*, const double*,
                            int64_t, void*, int, double*, int64_t*, double*, int64_t, int64_t, double, double, double,
                            int, int);
int doppel_cpu_grad_backward(const double*, int64_t, int64_t, const int32_t*, int64_t, const int64_t*, const double*,
                             int64_t, const void*, const void*, int, const double*, const int64_t*, const double*,
                             double*, double*, int64_t, int64_t, double, double, double, int, int);
}

template <typename T>
static bool read_into(FILE* f, std::vector<T>& v, size_t n) {
    v.resize(n);
    return std::fread(v.data(), sizeof(T), n, f) == n;
}

int main(int argc, char** argv) {
    if (argc != 4) return 2;
    FILE* in = std::fopen(argv[1], "rb");
    if (!in) return 2;
    std::vector<int64_t> head;
    std::vector<double> rates, human;
    std::vector<int32_t> program;
    std::vector<int64_t> keys;
    if (!read_into(in, head, 8) || !read_into(in, rates, 3)) return 2;
    const int64_t batch = head[0], m = head[1], len = head[2], n = head[3], n_control = head[4];
    const int dbl = (int)head[5], normalize = (int)head[6], grad = (int)head[7];
    const size_t item = dbl ? 8 : 4;
    if (!read_into(in, human, batch * m) || !read_into(in, program, len) || !read_into(in, keys, batch * 2)) return 2;
    std::vector<unsigned char> out(batch * n * item), gy;
    const int threads = std::atoi(argv[3]);
    int code;
    std::vector<double> gh;
    if (!grad) {
        code = doppel_cpu_render(human.data(), batch, m, program.data(), len, keys.data(), nullptr, 0, out.data(), dbl,
                                 n, n_control, rates[0], rates[1], rates[2], normalize, threads);
    } else {
        if (!read_into(in, gy, batch * n * item)) return 2;
        const int64_t width = 64, blocks = (n + 255) / 256;  // checkpoint rows: room for any of the test's programs
        std::vector<double> ckpt(batch * blocks * width), peak(batch);
        std::vector<int64_t> arg(batch);
        gh.assign(batch * m, 0.0);
        code = doppel_cpu_grad_forward(human.data(), batch, m, program.data(), len, keys.data(), nullptr, 0, out.data(),
                                       dbl, peak.data(), arg.data(), ckpt.data(), n, n_control, rates[0], rates[1],
                                       rates[2], normalize, threads);
        if (code == 0)
            code = doppel_cpu_grad_backward(human.data(), batch, m, program.data(), len, keys.data(), nullptr, 0,
                                            out.data(), gy.data(), dbl, peak.data(), arg.data(), ckpt.data(),
                                            gh.data(), nullptr, n, n_control, rates[0], rates[1], rates[2], normalize,
                                            threads);
    }
    std::fclose(in);
    if (code != 0) return 10 - code;
    FILE* f = std::fopen(argv[2], "wb");
    if (!f) return 2;
    std::fwrite(out.data(), 1, out.size(), f);
    if (grad) std::fwrite(gh.data(), sizeof(double), gh.size(), f);
    std::fclose(f);
    return 0;
}
