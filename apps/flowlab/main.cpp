// flowlab: the experiment runner.
//
//   flowlab run CONFIG [--set key.path=value]... [--output DIR] [--plugin-dir DIR]...
//   flowlab validate CONFIG          build the flow without training; layers, shapes, parameters
//   flowlab list [KIND]              registered types with parameters, defaults and origin
//   flowlab run --resume RUN_DIR     continue a run from its latest checkpoint
//   flowlab eval RUN_DIR|CHECKPOINT [--split test]
//   flowlab sample RUN_DIR|CHECKPOINT -n N [--temperature T] [--out FILE.png|.csv|.npy]
//   flowlab schema                   JSON Schema of the config format, from the registry
//   flowlab report RUN_DIR           (re)write report.html
//   flowlab bench CONFIG [--warmup N] [--timed N] [--repeats N]   training throughput as JSON
//
// Exit codes (one per error kind, so scripts can tell them apart):
//   0 ok, 1 internal error, 2 usage, 3 config error, 4 plugin error, 5 i/o error,
//   6 numeric error (training diverged), 7 shape error, 8 check-plugin found failures,
//   10 interrupted by SIGINT/SIGTERM (the current step finished and a checkpoint was written)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <new>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "flowlab/checkpoint.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/image_io.hpp"
#include "flowlab/report.hpp"
#include "flowlab/run_dir.hpp"
#include "flowlab/experiment.hpp"
#include "flowlab/parallel.hpp"
#include "flowlab/plugin.hpp"
#include "flowlab/version.hpp"
#include "plugin_commands.hpp"

namespace fs = std::filesystem;
using namespace flowlab;

