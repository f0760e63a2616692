// The flowlab command line, run as a user runs it: a child process, its exit code and output.
#include <catch2/catch.hpp>

#include "cli_support.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace flowlab::test;

namespace {





// A number that follows `key` in a small JSON file ("key": number).
double json_number(const std::string& text, const std::string& key) {
    auto pos = text.find("\"" + key + "\"");
    REQUIRE(pos != std::string::npos);
    pos = text.find(':', pos);
    return std::stod(text.substr(pos + 1));
}

}  // namespace

// The golden cases of tests/golden: NAME.json is a config for `flowlab validate`, NAME.args the
// arguments of any other command (@SOURCE@, @FIXTURES@, @EXAMPLES@ and @TMP@ stand for the
// source tree, the fixture plugins, the example plugins and a scratch directory). NAME.expected
// holds the exit code, then lines that the output must contain.
TEST_CASE("every golden case exits with its code and prints the lines it pins", "[cli]") {
    const fs::path dir = fs::path(FLOWLAB_SOURCE_DIR) / "tests" / "golden";
    const fs::path tmp = fresh_temp_dir("golden");
    auto substitute = [&](std::string args) {
        const std::pair<const char*, std::string> vars[] = {{"@SOURCE@", FLOWLAB_SOURCE_DIR},
                                                            {"@FIXTURES@", FLOWLAB_TEST_FIXTURE_DIR},
                                                            {"@EXAMPLES@", FLOWLAB_TEST_EXAMPLE_DIR},
                                                            {"@TMP@", tmp.string()}};
        for (const auto& [name, value] : vars)
            for (auto pos = args.find(name); pos != std::string::npos; pos = args.find(name, pos + value.size()))
                args.replace(pos, std::strlen(name), value);
        while (!args.empty() && (args.back() == '\n' || args.back() == ' ')) args.pop_back();
        return args;
    };
    int checked = 0;
    for (const auto& entry : fs::directory_iterator(dir)) {
        const std::string ext = entry.path().extension().string();
        if (ext != ".json" && ext != ".args") continue;
        fs::path expected_path = entry.path();
        expected_path.replace_extension(".expected");
        REQUIRE(fs::exists(expected_path));
        std::istringstream expected(read_text(expected_path));
        std::string line;
        std::getline(expected, line);
        const int want_code = std::stoi(line);
        const std::string args = ext == ".json" ? "validate " + entry.path().string() : substitute(read_text(entry.path()));
        // Catch runs the test once per section: each case's command runs in its own pass only.
        DYNAMIC_SECTION(entry.path().filename().string()) {
            CliResult r = run_cli(args);
            INFO("flowlab " << args << "\noutput: " << r.out);
            CHECK(r.code == want_code);
            while (std::getline(expected, line))
                if (!line.empty()) CHECK(r.out.find(line) != std::string::npos);
            // One clear line, not a crash trace.
            CHECK(r.out.find("internal error") == std::string::npos);
        }
        ++checked;
    }
    CHECK(checked >= 14);
    fs::remove_all(tmp);
}

TEST_CASE("a missing config file is an i/o error naming the path", "[cli]") {
    CliResult r = run_cli("validate /nonexistent/dir/exp.json");
    CHECK(r.code == 5);
    CHECK(r.out.find("/nonexistent/dir/exp.json") != std::string::npos);
}

TEST_CASE("an unknown command or option prints the usage and exits with 2", "[cli]") {
    CHECK(run_cli("frobnicate").code == 2);
    CliResult r = run_cli("run --bogus x.json");
    CHECK(r.code == 2);
    CHECK(r.out.find("usage: flowlab") != std::string::npos);
}

TEST_CASE("flowlab list shows the standard plugin's types with parameters and origin", "[cli]") {
    CliResult r = run_cli("list");
    INFO(r.out);
    REQUIRE(r.code == 0);
    for (const char* name : {"affine_coupling", "additive_coupling", "reverse", "random_permutation",
                             "standard_normal", "adam", "sgd", "identity", "moons", "checkerboard", "mlp"})
        CHECK(r.out.find(name) != std::string::npos);
    CHECK(r.out.find("libflowlab_standard.so") != std::string::npos);
    CHECK(r.out.find("scale_clamp") != std::string::npos);
    CliResult only = run_cli("list optimizer");
    CHECK(only.out.find("adam") != std::string::npos);
    CHECK(only.out.find("affine_coupling") == std::string::npos);
}

