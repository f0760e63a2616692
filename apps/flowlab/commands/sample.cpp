// flowlab sample RUN_DIR|CKPT: draw samples from a trained model into .png, .csv or .npy.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "../command.hpp"
#include "../distributed.hpp"
#include "../output.hpp"
#include "../session.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/parallel.hpp"

namespace flowlab::cli {
namespace {

void declare(po::options_description& o) {
    o.add_options()  //
        (",n", value_named("N"), "number of samples (default 64)")  //
        ("temperature", value_named("T"), "scale of the base distribution (default 1)")  //
        ("out", value_named("FILE"), "FILE.png (image data), FILE.csv or FILE.npy (default samples.png for images, else samples.csv)")  //
        ("seed", value_named("S"), "random seed (default 0)")  //
        ("time", po::bool_switch(), "then time --repeats more draws of N and print one JSON line: median samples/s")  //
        ("repeats", value_named("R"), "timed draws for --time (default 3)");
    add_set_option(o);
    add_plugin_options(o);
    add_quiet_option(o);
}

// -n comes from the command line: a count no memory holds is a clear error, not a crash.
ConfigError too_many_samples(std::int64_t n, std::int64_t d, const std::string& why) {
    return ConfigError("-n " + std::to_string(n) + ": too many samples for memory: " + std::to_string(n) + " samples of " +
                       std::to_string(d) + " values " + why);
}

// Bounds n before the draw allocates. A draw's memory is measured on two small batches: the
// growth from one to the other is the cost per sample (activations, conditioner hidden layers),
// the rest a fixed cost (weights derived once per call). `format_bytes` per value is what
// writing the output format holds besides the samples.
void check_sample_memory(Experiment& exp, std::int64_t n, double temperature, double format_bytes) {
    const std::int64_t d = numel(exp.data.event_shape);
    std::int64_t values = 0;
    if (__builtin_mul_overflow(n, d, &values)) throw too_many_samples(n, d, "overflow 64-bit sizes; draw fewer per call");
    constexpr std::int64_t kProbe = 32;
    if (n <= 2 * kProbe) return;  // no larger than the probes themselves
    double value_bytes = 4;
    auto draw_bytes = [&](std::int64_t m) {
        Rng probe_rng(0, 1);  // its own generator: the real draw is the same with or without the check
        const std::size_t before = tensor_live_bytes();
        reset_tensor_peak_bytes();
        {
            Tensor x = draw_samples(exp, m, probe_rng, temperature);
            value_bytes = static_cast<double>(dtype_size(x.dtype()));
        }
        return static_cast<double>(tensor_peak_bytes() - before);
    };
    const double small = draw_bytes(kProbe), large = draw_bytes(2 * kProbe);
    const double per_sample = std::max((large - small) / kProbe, static_cast<double>(d) * value_bytes) +
                              static_cast<double>(d) * format_bytes;
    const double fixed = std::max(0.0, small - per_sample * kProbe);
    const double need = fixed + per_sample * static_cast<double>(n);
    const double avail = static_cast<double>(available_memory_bytes());
    if (avail > 0 && need > avail) {
        const auto fit = static_cast<long long>(std::max(0.0, (avail - fixed) / per_sample));
        throw too_many_samples(n, d, "need about " + format_gigabytes(need) + ", " + format_gigabytes(avail) +
                                         " is available; draw at most about " + std::to_string(fit) +
                                         " per call (with a different --seed for each)");
    }
}

// The draw above was the warm-up (primitive cache, allocations); now `repeats` timed batches
// of n, as the training benchmark does with its windows.
void print_timing(Experiment& exp, const std::string& target, long n, long repeats, double temperature, Rng& rng,
                  Communicator& comm) {
    std::vector<double> rates;
    for (long r = 0; r < repeats; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        Tensor xs = draw_samples(exp, n, rng, temperature, &comm);
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        rates.push_back(static_cast<double>(n) / dt);
    }
    std::vector<double> sorted = rates;
    std::sort(sorted.begin(), sorted.end());
    if (comm.rank() != 0) return;
    std::printf("{\"sampling\": \"%s\", \"threads\": %d, \"batch\": %ld, \"repeats\": %ld, \"samples_per_s\": %.3f, \"runs\": [",
                target.c_str(), num_threads(), n, repeats, sorted[sorted.size() / 2]);
    for (std::size_t i = 0; i < rates.size(); ++i) std::printf("%s%.3f", i ? ", " : "", rates[i]);
    std::printf("]}\n");
}

int run(const Args& a) {
    const long n = a.integer("-n", 64, 1, "a non-negative integer");
    const auto seed = static_cast<unsigned long>(a.integer("seed", 0, 0, "a non-negative integer"));
    const double temperature = a.non_negative("temperature", 1.0);
    const long repeats = a.integer("repeats", 3, 1, "a positive integer");
    if (a.positional().size() != 1) throw UsageError("sample takes one RUN_DIR or CHECKPOINT");
    // Under mpirun each rank draws its rows of the N (the noise one process draws for them) and
    // rank 0 writes them all.
    Communicator& comm = communicator();
    SessionOptions so = session_options(a);
    so.quiet = so.quiet || comm.rank() != 0;
    Session s = Session::trained(a.positional()[0], so);
    Experiment& exp = s.experiment();
    configure_distributed(s.config());
    set_command_threads(s.config());
    Rng rng(seed, 0);
    const Shape& ev = exp.data.event_shape;
    std::string out = a.text("out");
    if (out.empty()) out = ev.size() == 3 ? "samples.png" : "samples.csv";
    auto ends = [&](const char* ext) { return out.size() >= std::strlen(ext) && out.rfind(ext) == out.size() - std::strlen(ext); };
    const bool png = ends(".png"), csv = ends(".csv");
    if (!png && !csv && !ends(".npy")) throw UsageError("--out " + out + ": use .png (images), .csv or .npy");
    // The option is well formed, the model is the wrong kind for it: one line, not the usage.
    if (png && ev.size() != 3)
        throw ConfigError("--out " + out + ": a PNG grid needs image data [C, H, W], this model's data are " +
                          shape_str(ev) + "; write " + out.substr(0, out.size() - 4) + ".csv or .npy instead");
    // Besides the samples, the PNG path holds f32 and double copies and the pixels; CSV its text (about
    // 15 characters a value, with the string's growth and final copy).
    check_sample_memory(exp, n, temperature, png ? 13.0 : csv ? 48.0 : 0.0);
    try {
        if (png) {
            write_image_samples(exp, out, n, temperature, rng, &comm);
        } else {
            Tensor xs = draw_samples(exp, n, rng, temperature, &comm);
            if (comm.rank() == 0) {
                if (csv) write_text(out, tensor_csv(xs.reshape({xs.size(0), -1})));
                else write_npy(out, xs);
            }
        }
    } catch (const std::bad_alloc&) {  // the estimate fell short
        throw too_many_samples(n, numel(ev), "ran out of memory; draw fewer per call");
    }
    if (comm.rank() == 0)
        std::printf("%s: %lld samples at temperature %g\n", out.c_str(), static_cast<long long>(n), temperature);
    if (a.flag("time")) print_timing(exp, a.positional()[0], n, repeats, temperature, rng, comm);
    return kOk;
}

}  // namespace

extern const Command kSampleCommand = {
    "sample",
    "draw samples from a trained model into a .png grid, .csv or .npy",
    "RUN_DIR|CHECKPOINT [-n N] [--temperature T] [--out FILE.png|.csv|.npy] [options]",
    "Loads a trained run (its newest checkpoint, or the checkpoint given; the parameter average when the\n"
    "run kept one) and writes N samples. Image samples go to a PNG grid with the pixel levels recovered;\n"
    "vectors to CSV (one sample a line) or NumPy .npy. --time times further draws (sampling throughput).\n"
    "Under mpirun the ranks share the N samples (each draws the noise one process draws for its rows) and\n"
    "rank 0 writes them.",
    declare,
    run,
};

}  // namespace flowlab::cli