namespace {

enum Exit { kOk = 0, kInternal = 1, kUsage = 2, kConfig = 3, kPlugin = 4, kIo = 5, kNumeric = 6, kShape = 7,
           kInterrupted = 10 };

const char* kUsageText =
    "usage: flowlab <command> [options]\n"
    "\n"
    "commands:\n"
    "  run CONFIG          train and evaluate an experiment, write its run directory\n"
    "  run --resume RUN_DIR  continue an interrupted run from its latest checkpoint\n"
    "  eval RUN_DIR|CKPT   NLL and bits/dim of a trained model (--split test|valid|train)\n"
    "  sample RUN_DIR|CKPT draw samples: -n N, --temperature T, --out FILE (.png, .csv, .npy);\n"
    "                      --time adds one JSON line: median samples/s over --repeats batches\n"
    "  schema              print a JSON Schema of the config format (for editors)\n"
    "  report RUN_DIR      (re)write the run's report.html\n"
    "  validate CONFIG     build the flow without training: layers, shapes, parameter counts\n"
    "  list [KIND]         registered types (bijector, base, dequantizer, optimizer, schedule,\n"
    "                      conditioner, dataset) with parameters, defaults and origin plugin\n"
    "  bench CONFIG        training throughput: warm-up steps, then timed windows; prints\n"
    "                      one JSON line (median samples/s over the windows)\n"
    "  check-plugin LIB.so run the conformance suite on each bijector the plugin registers\n"
    "                      (or on the TYPEs named after LIB.so); exit code 8 if a check fails\n"
    "  plugin-info LIB.so  what a plugin declares: name, version, ABI, flowlab version, compiler\n"
    "  version             print the version\n"
    "\n"
    "options:\n"
    "  --plugin-dir DIR    also look for plugins in DIR (repeatable)\n"
    "  --plugin PATH       load this plugin library too (repeatable)\n"
    "  --set KEY=VALUE     override a config value, e.g. --set train.steps=100 (repeatable)\n"
    "  --output DIR        run directory (default: the config's \"output\", or runs/<name>)\n"
    "  --quiet             no progress lines\n"
    "  --stop-after N      run: stop (with a checkpoint) after N steps of this invocation\n"
    "  --warmup N, --timed N, --repeats N   bench: steps before timing, steps per window, windows\n";

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Args {
    std::string command;
    std::vector<std::string> positional;
    std::vector<std::string> plugin_dirs, plugins, sets;
    std::string output;
    bool quiet = false;
    long warmup = 50, timed = 500, repeats = 3;
    bool resume = false;
    long stop_after = -1;
    std::string split = "test", out;
    long n = 64;
    double temperature = 1.0;
    unsigned long seed = 0;
    bool time = false;
};

Args parse_args(int argc, char** argv) {
    Args a;
    if (argc < 2) throw UsageError("no command given");
    a.command = argv[1];
    for (int i = 2; i < argc; ++i) {
        std::string s = argv[i];
        auto value = [&](const char* name) -> std::string {
            if (i + 1 >= argc) throw UsageError(std::string(name) + " needs a value");
            return argv[++i];
        };
        if (s == "--plugin-dir")
            a.plugin_dirs.push_back(value("--plugin-dir"));
        else if (s == "--plugin")
            a.plugins.push_back(value("--plugin"));
        else if (s == "--set")
            a.sets.push_back(value("--set"));
        else if (s == "--output")
            a.output = value("--output");
        else if (s == "--resume")
            a.resume = true;
        else if (s == "--split")
            a.split = value("--split");
        else if (s == "--out")
            a.out = value("--out");
        else if (s == "-n" || s == "--stop-after" || s == "--seed") {
            std::string v = value(s.c_str());
            char* end = nullptr;
            long k = std::strtol(v.c_str(), &end, 10);
            if (*end != 0 || k < (s == "-n" ? 1 : 0)) throw UsageError(s + " needs a non-negative integer, got '" + v + "'");
            if (s == "-n") a.n = k; else if (s == "--seed") a.seed = static_cast<unsigned long>(k); else a.stop_after = k;
        } else if (s == "--temperature") {
            std::string v = value("--temperature");
            char* end = nullptr;
            a.temperature = std::strtod(v.c_str(), &end);
            if (*end != 0 || !(a.temperature >= 0)) throw UsageError("--temperature needs a number >= 0, got '" + v + "'");
        } else if (s == "--warmup" || s == "--timed" || s == "--repeats") {
            std::string v = value(s.c_str());
            char* end = nullptr;
            long n = std::strtol(v.c_str(), &end, 10);
            if (*end != 0 || n < (s == "--warmup" ? 0 : 1)) throw UsageError(s + " needs a positive integer, got '" + v + "'");
            (s == "--warmup" ? a.warmup : s == "--timed" ? a.timed : a.repeats) = n;
        } else if (s == "--quiet")
            a.quiet = true;
        else if (s == "--time")
            a.time = true;
        else if (s == "-h" || s == "--help")
            throw UsageError("");
        else if (s.rfind("--", 0) == 0)
            throw UsageError("unknown option '" + s + "'");
        else
            a.positional.push_back(s);
    }
    return a;
}

std::vector<std::string> search_dirs(const Args& a) {
    std::vector<std::string> dirs = a.plugin_dirs;
    for (auto& d : default_plugin_dirs()) dirs.push_back(d);
    return dirs;
}

// The usual plugin directories, then those of the plugins a run loaded (config.json's
// loaded_plugins), so resume, eval and sample of a run that used an out-of-tree plugin
// find it without --plugin-dir again. Reads only the paths flowlab itself wrote there.
std::vector<std::string> run_search_dirs(const Args& a, const std::string& run_dir) {
    std::vector<std::string> dirs = search_dirs(a);
    std::ifstream f(fs::path(run_dir) / "config.json");
    if (!f) return dirs;
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str(), key = "\"path\": \"";
    std::size_t pos = text.find("\"loaded_plugins\"");
    while (pos != std::string::npos && (pos = text.find(key, pos)) != std::string::npos) {
        pos += key.size();
        const std::size_t end = text.find('"', pos);
        if (end == std::string::npos) break;
        std::error_code ec;
        const fs::path parent = fs::path(text.substr(pos, end - pos)).parent_path();
        if (fs::is_directory(parent, ec)) dirs.push_back(parent.string());
        pos = end;
    }
    return dirs;
}

// Loads the named plugins (skipping ones already loaded from the same file).
void load_plugins(Registry& reg, const std::vector<std::string>& names, const std::vector<std::string>& dirs) {
    for (const auto& n : names) {
        std::string path = resolve_plugin(n, dirs);
        bool loaded = false;
        for (const auto& p : reg.plugins) loaded = loaded || fs::equivalent(p.path, path);
        if (!loaded) load_plugin(reg, path);
    }
}

std::string shape_list(const Shape& s) { return shape_str(s); }

void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path);
    if (!f) throw IoError(path + ": cannot write (check the directory exists and is writable)");
    f << text;
    if (!f) throw IoError(path + ": write failed (disk full?)");
}