TEST_CASE("flowlab list op shows the ops of network graphs, and the schema describes their nodes", "[cli][graph]") {
    CliResult r = run_cli("list op");
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("op types:") != std::string::npos);
    for (const char* name : {"linear", "relu", "add", "concat", "slice", "gate", "layer_norm", "conv2d"})
        CHECK(r.out.find(std::string("\n  ") + name + " ") != std::string::npos);
    CHECK(r.out.find("integer or \"auto\"") != std::string::npos);
    CHECK(r.out.find("affine_coupling") == std::string::npos);
    CliResult schema = run_cli("schema");
    REQUIRE(schema.code == 0);
    CHECK(schema.out.find("\"op\": {") != std::string::npos);
    CHECK(schema.out.find("\"const\": \"layer_norm\"") != std::string::npos);
    CHECK(schema.out.find("\"$ref\": \"#/$defs/op\"") != std::string::npos);
}

TEST_CASE("the W1 config with graph conditioners validates with mlp's parameter count", "[cli][graph]") {
    CliResult r = run_cli("validate " + std::string(FLOWLAB_SOURCE_DIR) + "/apps/bench/w1_graph.json");
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("total parameters: 136208") != std::string::npos);
}

TEST_CASE("validate --emit-graph prints a config that validates to the same model", "[cli][graph]") {
    const fs::path dir = fresh_temp_dir("emit");
    CliResult r = run_cli("validate " + std::string(FLOWLAB_SOURCE_DIR) + "/configs/quickstart.json --emit-graph");
    REQUIRE(r.code == 0);
    CHECK(r.out.rfind("{", 0) == 0);  // only the JSON on stdout
    CHECK(r.out.find("\"graph\"") != std::string::npos);
    CHECK(r.out.find("\"layers\"") == std::string::npos);
    std::ofstream(dir / "g.json") << r.out;
    CliResult back = run_cli("validate " + (dir / "g.json").string());
    INFO(back.out + back.err);
    REQUIRE(back.code == 0);
    CHECK(back.out.find("total parameters: 136208") != std::string::npos);
    CHECK(back.out.find("layers.7") != std::string::npos);
    // The emitted form emits itself.
    CHECK(run_cli("validate " + (dir / "g.json").string() + " --emit-graph").out == r.out);
    fs::remove_all(dir);
}

TEST_CASE("flowlab validate prints every layer with shapes and the total parameter count", "[cli]") {
    CliResult r = run_cli("validate " + std::string(FLOWLAB_SOURCE_DIR) + "/configs/quickstart.json");
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("/model/layers/0/layers/1") != std::string::npos);
    // W1 has 8 couplings of 1->128->128->2: 8 * (256 + 16512 + 258) = 136,208 parameters.
    CHECK(r.out.find("total parameters: 136208") != std::string::npos);
}

TEST_CASE("a short run writes the run directory with config, metrics, samples and summary", "[cli]") {
    fs::path out = fresh_temp_dir("short");
    CliResult r = run_cli("run " + std::string(FLOWLAB_SOURCE_DIR) + "/configs/quickstart.json --quiet --set train.steps=40 "
                           "--set train.eval_every=20 --set train.log_every=10 --output " + out.string());
    INFO(r.out);
    REQUIRE(r.code == 0);
    for (const char* f : {"config.json", "metrics.jsonl", "summary.json", "samples.csv"}) CHECK(fs::exists(out / f));
    std::string cfg = read_text(out / "config.json");
    CHECK(cfg.find("\"steps\": 40") != std::string::npos);  // the override is recorded
    CHECK(cfg.find("libflowlab_standard.so") != std::string::npos);
    std::string metrics = read_text(out / "metrics.jsonl");
    CHECK(std::count(metrics.begin(), metrics.end(), '\n') >= 6);
    double nll = json_number(read_text(out / "summary.json"), "test_nll");
    CHECK(std::isfinite(nll));
    CHECK(nll < 2.5);  // an untrained flow on moons sits near 2.8 nats
    fs::remove_all(out);
}

TEST_CASE("the quickstart trains RealNVP on moons to a test NLL at or below 0.37 nats", "[cli][slow]") {
    fs::path out = fresh_temp_dir("quickstart");
    CliResult r = run_cli("run " + std::string(FLOWLAB_SOURCE_DIR) + "/configs/quickstart.json --quiet --output " +
                           out.string());
    INFO(r.out);
    REQUIRE(r.code == 0);
    std::string summary = read_text(out / "summary.json");
    double nll = json_number(summary, "test_nll");
    INFO("test NLL " << nll);
    CHECK(nll <= 0.37);
    CHECK(nll > 0.25);  // below the generator's optimum (about 0.29) would mean a broken metric
    CHECK(json_number(summary, "steps") == 3000);
    fs::remove_all(out);
}

