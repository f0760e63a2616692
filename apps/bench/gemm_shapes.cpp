// GEMM shapes through the core's tiled sgemm, one at a time: how long each of a training
// step's products takes and how the core tiles it. The default list is W3's (the coupling
// networks of configs/fmnist_glow.json at batch 64: 128 hidden channels, 12,544 pixels at
// level 1 and 3,136 at level 2); --shape adds others.
//
//   flowlab_gemm_shapes [--threads N] [--repeats R] [--cold] [--small] [--shape M,N,K,TA,TB]...
//
// --cold evicts the caches before each call, as a training step meets its operands. --small
// times backend::sgemm_small instead (one call on one thread, the own AVX-512 kernel unless
// FLOWLAB_GEMM=onednn; B not transposed), as conv_stack calls it on a group of images.
// Prints one line per shape: the product, the tiling (count x rows or columns), the median time
// of R calls and its GFLOP/s. Timing only: the data are constants.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/onednn.hpp"
#include "flowlab/parallel.hpp"

namespace {

struct Shape {
    const char* what;
    std::int64_t m, n, k;
    bool ta, tb;
};

// C[m, n] = op(A) op(B) as the GEMM convolutions call it (conv_gemm.cpp).
std::vector<Shape> w3_shapes() {
    const std::int64_t p1 = 64 * 14 * 14, p2 = 64 * 7 * 7;
    return {
        {"L1 1x1 forward", p1, 128, 128, false, true},
        {"L1 1x1 input gradient", p1, 128, 128, false, false},
        {"L1 1x1 weight gradient", 128, 128, p1, true, false},
        {"L1 thin-in forward (2 ch, 3x3)", p1, 128, 18, false, false},
        {"L1 thin-in input gradient", p1, 18, 128, false, true},
        {"L1 thin-in weight gradient", 18, 128, p1, true, false},
        {"L1 thin-out forward (4 ch, 3x3)", p1, 36, 128, false, false},
        {"L1 thin-out input gradient", p1, 128, 36, false, true},
        {"L1 thin-out weight gradient", 128, 36, p1, true, false},
        {"L2 1x1 weight gradient", 128, 128, p2, true, false},
        {"L2 thin-out weight gradient", 128, 72, p2, true, false},
    };
}

// Evicts the operands from the caches (a training step's activations come from memory, not
// from a benchmark's previous repeat): writes a buffer twice the size of the last-level cache.
void evict_caches() {
    static std::vector<char> junk(64u << 20);
    static char v = 0;
    ++v;
    for (std::size_t i = 0; i < junk.size(); i += 64) junk[i] = v;
}

double median_ms(const Shape& s, int repeats, bool cold, bool small) {
    std::vector<float> a(static_cast<std::size_t>(s.m * s.k), 0.5f), b(static_cast<std::size_t>(s.k * s.n), 0.25f),
        c(static_cast<std::size_t>(s.m * s.n));
    const flowlab::backend::Gemm g{.m = s.m, .n = s.n, .k = s.k, .trans_a = s.ta, .trans_b = s.tb};
    const auto call = [&] {
        if (small)
            flowlab::backend::sgemm_small(g, s.ta ? s.m : s.k, s.tb ? s.k : s.n, s.n, a.data(), b.data(), c.data(), nullptr);
        else
            flowlab::backend::sgemm(g, a.data(), b.data(), c.data());
    };
    call();  // builds and caches the primitives
    std::vector<double> t;
    for (int r = 0; r < repeats; ++r) {
        if (cold) evict_caches();
        const auto t0 = std::chrono::steady_clock::now();
        call();
        t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

int usage() {
    std::fprintf(stderr, "usage: flowlab_gemm_shapes [--threads N] [--repeats R] [--cold] [--small] [--shape M,N,K,TA,TB]...\n");
    return 2;
}

// A whole positive integer, or false (a typo is an error, not a silent 0).
bool positive(const char* text, int& out) {
    char* end = nullptr;
    const long v = std::strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < 1 || v > 1 << 20) return false;
    out = static_cast<int>(v);
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    int threads = 1, repeats = 15;
    bool cold = false, small = false;
    std::vector<Shape> shapes;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--cold" || arg == "--small") {
            (arg == "--cold" ? cold : small) = true;
            continue;
        }
        if (i + 1 >= argc) return usage();
        if (arg == "--threads" || arg == "--repeats") {
            if (!positive(argv[++i], arg == "--threads" ? threads : repeats)) {
                std::fprintf(stderr, "flowlab_gemm_shapes: %s wants a positive whole number, got '%s'\n", arg.c_str(), argv[i]);
                return usage();
            }
        } else if (arg == "--shape") {
            long long m, n, k;
            int ta, tb;
            if (std::sscanf(argv[++i], "%lld,%lld,%lld,%d,%d", &m, &n, &k, &ta, &tb) != 5 || m < 1 || n < 1 || k < 1)
                return usage();
            shapes.push_back({"--shape", m, n, k, ta != 0, tb != 0});
        } else {
            return usage();
        }
    }
    if (shapes.empty()) shapes = w3_shapes();
    flowlab::set_num_threads(threads);
    std::printf("%-34s %24s %16s %10s %8s\n", "product", "m x n x k", "tiles", "ms", "GFLOP/s");
    for (const Shape& s : shapes) {
        const flowlab::backend::GemmTiling t = flowlab::backend::gemm_tiling(s.m, s.n, s.k);
        const std::string dims = std::to_string(s.m) + " x " + std::to_string(s.n) + " x " + std::to_string(s.k);
        const std::string tiles = small ? "1 (small)" : t.count <= 1 ? "1" : std::to_string(t.count) + " x " + std::to_string(t.step) +
                                                           (t.mode == flowlab::backend::GemmTiling::rows ? " rows" : " cols");
        const double ms = median_ms(s, repeats, cold, small);
        std::printf("%-34s %24s %16s %10.3f %8.1f\n", s.what, dims.c_str(), tiles.c_str(), ms,
                    2.0 * static_cast<double>(s.m) * static_cast<double>(s.n) * static_cast<double>(s.k) / ms / 1e6);
    }
    return 0;
}