std::string read_file(const std::string& path) {
    std::ifstream f(path);
    if (!f) throw IoError(path + ": cannot read");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// [N, D] as CSV, one row a line.
std::string tensor_csv(const Tensor& t) {
    std::ostringstream csv;
    csv.precision(7);
    const std::int64_t n = t.size(0), d = t.numel() / std::max<std::int64_t>(1, n);
    for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t j = 0; j < d; ++j) csv << (j ? "," : "") << t.item(i * d + j);
        csv << "\n";
    }
    return csv.str();
}

// NumPy .npy (version 1.0, little-endian, C order).
void write_npy(const std::string& path, const Tensor& t) {
    std::string shape = "(";
    for (auto d : t.shape()) shape += std::to_string(d) + ",";
    if (t.dim() > 1) shape.pop_back();
    shape += ")";
    std::string header = std::string("{'descr': '") + (t.dtype() == DType::f32 ? "<f4" : "<f8") +
                         "', 'fortran_order': False, 'shape': " + shape + ", }";
    std::size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += "\n";
    std::ofstream f(path, std::ios::binary);
    if (!f) throw IoError(path + ": cannot write");
    const unsigned short hl = static_cast<unsigned short>(header.size());
    f.write("\x93NUMPY\x01\x00", 8);
    f.put(static_cast<char>(hl & 0xff));
    f.put(static_cast<char>(hl >> 8));
    f << header;
    f.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
    if (!f) throw IoError(path + ": write failed");
}

// Image samples as a PNG grid: the flow's output lives in the dequantized space
// x' = (level + u) / levels, so floor(x' * levels) recovers the pixel level.
void write_image_samples(Experiment& exp, const std::string& path, std::int64_t n, double temperature, Rng& rng) {
    Tensor xs = exp.flow->sample(n, rng, temperature).to(DType::f32);
    const double levels = exp.data.discrete ? std::ldexp(1.0, exp.data.bits) : 0.0;
    float* p = xs.f32();
    std::int64_t finite = 0;
    for (std::int64_t i = 0; i < xs.numel(); ++i) {
        double v = p[i];
        if (std::isfinite(v)) ++finite; else v = 0.0;
        if (levels > 0) v = std::floor(std::clamp(v, 0.0, 1.0 - 1e-7) * levels) / (levels - 1.0);
        p[i] = static_cast<float>(std::clamp(v, 0.0, 1.0));
    }
    write_png_grid(path, xs, static_cast<std::int64_t>(std::ceil(std::sqrt(static_cast<double>(n)))));
    if (finite != xs.numel())
        std::fprintf(stderr, "flowlab: %s: %lld of %lld sample values were not finite (drawn as black)\n", path.c_str(),
                     static_cast<long long>(xs.numel() - finite), static_cast<long long>(xs.numel()));
}

// log p(x) of a 2-D model on a g x g grid over the test data's range, as CSV x,y,logp.
std::string density_grid_csv(Experiment& exp, int g) {
    const Tensor& t = exp.data.test.x;
    double lo[2] = {INFINITY, INFINITY}, hi[2] = {-INFINITY, -INFINITY};
    for (std::int64_t i = 0; i < t.size(0); ++i)
        for (int d = 0; d < 2; ++d) lo[d] = std::min(lo[d], t.item(2 * i + d)), hi[d] = std::max(hi[d], t.item(2 * i + d));
    for (int d = 0; d < 2; ++d) {
        double m = 0.1 * (hi[d] - lo[d]);
        lo[d] -= m, hi[d] += m;
    }
    std::vector<double> pts;
    for (int i = 0; i < g; ++i)
        for (int j = 0; j < g; ++j) {
            pts.push_back(lo[0] + (hi[0] - lo[0]) * (j + 0.5) / g);
            pts.push_back(lo[1] + (hi[1] - lo[1]) * (i + 0.5) / g);
        }
    NoGradGuard guard;
    exp.flow->set_training(false);
    Tensor lp = exp.flow->log_prob(Var(Tensor::from_vector({g * g, 2}, pts, t.dtype()))).value();
    exp.flow->set_training(true);
    std::ostringstream csv;
    csv << "x,y,logp\n";
    for (std::int64_t k = 0; k < g * g; ++k) csv << pts[2 * k] << "," << pts[2 * k + 1] << "," << lp.item(k) << "\n";
    return csv.str();
}