TEST_CASE("sample with a count no memory can hold is a config error with the size it needs, not a crash", "[cli]") {
    fs::path run = fresh_temp_dir("sample_n");
    REQUIRE(run_cli("run " + std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json --quiet " +
                        "--set train.steps=5 --set train.threads=1 --output " + run.string())
                .code == 0);
    // INT64_MAX samples of 2 values overflow 64 bits (crashed); 10^12 samples (a count past any
    // machine's memory; 10^9 already is on most) died with an allocation failure.
    for (const char* n : {"9223372036854775807", "1000000000000"}) {
        CliResult r = run_cli("sample " + run.string() + " --quiet -n " + n + " --out " + (run / "s.csv").string());
        INFO(r.out);
        CHECK(r.code == 3);
        CHECK(r.out.find(std::string("flowlab: config error: -n ") + n + ": too many samples for memory: " + n +
                         " samples of 2 values") != std::string::npos);
        CHECK_FALSE(fs::exists(run / "s.csv"));
    }
    CHECK(run_cli("sample " + run.string() + " --quiet -n 1000000000000 --out " + (run / "s.csv").string())
              .out.find("is available; draw at most about") != std::string::npos);
    // A count that fits is drawn (past the size of the memory probes).
    CliResult ok = run_cli("sample " + run.string() + " --quiet -n 300 --out " + (run / "s.csv").string());
    INFO(ok.out);
    CHECK(ok.code == 0);
    const std::string csv = read_text(run / "s.csv");
    CHECK(std::count(csv.begin(), csv.end(), '\n') == 300);
    fs::remove_all(run);
}

TEST_CASE("a corrupt data file is an i/o error (exit 5) naming the file and the fault", "[cli]") {
    fs::path dir = fresh_temp_dir("bad_data");
    const fs::path npy = dir / "points.npy", config = dir / "exp.json";
    {
        std::string header = "{'descr': '<c16', 'fortran_order': False, 'shape': (4, 2), }";
        while ((10 + header.size() + 1) % 64 != 0) header += ' ';
        header += '\n';
        std::ofstream out(npy, std::ios::binary);
        out.write("\x93NUMPY\x01\x00", 8);
        out.put(static_cast<char>(header.size()));
        out.put(0);
        out << header << std::string(128, '\0');
    }
    {
        std::ofstream out(config);
        out << R"({"flowlab": 1, "name": "bad-data", "plugins": ["standard", "density"],
                   "data": {"type": "npy", "path": ")" << npy.string() << R"("},
                   "model": {"layers": [{"type": "affine_coupling", "mask": "alternate", "parity": 0,
                                         "conditioner": {"type": "mlp", "hidden": [8]}}]}})";
    }
    CliResult r = run_cli("validate " + config.string());
    INFO(r.out);
    CHECK(r.code == 5);
    CHECK(r.out.find("flowlab: i/o error: " + npy.string() + ": header: unknown dtype '<c16'; supported: <f4") !=
          std::string::npos);
    // A directory where the data file should be.
    fs::remove(npy);
    fs::create_directories(npy);
    r = run_cli("validate " + config.string());
    CHECK(r.code == 5);
    CHECK(r.out.find(npy.string() + ": is a directory") != std::string::npos);
    fs::remove_all(dir);
}

TEST_CASE("a run stopped by the layer checks keeps its checkpoints: eval loads them, a resume stops again", "[cli]") {
    const fs::path run = fresh_temp_dir("broken_layer");
    const std::string config = std::string(FLOWLAB_SOURCE_DIR) + "/plugins/examples/broken_logdet/config.json";
    const std::string plugins = std::string(" --plugin-dir ") + FLOWLAB_TEST_EXAMPLE_DIR;
    CliResult r = run_cli("run " + config + plugins + " --quiet --output " + run.string() +
                          " --set train.steps=400 --set train.eval_every=200 --set train.checkpoint_every=100");
    INFO(r.out);
    CHECK(r.code == 8);
    CHECK(contains(r.out, "fails the layer check at step 200 (an evaluation)"));
    CHECK(contains(r.out, "its checkpoints are kept (the newest: " + (run / "checkpoints").string()));
    CHECK_FALSE(fs::exists(run / "summary.json"));
    // The checkpoints written before the failure are whole: eval reads the newest.
    CliResult ev = run_cli("eval " + run.string() + " --quiet");
    INFO(ev.out);
    CHECK(ev.code == 0);
    CHECK(contains(ev.out, "\"nll\""));
    // A resume checks before its first step, on the restored (moved) parameters.
    CliResult resumed = run_cli("run --resume " + run.string() + plugins + " --quiet");
    INFO(resumed.out);
    CHECK(resumed.code == 8);
    CHECK(contains(resumed.out, "fails the layer check at step 100 (before the first step)"));
    fs::remove_all(run);
}