int cmd_validate(const Args& a, Registry& reg) {
    if (a.positional.size() != 1) throw UsageError("validate takes one CONFIG");
    Params cfg = load_experiment(a.positional[0], a.sets);
    load_plugins(reg, experiment_plugins(cfg), search_dirs(a));
    load_plugins(reg, a.plugins, search_dirs(a));
    Experiment exp = build_experiment(cfg, reg);
    std::printf("%s: valid\n", a.positional[0].c_str());
    std::printf("data: %s, event shape %s, %lld train / %lld test examples\n",
                cfg.get_object("data").get_string("type").c_str(), shape_list(exp.data.event_shape).c_str(),
                static_cast<long long>(exp.data.train.size()), static_cast<long long>(exp.data.test.size()));
    std::printf("%-4s %-28s %-22s %-14s %-14s %12s\n", "#", "node", "type", "in", "out", "parameters");
    std::int64_t total = 0;
    const auto& info = exp.flow->layer_info();
    for (std::size_t i = 0; i < info.size(); ++i) {
        std::printf("%-4zu %-28s %-22s %-14s %-14s %12lld\n", i, info[i].pointer.c_str(), info[i].type.c_str(),
                    shape_list(info[i].in_shape).c_str(), shape_list(info[i].out_shape).c_str(),
                    static_cast<long long>(info[i].num_parameters));
        total += info[i].num_parameters;
    }
    std::printf("base: %s, %lld parameters\n", cfg.get_object("model").get_object("base").get_string("type").c_str(),
                static_cast<long long>(exp.flow->base().num_parameters()));
    std::printf("total parameters: %lld\n", static_cast<long long>(exp.flow->num_parameters()));
    (void)total;
    return kOk;
}

template <class Tab>
void print_table(const Tab& t, const std::string& filter) {
    if (!filter.empty() && filter != t.kind() && !(filter == "base" && t.kind() == "base distribution")) return;
    std::printf("%s types:\n", t.kind().c_str());
    for (const auto& [name, e] : t.entries()) {
        std::printf("  %-22s %s\n", name.c_str(), e.doc.c_str());
        std::printf("  %-22s origin: %s\n", "", e.origin.c_str());
        for (const auto& p : e.schema) {
            std::string def = p.required() ? "required" : "default " + p.default_json;
            std::string range;
            if (std::isfinite(p.min_value) || std::isfinite(p.max_value)) {
                std::ostringstream os;
                os << " [" << (std::isfinite(p.min_value) ? std::to_string(p.min_value) : "-inf") << ", "
                   << (std::isfinite(p.max_value) ? std::to_string(p.max_value) : "inf") << "]";
                range = os.str();
            }
            std::string choices;
            for (const auto& c : p.choices_) choices += (choices.empty() ? " one of " : "|") + c;
            std::printf("      %-20s %-12s %s%s%s - %s\n", p.name.c_str(), param_type_name(p.type), def.c_str(),
                        range.c_str(), choices.c_str(), p.doc.c_str());
        }
    }
    std::printf("\n");
}

// Every plugin in the search path, so that a user's plugin directory shows up too.
void load_all_plugins(Registry& reg, const Args& a) {
    std::vector<std::string> dirs = search_dirs(a);
    std::set<std::string> seen;
    for (const auto& d : dirs) {
        std::error_code ec;
        if (!fs::is_directory(d, ec)) continue;
        std::vector<fs::path> files;
        for (const auto& f : fs::directory_iterator(d, ec)) {
            std::string fn = f.path().filename().string();
            if (fn.rfind("libflowlab_", 0) == 0 && f.path().extension() == ".so") files.push_back(f.path());
        }
        std::sort(files.begin(), files.end());
        for (const auto& f : files) {
            std::string key = fs::canonical(f).string();
            if (seen.insert(key).second) load_plugin(reg, f.string());
        }
    }
    load_plugins(reg, a.plugins, dirs);
}

int cmd_list(const Args& a, Registry& reg) {
    std::string filter = a.positional.empty() ? "" : a.positional[0];
    static const std::set<std::string> kinds = {"bijector", "base", "base distribution", "dequantizer", "optimizer",
                                                "schedule", "conditioner", "dataset"};
    if (!filter.empty() && !kinds.count(filter))
        throw UsageError("unknown kind '" + filter +
                         "' (known: bijector, base, dequantizer, optimizer, schedule, conditioner, dataset)");
    load_all_plugins(reg, a);
    std::printf("plugins:\n");
    for (const auto& p : reg.plugins)
        std::printf("  %s %s - %s\n      %s\n", p.name.c_str(), p.version.c_str(), p.description.c_str(),
                    p.path.c_str());
    std::printf("\n");
    print_table(reg.bijectors, filter);
    print_table(reg.distributions, filter);
    print_table(reg.dequantizers, filter);
    print_table(reg.conditioners, filter);
    print_table(reg.optimizers, filter);
    print_table(reg.schedules, filter);
    print_table(reg.datasets, filter);
    return kOk;
}

volatile int g_stop = 0;
void on_signal(int) { g_stop = 1; }

// Everything a finished (or interrupted) run leaves for people: samples, plots, report.
void write_artifacts(Experiment& exp, const Params& cfg, const std::string& run_dir) {
    Params ev = cfg.get_object("eval");
    std::int64_t n = ev.get_int("samples");
    const Shape& ev_shape = exp.data.event_shape;
    Rng rng(static_cast<std::uint64_t>(cfg.get_int("seed")) + 7, 0);
    if (n > 0 && ev_shape.size() == 1) {
        Tensor xs = exp.flow->sample(n, rng, ev.get_number("temperature"));
        write_text(run_dir + "/samples.csv", tensor_csv(xs));
    }
    if (n > 0 && ev_shape.size() == 3) write_image_samples(exp, run_dir + "/samples.png", std::min<std::int64_t>(n, 64),
                                                         ev.get_number("temperature"), rng);
    if (ev_shape.size() == 1 && ev_shape[0] == 2) {
        // Test data and the model density on a grid, for the report's 2-D plots.
        const Tensor& test = exp.data.test.x;
        write_text(run_dir + "/data.csv", tensor_csv(test.rows(0, std::min<std::int64_t>(test.size(0), 2000))));
        write_text(run_dir + "/density.csv", density_grid_csv(exp, 60));
    }
    write_report(run_dir);
}

int cmd_run(const Args& a, Registry& reg) {
    if (a.positional.size() != 1) throw UsageError(a.resume ? "run --resume takes one RUN_DIR" : "run takes one CONFIG");
    Params cfg = a.resume ? load_run_config(a.positional[0], a.sets) : load_experiment(a.positional[0], a.sets);
    const auto dirs = a.resume ? run_search_dirs(a, a.positional[0]) : search_dirs(a);
    load_plugins(reg, experiment_plugins(cfg), dirs);
    load_plugins(reg, a.plugins, dirs);
    std::string run_dir = a.resume ? a.positional[0] : (a.output.empty() ? cfg.get_string("output") : a.output);
    Experiment exp = build_experiment(cfg, reg);
    if (a.resume && run_finished(exp, run_dir)) {  // nothing to do, and no file is touched
        std::printf("%s: already finished (%s/summary.json); nothing to resume\n", cfg.get_string("name").c_str(),
                    run_dir.c_str());
        return kOk;
    }
    fs::create_directories(run_dir);

    // The resolved config: every default filled in, plus where each plugin came from.
    write_run_config(run_dir, cfg, reg.plugins);

    if (!a.quiet)
        std::fprintf(stderr, "flowlab: %s - %lld parameters, %lld training examples, run directory %s\n",
                     cfg.get_string("name").c_str(), static_cast<long long>(exp.flow->num_parameters()),
                     static_cast<long long>(exp.data.train.size()), run_dir.c_str());
    TrainOptions opt;
    opt.run_dir = run_dir;
    opt.quiet = a.quiet;
    opt.progress_line = ::isatty(2) != 0;
    opt.resume = a.resume;
    opt.stop_after = a.stop_after;
    opt.stop_flag = &g_stop;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    TrainSummary s = train(exp, opt);
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (s.interrupted) {
        std::printf("%s: stopped at step %lld of %lld; checkpoint written. Continue with: flowlab run --resume %s\n",
                    cfg.get_string("name").c_str(), static_cast<long long>(s.steps),
                    static_cast<long long>(cfg.get_object("train").get_int("steps")), run_dir.c_str());
        return g_stop ? kInterrupted : kOk;
    }

    write_run_summary(run_dir, cfg.get_string("name"), s);
    write_artifacts(exp, cfg, run_dir);

    std::printf("%s: %lld steps in %.1f s (%.0f samples/s)\n", cfg.get_string("name").c_str(),
                static_cast<long long>(s.steps), s.train_seconds, s.samples_per_s);
    std::printf("  train loss %.4f nats\n", s.final_train_loss);
    if (std::isfinite(s.test_nll))
        std::printf("  test NLL   %.4f nats (%.4f bits/dim)\n", s.test_nll, s.test_bpd);
    else if (exp.data.test.size() == 0)
        std::printf("  test NLL   n/a (the test split is empty)\n");
    else
        std::printf("  test NLL   not finite (the model gives some test data no density; see metrics.jsonl)\n");
    std::printf("  run directory: %s (report.html)\n", run_dir.c_str());
    return kOk;
}