TEST_CASE("sample --out FILE.png on vector data is one line with the data's shape, not the usage", "[cli]") {
    const fs::path run = fresh_temp_dir("sample_png");
    REQUIRE(run_cli("run " + std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json --quiet " +
                    "--set train.steps=5 --set train.threads=1 --output " + run.string())
                .code == 0);
    CliResult r = run_cli("sample " + run.string() + " --quiet --out " + (run / "x.png").string());
    INFO(r.out);
    CHECK(r.code == 3);
    CHECK(contains(r.out, "x.png: a PNG grid needs image data [C, H, W], this model's data are [2]; write "));
    CHECK(contains(r.out, "x.csv or .npy instead"));
    CHECK_FALSE(contains(r.out, "usage:"));
    fs::remove_all(run);
}

TEST_CASE("flowlab list writes ranges as the values are written, with no open end shown as inf", "[cli]") {
    CliResult r = run_cli("list");
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK_FALSE(contains(r.out, "inf]"));
    CHECK_FALSE(contains(r.out, ".000000"));
    CHECK(contains(r.out, "default 8 in [1, 30] - bits per value"));
    CHECK(contains(r.out, "default 10000 >= 1 - training points"));
}

namespace {
// The numbers of the array that follows `key` in a JSON line ("key": [1, 2.5, ...]).
std::vector<double> json_numbers(const std::string& text, const std::string& key) {
    auto pos = text.find("\"" + key + "\": [");
    REQUIRE(pos != std::string::npos);
    pos = text.find('[', pos) + 1;
    const auto end = text.find(']', pos);
    REQUIRE(end != std::string::npos);
    std::vector<double> values;
    std::stringstream items(text.substr(pos, end - pos));
    for (std::string item; std::getline(items, item, ',');) values.push_back(std::stod(item));
    return values;
}
}  // namespace

TEST_CASE("bench prints one JSON line: a rate per window and the cores' round trip at each window's edge",
          "[cli]") {
    const std::string bench = "bench " + std::string(FLOWLAB_SOURCE_DIR) +
                              "/tests/configs/tiny_moons.json --quiet --warmup 2 --timed 3 --repeats 3";
    CliResult r = run_cli(bench, true);
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
    const std::vector<double> windows = json_numbers(r.out, "windows");
    REQUIRE(windows.size() == 3);
    std::vector<double> sorted = windows;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted[0] > 0.0);
    CHECK(json_number(r.out, "samples_per_s") == Approx(sorted[1]).epsilon(1e-3));  // the median window
    // One round trip before, between and after the windows: on two CPUs, a cache line's trip
    // takes tens to hundreds of nanoseconds (more while another process shares the CPUs).
    const std::vector<double> trips = json_numbers(r.out, "core_round_trip_ns");
    REQUIRE(trips.size() == 4);
    cpu_set_t mine;
    CPU_ZERO(&mine);
    REQUIRE(sched_getaffinity(0, sizeof mine, &mine) == 0);
    if (CPU_COUNT(&mine) >= 2) {
        for (double t : trips) {
            CHECK(t > 1.0);
            CHECK(t < 1e9);
        }
        // Allowed a single CPU (the child inherits this thread's), there is no second core to
        // measure against: 0, and no hang.
        cpu_set_t one;
        CPU_ZERO(&one);
        for (int c = 0; c < CPU_SETSIZE; ++c)
            if (CPU_ISSET(c, &mine)) {
                CPU_SET(c, &one);
                break;
            }
        REQUIRE(sched_setaffinity(0, sizeof one, &one) == 0);
        CliResult pinned = run_cli(bench, true);
        sched_setaffinity(0, sizeof mine, &mine);
        INFO(pinned.out << pinned.err);
        REQUIRE(pinned.code == 0);
        const std::vector<double> none = json_numbers(pinned.out, "core_round_trip_ns");
        CHECK(none.size() == 4);
        for (double t : none) CHECK(t == 0.0);
    }
    // With replicas too: the others wait for this one at the gradients' sum while it probes.
    CliResult rep = run_cli(bench + " --set train.replicas=2 --set train.threads=2", true);
    INFO(rep.err);
    REQUIRE(rep.code == 0);
    const std::vector<double> rep_trips = json_numbers(rep.out, "core_round_trip_ns");
    CHECK(rep_trips.size() == 4);
    if (CPU_COUNT(&mine) >= 2)
        for (double t : rep_trips) CHECK(t > 1.0);
}