// A run directory, or a checkpoint inside one (RUN_DIR/checkpoints/x.safetensors).
std::pair<std::string, std::string> run_and_checkpoint(const std::string& target) {
    fs::path p(target);
    if (fs::is_regular_file(p)) return {p.parent_path().parent_path().string(), p.string()};
    if (!fs::is_directory(p)) throw IoError(target + ": no such run directory or checkpoint");
    auto cks = run_checkpoints(target);
    if (cks.empty()) throw IoError(target + ": no checkpoints in this run directory (" + target + "/checkpoints)");
    return {target, cks.front()};
}

Experiment load_trained(const Args& a, Registry& reg, const std::string& target, Params& cfg) {
    auto [run_dir, ckpt] = run_and_checkpoint(target);
    cfg = load_run_config(run_dir, a.sets);
    const auto dirs = run_search_dirs(a, run_dir);
    load_plugins(reg, experiment_plugins(cfg), dirs);
    load_plugins(reg, a.plugins, dirs);
    Experiment exp = build_experiment(cfg, reg);
    load_weights(exp, ckpt, true);
    if (!a.quiet) std::fprintf(stderr, "flowlab: loaded %s\n", ckpt.c_str());
    return exp;
}

int cmd_eval(const Args& a, Registry& reg) {
    if (a.positional.size() != 1) throw UsageError("eval takes one RUN_DIR or CHECKPOINT");
    Params cfg;
    Experiment exp = load_trained(a, reg, a.positional[0], cfg);
    Params ev = cfg.get_object("eval");
    EvalResult r = evaluate(exp, a.split, ev.get_int("batch_size"), static_cast<int>(ev.get_int("importance_samples")));
    if (r.n == 0) throw ConfigError("split '" + a.split + "' of this dataset is empty");
    // The line stays valid JSON whatever the weights give: a non-finite figure is null, and
    // the exit code says the evaluation failed.
    auto number = [](double v) {
        char buf[64];
        if (!std::isfinite(v)) return std::string("null");
        std::snprintf(buf, sizeof buf, "%.6f", v);
        return std::string(buf);
    };
    std::printf("{\"split\": \"%s\", \"n\": %lld, \"nll\": %s, \"bits_per_dim\": %s}\n", a.split.c_str(),
                static_cast<long long>(r.n), number(r.nll).c_str(), number(r.bpd).c_str());
    if (!std::isfinite(r.nll))
        throw NumericError(a.positional[0] + ": the " + a.split + " NLL is not finite (" + number(r.nll) +
                           "): the checkpoint's weights are not finite, or the model gives some data no density");
    return kOk;
}

// -n comes from the command line: a count no memory holds is a clear error, not a crash.
ConfigError too_many_samples(std::int64_t n, std::int64_t d, const std::string& why) {
    return ConfigError("-n " + std::to_string(n) + ": too many samples for memory: " + std::to_string(n) + " samples of " +
                       std::to_string(d) + " values " + why);
}

std::string gigabytes(double bytes) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.1f GB", bytes / 1e9);
    return buf;
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
            Tensor x = exp.flow->sample(m, probe_rng, temperature);
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
        throw too_many_samples(n, d, "need about " + gigabytes(need) + ", " + gigabytes(avail) +
                                         " is available; draw at most about " + std::to_string(fit) +
                                         " per call (with a different --seed for each)");
    }
}

int cmd_sample(const Args& a, Registry& reg) {
    if (a.positional.size() != 1) throw UsageError("sample takes one RUN_DIR or CHECKPOINT");
    Params cfg;
    Experiment exp = load_trained(a, reg, a.positional[0], cfg);
    {
        const auto threads = cfg.get_object("train").get_int("threads");
        if (threads > 0) set_num_threads(static_cast<int>(threads));
    }
    Rng rng(a.seed, 0);
    const Shape& ev = exp.data.event_shape;
    std::string out = a.out;
    if (out.empty()) out = ev.size() == 3 ? "samples.png" : "samples.csv";
    auto ends = [&](const char* ext) { return out.size() >= std::strlen(ext) && out.rfind(ext) == out.size() - std::strlen(ext); };
    const bool png = ends(".png"), csv = ends(".csv");
    if (!png && !csv && !ends(".npy")) throw UsageError("--out " + out + ": use .png (images), .csv or .npy");
    if (png && ev.size() != 3) throw UsageError("--out " + out + ": PNG needs image data ([C, H, W]), this model's is " + shape_str(ev));
    // Besides the samples, the PNG path holds f32 and double copies and the pixels; CSV its text (about
    // 15 characters a value, with the string's growth and final copy).
    check_sample_memory(exp, a.n, a.temperature, png ? 13.0 : csv ? 48.0 : 0.0);
    try {
        if (png) {
            write_image_samples(exp, out, a.n, a.temperature, rng);
        } else {
            Tensor xs = exp.flow->sample(a.n, rng, a.temperature);
            if (csv)
                write_text(out, tensor_csv(xs.reshape({xs.size(0), -1})));
            else
                write_npy(out, xs);
        }
    } catch (const std::bad_alloc&) {  // the estimate fell short
        throw too_many_samples(a.n, numel(ev), "ran out of memory; draw fewer per call");
    }
    std::printf("%s: %lld samples at temperature %g\n", out.c_str(), static_cast<long long>(a.n), a.temperature);
    if (a.time) {
        // The draw above was the warm-up (primitive cache, allocations); now `repeats` timed
        // batches of n, as the training benchmark does with its windows.
        std::vector<double> rates;
        for (long r = 0; r < a.repeats; ++r) {
            auto t0 = std::chrono::steady_clock::now();
            Tensor xs = exp.flow->sample(a.n, rng, a.temperature);
            double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            rates.push_back(static_cast<double>(a.n) / dt);
        }
        std::vector<double> sorted = rates;
        std::sort(sorted.begin(), sorted.end());
        std::printf("{\"sampling\": \"%s\", \"threads\": %d, \"batch\": %ld, \"repeats\": %ld, \"samples_per_s\": %.3f, \"runs\": [",
                    a.positional[0].c_str(), num_threads(), a.n, a.repeats, sorted[sorted.size() / 2]);
        for (std::size_t i = 0; i < rates.size(); ++i) std::printf("%s%.3f", i ? ", " : "", rates[i]);
        std::printf("]}\n");
    }
    return kOk;
}

int cmd_schema(const Args& a, Registry& reg) {
    load_all_plugins(reg, a);
    std::printf("%s\n", experiment_json_schema(reg).c_str());
    return kOk;
}

int cmd_report(const Args& a, Registry&) {
    if (a.positional.size() != 1) throw UsageError("report takes one RUN_DIR");
    std::printf("%s\n", write_report(a.positional[0]).c_str());
    return kOk;
}

int cmd_bench(const Args& a, Registry& reg) {
    if (a.positional.size() != 1) throw UsageError("bench takes one CONFIG");
    Params cfg = load_experiment(a.positional[0], a.sets);
    load_plugins(reg, experiment_plugins(cfg), search_dirs(a));
    load_plugins(reg, a.plugins, search_dirs(a));
    Experiment exp = build_experiment(cfg, reg);
    const long total = a.warmup + a.timed * a.repeats;
    std::vector<std::chrono::steady_clock::time_point> marks;
    TrainOptions opt;
    opt.quiet = true;
    opt.final_eval = false;
    opt.steps_override = total;
    opt.on_step = [&](std::int64_t done) {
        if (done >= a.warmup && (done - a.warmup) % a.timed == 0) marks.push_back(std::chrono::steady_clock::now());
    };
    if (a.warmup == 0) marks.push_back(std::chrono::steady_clock::now());
    train(exp, opt);
    const double batch = static_cast<double>(cfg.get_object("train").get_int("batch_size"));
    std::vector<double> rates;
    for (std::size_t i = 1; i < marks.size(); ++i)
        rates.push_back(static_cast<double>(a.timed) * batch /
                        std::chrono::duration<double>(marks[i] - marks[i - 1]).count());
    std::vector<double> sorted = rates;
    std::sort(sorted.begin(), sorted.end());
    double median = sorted.empty() ? 0.0 : sorted[sorted.size() / 2];
    std::printf("{\"system\": \"flowlab\", \"config\": \"%s\", \"threads\": %d, \"batch\": %.0f, \"warmup\": %ld, "
                "\"timed\": %ld, \"repeats\": %ld, \"samples_per_s\": %.1f, \"step_ms\": %.3f, \"windows\": [",
                a.positional[0].c_str(), num_threads(), batch, a.warmup, a.timed, a.repeats, median,
                median > 0 ? 1e3 * batch / median : 0.0);
    for (std::size_t i = 0; i < rates.size(); ++i) std::printf("%s%.1f", i ? ", " : "", rates[i]);
    std::printf("]}\n");
    return kOk;
}

}  // namespace

int main(int argc, char** argv) {
    Args args;
    try {
        args = parse_args(argc, argv);
        Registry reg;
        if (args.command == "run") return cmd_run(args, reg);
        if (args.command == "validate") return cmd_validate(args, reg);
        if (args.command == "list") return cmd_list(args, reg);
        if (args.command == "bench") return cmd_bench(args, reg);
        if (args.command == "eval") return cmd_eval(args, reg);
        if (args.command == "sample") return cmd_sample(args, reg);
        if (args.command == "schema") return cmd_schema(args, reg);
        if (args.command == "report") return cmd_report(args, reg);
        if (args.command == "check-plugin") return run_check_plugin(args.positional, search_dirs(args));
        if (args.command == "plugin-info") return run_plugin_info(args.positional, search_dirs(args));
        if (args.command == "version" || args.command == "--version") {
            std::printf("flowlab %s\n", FLOWLAB_VERSION_STRING);
            return kOk;
        }
        if (args.command == "-h" || args.command == "--help" || args.command == "help") throw UsageError("");
        throw UsageError("unknown command '" + args.command + "'");
    } catch (const UsageError& e) {
        if (e.what()[0]) std::fprintf(stderr, "flowlab: %s\n\n", e.what());
        std::fputs(kUsageText, e.what()[0] ? stderr : stdout);
        return e.what()[0] ? kUsage : kOk;
    } catch (const ConfigError& e) {
        std::fprintf(stderr, "flowlab: config error: %s\n", e.what());
        return kConfig;
    } catch (const PluginError& e) {
        std::fprintf(stderr, "flowlab: plugin error: %s\n", e.what());
        return kPlugin;
    } catch (const IoError& e) {
        std::fprintf(stderr, "flowlab: i/o error: %s\n", e.what());
        return kIo;
    } catch (const NumericError& e) {
        std::fprintf(stderr, "flowlab: numeric error: %s\n", e.what());
        return kNumeric;
    } catch (const ShapeError& e) {
        std::fprintf(stderr, "flowlab: shape error: %s\n", e.what());
        return kShape;
    } catch (const fs::filesystem_error& e) {
        std::fprintf(stderr, "flowlab: i/o error: %s\n", e.what());
        return kIo;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "flowlab: internal error: %s\n", e.what());
        return kInternal;
    }
}
