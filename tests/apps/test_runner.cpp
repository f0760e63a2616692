// The experiment runner's promises: exact resume (metrics included), crash-safe checkpoints,
// fallback past corrupt or invalid ones, skipped non-finite steps, the divergence exit code,
// and what a run directory holds.
#include <catch2/catch.hpp>

#include "cli_support.hpp"

#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <vector>
#include <fcntl.h>
#include <unistd.h>

#include "flowlab/checkpoint.hpp"
#include "flowlab/experiment.hpp"
#include "flowlab/run_dir.hpp"

using namespace flowlab;
namespace fs = std::filesystem;

using namespace flowlab::test;

namespace {

const std::string kTiny = std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json";



fs::path fresh_dir(const std::string& name) {
    fs::path d = fs::temp_directory_path() / ("flowlab-runner-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(d);
    return d;
}

std::string latest_checkpoint(const fs::path& run) {
    auto all = run_checkpoints(run.string());
    REQUIRE(!all.empty());
    return all.front();
}

// A run of the tiny experiment into a fresh directory, with the nan_injector fixture plugin loaded
// and a checkpoint after every step.
struct NanRun {
    fs::path dir;
    CliResult result;
};

// The run's model is a nan_injector that poisons the gradient on steps [from, until), followed by
// `couplings` affine couplings of alternating parity; `options` come last.
NanRun run_with_nan_injector(const std::string& name, int from, int until, int couplings, const std::string& options) {
    const fs::path dir = fresh_dir(name);
    const std::string plugin = std::string(FLOWLAB_TEST_FIXTURE_DIR) + "/nan_injector.so";
    std::string layers = "{\"type\":\"nan_injector\",\"from\":" + std::to_string(from) +
                         ",\"until\":" + std::to_string(until) + "}";
    for (int i = 0; i < couplings; ++i)
        layers += ",{\"type\":\"affine_coupling\",\"mask\":\"alternate\",\"parity\":" + std::to_string(i % 2) + "}";
    return {dir, run_cli("run " + kTiny + " --quiet --plugin " + plugin + " --set 'model.layers=[" + layers +
                         "]' --set train.checkpoint_every=1 --output " + dir.string() + options)};
}

// Starts `flowlab ARGS...` in a child process whose output goes to /dev/null; returns its pid.
pid_t spawn_flowlab(const std::vector<std::string>& args) {
    // argv is built before the fork: the child only redirects and execs.
    std::vector<char*> argv{const_cast<char*>(FLOWLAB_BINARY)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int devnull = ::open("/dev/null", O_WRONLY);
        ::dup2(devnull, 1);
        ::dup2(devnull, 2);
        ::execv(FLOWLAB_BINARY, argv.data());
        ::_exit(127);
    }
    return pid;
}

// Sends `sig` to the child `pid` and reaps it; returns its wait status.
int signal_and_reap(pid_t pid, int sig) {
    ::kill(pid, sig);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return status;
}

// Every tensor whose name starts with one of the prefixes, equal to the bit.
void require_same_tensors(const Checkpoint& a, const Checkpoint& b, std::vector<std::string> prefixes) {
    int compared = 0;
    for (const auto& t : a.tensors) {
        bool want = false;
        for (const auto& p : prefixes) want = want || t.name.rfind(p, 0) == 0;
        if (!want) continue;
        const Tensor* u = b.find(t.name);
        INFO(t.name);
        REQUIRE(u);
        REQUIRE(u->nbytes() == t.tensor.nbytes());
        CHECK(std::memcmp(u->raw(), t.tensor.raw(), u->nbytes()) == 0);
        ++compared;
    }
    CHECK(compared > 0);
}

// The newest checkpoint of `run` is at the last step, 46, with bitwise the parameters and
// optimizer state of `want` (a straight run's).
void require_ends_as(const Checkpoint& want, const fs::path& run) {
    Checkpoint got = read_checkpoint(latest_checkpoint(run));
    CHECK(got.metadata.at("step") == "46");
    require_same_tensors(want, got, {"param/", "optim/"});
}

}  // namespace

TEST_CASE("N steps, resume, N steps give bitwise the parameters of 2N steps straight", "[runner]") {
    fs::path straight = fresh_dir("straight"), split = fresh_dir("split");
    // 23 is mid-epoch (31 batches of 64 per epoch of 2000) and not a checkpoint step.
    REQUIRE(run_cli("run " + kTiny + " --quiet --set train.steps=46 --set train.threads=1 --output " + straight.string()).code == 0);
    CliResult first = run_cli("run " + kTiny + " --quiet --set train.steps=46 --set train.threads=1 --stop-after 23 --output " +
                      split.string());
    REQUIRE(first.code == 0);
    CHECK(read_checkpoint(latest_checkpoint(split)).metadata.at("step") == "23");
    CliResult second = run_cli("run --resume " + split.string() + " --quiet");
    INFO(second.out);
    REQUIRE(second.code == 0);
    Checkpoint a = read_checkpoint(latest_checkpoint(straight));
    CHECK(a.metadata.at("step") == "46");
    require_ends_as(a, split);
    // The summary's time covers the steps from start_step: all of the straight run, half of the split one.
    const auto summary = [](const fs::path& run) {
        std::ifstream f(run / "summary.json");
        return std::string(std::istreambuf_iterator<char>(f), {});
    };
    CHECK(summary(straight).find("\"start_step\": 0,") != std::string::npos);
    CHECK(summary(split).find("\"start_step\": 23,") != std::string::npos);
    // ... and the checkpoints carry the time of the steps before, so the total spans both calls.
    const auto seconds = [&](const fs::path& run, const std::string& key) {
        const std::string s = summary(run);
        const std::size_t at = s.find("\"" + key + "\": ");
        REQUIRE(at != std::string::npos);
        return std::stod(s.substr(at + key.size() + 4));
    };
    CHECK(seconds(straight, "total_train_seconds") == seconds(straight, "train_seconds"));
    CHECK(seconds(split, "total_train_seconds") > seconds(split, "train_seconds"));
    CHECK(std::stod(read_checkpoint(latest_checkpoint(split)).metadata.at("train_seconds")) ==
          seconds(split, "total_train_seconds"));
    fs::remove_all(straight);
    fs::remove_all(split);
}

TEST_CASE("train.replicas trains the one-process model on threads, resumes exactly, writes one run directory",
          "[runner]") {
    const fs::path one = fresh_dir("rep-one"), straight = fresh_dir("rep-straight"), split = fresh_dir("rep-split");
    const std::string common = " --quiet --set train.steps=46 --set eval.samples=64 ";
    REQUIRE(run_cli("run " + kTiny + common + "--set train.threads=1 --output " + one.string()).code == 0);
    const CliResult r = run_cli("run " + kTiny + common + "--set train.replicas=2 --output " + straight.string());
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(fs::exists(straight / "summary.json"));
    CHECK(fs::exists(straight / "samples.csv"));
    CHECK(read_text(straight / "config.json").find("\"replicas\": 2") != std::string::npos);
    // The same model as one process, up to the order of the gradient sums.
    const Checkpoint a = read_checkpoint(latest_checkpoint(one)), b = read_checkpoint(latest_checkpoint(straight));
    double d2 = 0.0, n2 = 0.0;
    for (const auto& t : a.tensors) {
        if (t.name.rfind("param/", 0) != 0) continue;
        const Tensor* u = b.find(t.name);
        REQUIRE(u);
        const std::vector<double> x = t.tensor.to_vector(), y = u->to_vector();
        REQUIRE(x.size() == y.size());
        for (std::size_t k = 0; k < x.size(); ++k) d2 += (x[k] - y[k]) * (x[k] - y[k]), n2 += x[k] * x[k];
    }
    INFO("relative L2 difference to one process: " << std::sqrt(d2 / n2));
    CHECK(n2 > 0.0);
    CHECK(std::sqrt(d2 / n2) < 1e-5);
    // Stopped half-way and resumed: bitwise the straight replicated run.
    REQUIRE(run_cli("run " + kTiny + common + "--set train.replicas=2 --stop-after 23 --output " + split.string()).code == 0);
    const CliResult resumed = run_cli("run --resume " + split.string() + " --quiet");
    INFO(resumed.out);
    REQUIRE(resumed.code == 0);
    require_ends_as(b, split);
    // More replicas than hardware threads is a config error that names the field.
    const CliResult many = run_cli("run " + kTiny + " --quiet --set train.replicas=4096 --output " + split.string());
    CHECK(many.code != 0);
    CHECK_THAT(many.out, Catch::Contains("/train/replicas") && Catch::Contains("oversubscribe"));
    for (const auto& d : {one, straight, split}) fs::remove_all(d);
}

TEST_CASE("the parameter EMA is the bias-corrected weighted mean of the iterates", "[runner]") {
    fs::path run = fresh_dir("ema");
    const std::string sets = " --quiet --set train.steps=3 --set train.checkpoint_every=1 --set train.threads=1"
                             " --set train.ema_decay=0.5 --output " + run.string();
    // Stop after step 1 and keep that checkpoint aside (a run keeps only its last two).
    REQUIRE(run_cli("run " + kTiny + sets + " --stop-after 1").code == 0);
    Checkpoint c1 = read_checkpoint(latest_checkpoint(run));
    REQUIRE(c1.metadata.at("step") == "1");
    REQUIRE(run_cli("run --resume " + run.string() + " --quiet").code == 0);
    auto all = run_checkpoints(run.string());
    REQUIRE(all.size() >= 2);
    Checkpoint c3 = read_checkpoint(all[0]), c2 = read_checkpoint(all[1]);
    REQUIRE(c3.metadata.at("step") == "3");
    REQUIRE(c2.metadata.at("step") == "2");
    int compared = 0;
    for (const auto& t : c3.tensors) {
        if (t.name.rfind("param/", 0) != 0) continue;
        const std::string ema = "ema/" + t.name.substr(6);
        const Tensor *p1 = c1.find(t.name), *p2 = c2.find(t.name), *e1 = c1.find(ema), *e3 = c3.find(ema);
        INFO(t.name);
        REQUIRE((p1 && p2 && e1 && e3));
        for (std::int64_t i = 0; i < t.tensor.numel(); ++i) {
            // After one step the average is that step's parameters, not 0.5 of the initial ones.
            CHECK(e1->item(i) == Approx(p1->item(i)).margin(1e-6));
            const double want = (0.25 * p1->item(i) + 0.5 * p2->item(i) + t.tensor.item(i)) / 1.75;
            CHECK(e3->item(i) == Approx(want).margin(1e-5));
        }
        ++compared;
    }
    CHECK(compared > 0);
    fs::remove_all(run);
}

TEST_CASE("SIGKILL at random moments never leaves a run without a loadable checkpoint", "[runner][slow]") {
    fs::path run = fresh_dir("kill");
    std::mt19937 gen(7);
    int trials = 0, resumed = 0;
    for (int t = 0; t < 50; ++t) {
        const std::string out = run.string();
        const pid_t pid = t == 0 || !fs::exists(run / "checkpoints")
                              ? spawn_flowlab({"run", kTiny, "--set", "train.steps=100000", "--set",
                                               "train.checkpoint_every=1", "--set", "train.threads=1", "--output", out,
                                               "--quiet"})
                              : spawn_flowlab({"run", "--resume", out, "--quiet"});
        // Every step writes a checkpoint, so most kills land inside a write.
        std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(150, 600)(gen)));
        signal_and_reap(pid, SIGKILL);
        ++trials;
        if (!fs::exists(run / "checkpoints")) continue;  // killed before the first checkpoint
        // The newest checkpoint (or its fallback) loads, and resuming works.
        auto all = run_checkpoints(run.string());
        REQUIRE(!all.empty());
        bool loaded = false;
        for (const auto& c : all) {
            try {
                read_checkpoint(c);
                loaded = true;
                break;
            } catch (const std::exception&) {
            }
        }
        CHECK(loaded);
        CliResult r = run_cli("run --resume " + run.string() + " --quiet --stop-after 1");
        INFO(r.out);
        CHECK(r.code == 0);
        ++resumed;
    }
    CHECK(trials == 50);
    CHECK(resumed >= 40);
    fs::remove_all(run);
}

TEST_CASE("a non-finite gradient skips the step and leaves parameters and optimizer state untouched", "[runner]") {
    // Layer 0 poisons the gradient on step 3 only; a checkpoint follows every step.
    const auto [run, r] = run_with_nan_injector("nan", 3, 4, 2, " --set train.steps=4 --stop-after 3");
    INFO(r.out);
    REQUIRE(r.code == 0);
    // Steps 2 and 3 are the two generations kept; step 3 was skipped, so they hold the same state.
    fs::path dir = run / "checkpoints";
    Checkpoint c2 = read_checkpoint((dir / "step-000000002.safetensors").string());
    Checkpoint c3 = read_checkpoint((dir / "step-000000003.safetensors").string());
    require_same_tensors(c2, c3, {"param/", "optim/"});
    CHECK(c3.metadata.at("optimizer_steps") == c2.metadata.at("optimizer_steps"));
    std::ifstream m(run / "metrics.jsonl");
    std::stringstream ss;
    ss << m.rdbuf();
    CHECK(ss.str().find("\"skipped\":true") != std::string::npos);
    CHECK(ss.str().find("gradient of") != std::string::npos);  // names the tensor that went non-finite
    fs::remove_all(run);
}

TEST_CASE("K consecutive non-finite steps abort with exit code 6 and keep the last good checkpoint", "[runner]") {
    const auto [run, r] = run_with_nan_injector("diverge", 4, 1000, 1, " --set train.steps=50 --set train.max_bad_steps=5");
    INFO(r.out);
    CHECK(r.code == 6);
    CHECK(r.out.find("5 consecutive non-finite steps") != std::string::npos);
    Checkpoint last = read_checkpoint(latest_checkpoint(run));
    CHECK(last.metadata.at("step") == "3");
    fs::remove_all(run);
}

TEST_CASE("SIGTERM finishes the step, writes a checkpoint and exits with code 10", "[runner]") {
    fs::path run = fresh_dir("term");
    const pid_t pid = spawn_flowlab(
        {"run", kTiny, "--set", "train.steps=1000000", "--set", "train.checkpoint_every=100000", "--output", run.string()});
    // Wait until training is under way (the metrics file appears), then ask it to stop.
    for (int i = 0; i < 200 && !fs::exists(run / "metrics.jsonl"); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const int status = signal_and_reap(pid, SIGTERM);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 10);
    Checkpoint c = read_checkpoint(latest_checkpoint(run));
    CHECK(std::stoll(c.metadata.at("step")) > 0);
    fs::remove_all(run);
}

// A signal handler that interrupted one of oneDNN 2.6's GEMM kernels wrote its frame into the
// heap (stop_signals.hpp): about one stop in five then aborted in free() instead of exiting
// with 10. The signals now never interrupt a computing thread; stop the quickstart (GEMM-bound,
// one thread) at eight different moments of its steps, every stop clean.
TEST_CASE("SIGTERM at any moment of a GEMM-bound step stops cleanly, every time", "[runner][slow]") {
    const std::string quickstart = std::string(FLOWLAB_SOURCE_DIR) + "/configs/quickstart.json";
    for (int i = 0; i < 8; ++i) {
        fs::path run = fresh_dir("term-gemm");
        const pid_t pid = spawn_flowlab({"run", quickstart, "--set", "train.threads=1", "--set", "train.steps=1000000",
                                         "--set", "train.checkpoint_every=100000", "--output", run.string()});
        for (int k = 0; k < 400 && !fs::exists(run / "metrics.jsonl"); ++k)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        std::this_thread::sleep_for(std::chrono::milliseconds(100 + 37 * i));
        const int status = signal_and_reap(pid, SIGTERM);
        INFO("stop " << i << ": wait status " << status);
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 10);
        Checkpoint c = read_checkpoint(latest_checkpoint(run));
        CHECK(std::stoll(c.metadata.at("step")) > 0);
        fs::remove_all(run);
    }
}

TEST_CASE("eval, sample, schema and report work on a finished run", "[runner]") {
    fs::path run = fresh_dir("tools");
    REQUIRE(run_cli("run " + kTiny + " --quiet --output " + run.string()).code == 0);
    for (const char* f : {"report.html", "metrics.csv", "summary.json", "samples.csv", "density.csv"})
        CHECK(fs::exists(run / f));
    CliResult e = run_cli("eval " + run.string() + " --quiet --split test");
    INFO(e.out);
    CHECK(e.code == 0);
    CHECK(e.out.find("\"bits_per_dim\"") != std::string::npos);
    fs::path out = run / "s.npy";
    CliResult s = run_cli("sample " + run.string() + " --quiet -n 10 --temperature 0.5 --out " + out.string());
    CHECK(s.code == 0);
    CHECK(fs::file_size(out) == 128 + 10 * 2 * 4);  // .npy header block + 10 x 2 float32
    CliResult schema = run_cli("schema");
    CHECK(schema.code == 0);
    CHECK(schema.out.find("\"affine_coupling\"") != std::string::npos);
    CHECK(schema.out.find("\"additionalProperties\": false") != std::string::npos);
    std::ifstream h(run / "report.html");
    std::stringstream html;
    html << h.rdbuf();
    CHECK(html.str().find("<svg") != std::string::npos);
    CHECK(html.str().find("polyline") != std::string::npos);
    fs::remove_all(run);
}

TEST_CASE("a conditional 2-D flow finishes its run: samples for test contexts, a density grid, sample", "[runner]") {
    // A graph-form conditional flow: a shared context encoder read by both couplings.
    fs::path run = fresh_dir("conditional");
    const std::string sets =
        " --set 'plugins=[\"standard\", \"density\"]' --set 'data={\"type\": \"labeled_moons\", \"train\": 512, \"test\": 128}'"
        " --set 'model={\"graph\": {\"nodes\": ["
        "{\"name\": \"enc\", \"type\": \"network\", \"input\": \"context\", \"nodes\": "
        "[{\"name\": \"h\", \"type\": \"linear\", \"inputs\": [\"x\"], \"out\": 4}], \"output\": \"h\"},"
        "{\"name\": \"a\", \"type\": \"affine_coupling\", \"input\": \"x\", \"context\": \"enc\"},"
        "{\"name\": \"b\", \"type\": \"affine_coupling\", \"input\": \"a\", \"context\": \"enc\", \"parity\": 1}],"
        " \"outputs\": [\"b\"]}}' --set train.steps=5";
    CliResult r = run_cli("run " + kTiny + " --quiet" + sets + " --output " + run.string());
    INFO(r.out + r.err);
    REQUIRE(r.code == 0);
    for (const char* f : {"samples.csv", "density.csv", "report.html"}) CHECK(fs::exists(run / f));
    CliResult s = run_cli("sample " + run.string() + " --quiet -n 7 --out " + (run / "s.npy").string());
    INFO(s.err);
    CHECK(s.code == 0);
    fs::remove_all(run);
}

namespace {

const std::string kHalf = " --set train.steps=46 --set train.threads=1";

// Runs tiny_moons for 46 steps straight into `dir` (the reference of the tests below).
void straight_run(const fs::path& dir) {
    REQUIRE(run_cli("run " + kTiny + " --quiet" + kHalf + " --output " + dir.string()).code == 0);
}

// Runs 23 of 46 steps into `dir`: checkpoints step 20 (checkpoint_every 5) and step 23.
void half_run(const fs::path& dir) {
    REQUIRE(run_cli("run " + kTiny + " --quiet" + kHalf + " --stop-after 23 --output " + dir.string()).code == 0);
}

fs::path ckpt(const fs::path& run, std::int64_t step) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "step-%09lld.safetensors", static_cast<long long>(step));
    return run / "checkpoints" / buf;
}

std::string file_text(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// Flips one bit in the tensor data of a checkpoint file (the header stays valid).
void flip_data_bit(const fs::path& p) {
    std::string b = file_text(p);
    std::uint64_t hlen = 0;
    for (int i = 0; i < 8; ++i) hlen |= static_cast<std::uint64_t>(static_cast<unsigned char>(b[static_cast<std::size_t>(i)])) << (8 * i);
    REQUIRE(b.size() > 8 + hlen + 100);
    b[8 + hlen + 100] = static_cast<char>(b[8 + hlen + 100] ^ 0x10);
    std::ofstream(p, std::ios::binary | std::ios::trunc) << b;
}

// Every file under `dir` with its bytes and modification time.
std::map<std::string, std::pair<std::string, fs::file_time_type>> snapshot(const fs::path& dir) {
    std::map<std::string, std::pair<std::string, fs::file_time_type>> s;
    for (const auto& e : fs::recursive_directory_iterator(dir))
        if (e.is_regular_file()) s[e.path().string()] = {file_text(e.path()), e.last_write_time()};
    return s;
}

// metrics.jsonl without the timing fields.
std::vector<std::string> metrics_rows(const fs::path& run) {
    std::vector<std::string> rows;
    std::ifstream f(run / "metrics.jsonl");
    for (std::string line; std::getline(f, line);) {
        const std::size_t at = line.find(",\"samples_per_s\":");
        if (at != std::string::npos) line.erase(at, line.find_first_of(",}", at + 1) - at);
        rows.push_back(line);
    }
    return rows;
}


}  // namespace

TEST_CASE("a resume falls back past a checkpoint with invalid metadata and names the file and the field", "[runner]") {
    fs::path ref = fresh_dir("meta-ref");
    straight_run(ref);
    const Checkpoint want = read_checkpoint(latest_checkpoint(ref));
    const std::pair<const char*, const char*> bad[] = {
        {"sampler_pos", "-1000000"}, {"sampler_pos", "-1e11"}, {"step", "abc"},     {"step", "-5"},
        {"step", "1000"},            {"optimizer_steps", "x"}, {"deq_rng_counter", "-1"}, {"best_valid_nll", "nan"},
    };
    for (const auto& [field, value] : bad) {
        fs::path run = fresh_dir("meta");
        half_run(run);
        // Through the writer, so the file is well-formed and only the field is wrong.
        const std::string newest = ckpt(run, 23).string();
        Checkpoint c = read_checkpoint(newest);
        c.metadata[field] = value;
        write_checkpoint(newest, c);
        CliResult r = run_cli("run --resume " + run.string() + " --quiet");
        INFO(field << " = " << value << "\n" << r.out);
        REQUIRE(r.code == 0);
        CHECK(r.out.find("warning: " + newest) != std::string::npos);
        CHECK(r.out.find(std::string("'") + field + "'") != std::string::npos);
        // Step 20 was loaded instead, so the run still ends bitwise where the straight one did.
        require_ends_as(want, run);
        for (const auto& e : fs::directory_iterator(run / "checkpoints"))
            CHECK(e.path().filename().string().find("step--") == std::string::npos);
        fs::remove_all(run);
    }
    // With no usable checkpoint at all the resume is an i/o error naming each file, not a crash.
    fs::path run = fresh_dir("meta-none");
    half_run(run);
    for (std::int64_t s : {20, 23}) {
        Checkpoint c = read_checkpoint(ckpt(run, s).string());
        c.metadata["sampler_pos"] = "-1000000";
        write_checkpoint(ckpt(run, s).string(), c);
    }
    CliResult r = run_cli("run --resume " + run.string() + " --quiet");
    INFO(r.out);
    CHECK(r.code == 5);
    CHECK(r.out.find("no usable checkpoint") != std::string::npos);
    CHECK(r.out.find(ckpt(run, 20).string() + ": metadata 'sampler_pos'") != std::string::npos);
    CHECK(r.out.find(ckpt(run, 23).string() + ": metadata 'sampler_pos'") != std::string::npos);
    fs::remove_all(run);
    fs::remove_all(ref);
}

TEST_CASE("flipped data bits in the newest checkpoint make a resume fall back to the previous one", "[runner]") {
    fs::path ref = fresh_dir("crc-ref"), run = fresh_dir("crc");
    straight_run(ref);
    half_run(run);
    flip_data_bit(ckpt(run, 23));
    CliResult r = run_cli("run --resume " + run.string() + " --quiet");
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(r.out.find(ckpt(run, 23).string() + ": CRC-32") != std::string::npos);
    CHECK(r.out.find("resumed") == std::string::npos);  // --quiet: only the warnings
    require_ends_as(read_checkpoint(latest_checkpoint(ref)), run);
    fs::remove_all(ref);
    fs::remove_all(run);
}

TEST_CASE("after a fallback resume rotation keeps the checkpoint that was loaded and sets the corrupt one aside", "[runner]") {
    fs::path run = fresh_dir("rotate");
    half_run(run);
    flip_data_bit(ckpt(run, 23));
    // Resume loads step 20 and stops at 22: the corrupt 23 is newer by name than both.
    CliResult r = run_cli("run --resume " + run.string() + " --quiet --stop-after 2");
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(fs::exists(ckpt(run, 20)));
    CHECK(fs::exists(ckpt(run, 22)));
    CHECK_FALSE(fs::exists(ckpt(run, 23)));
    CHECK(fs::exists(ckpt(run, 23).string() + ".corrupt"));
    CHECK(file_text(run / "checkpoints" / "latest") == "step-000000022.safetensors\n");
    auto all = run_checkpoints(run.string());
    REQUIRE(all.size() == 2);
    for (const auto& c : all) CHECK_NOTHROW(read_checkpoint(c));
    // And the next generation drops 20, keeping 22 as the fallback.
    REQUIRE(run_cli("run --resume " + run.string() + " --quiet --stop-after 1").code == 0);
    CHECK_FALSE(fs::exists(ckpt(run, 20)));
    CHECK(fs::exists(ckpt(run, 22)));
    CHECK(fs::exists(ckpt(run, 23)));
    CHECK_NOTHROW(read_checkpoint(ckpt(run, 23).string()));
    fs::remove_all(run);
}

TEST_CASE("resuming a finished run says so and leaves every file untouched", "[runner]") {
    fs::path run = fresh_dir("finished");
    REQUIRE(run_cli("run " + kTiny + " --quiet --set train.threads=1 --output " + run.string()).code == 0);
    const auto before = snapshot(run);
    CliResult r = run_cli("run --resume " + run.string() + " --quiet");
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(r.out.find("already finished") != std::string::npos);
    CHECK(snapshot(run) == before);
    // Killed after its last checkpoint but before the summary: the resume writes the same
    // summary (timings aside) and no second final-evaluation row.
    const std::string summary = file_text(run / "summary.json"), metrics = file_text(run / "metrics.jsonl");
    fs::remove(run / "summary.json");
    CliResult again = run_cli("run --resume " + run.string() + " --quiet");
    INFO(again.out);
    CHECK(again.code == 0);
    CHECK(file_text(run / "metrics.jsonl") == metrics);
    auto field = [](const std::string& text, const std::string& key) {
        const std::size_t at = text.find("\"" + key + "\"");
        return at == std::string::npos ? std::string("missing") : text.substr(at, text.find_first_of(",\n}", at) - at);
    };
    const std::string now = file_text(run / "summary.json");
    for (const char* key : {"steps", "final_train_loss", "test_nll", "test_bpd", "skipped_steps", "early_stopped"})
        CHECK(field(now, key) == field(summary, key));
    CHECK(field(now, "final_train_loss").find("0.0,") == std::string::npos);
    fs::remove_all(run);
}

TEST_CASE("an interrupted and resumed run logs the same metrics as a straight run", "[runner]") {
    fs::path straight = fresh_dir("metrics-straight"), split = fresh_dir("metrics-split");
    straight_run(straight);
    half_run(split);  // 23 is not a multiple of log_every (5): the window spans the resume
    REQUIRE(run_cli("run --resume " + split.string() + " --quiet").code == 0);
    const auto a = metrics_rows(straight), b = metrics_rows(split);
    REQUIRE(a.size() > 9);
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        INFO("row " << i);
        CHECK(a[i] == b[i]);
    }
    const std::string sa = file_text(straight / "summary.json"), sb = file_text(split / "summary.json");
    CHECK(sa.substr(sa.find("\"final_train_loss\""), 40) == sb.substr(sb.find("\"final_train_loss\""), 40));
    fs::remove_all(straight);
    fs::remove_all(split);
}

TEST_CASE("temporary checkpoint files orphaned by a killed writer are removed on the next run", "[runner]") {
    fs::path run = fresh_dir("orphans");
    half_run(run);
    const fs::path dir = run / "checkpoints";
    const std::string dead = std::to_string(flowlab::test::finished_pid());
    const std::vector<std::string> stale = {".step-000000025.safetensors.tmp-" + dead, ".latest.tmp-" + dead};
    const std::vector<std::string> kept = {"notes.tmp", ".step-000000025.safetensors.tmp-x", "step-1.safetensors.tmp"};
    for (const auto& f : stale) std::ofstream(dir / f) << "partial";
    for (const auto& f : kept) std::ofstream(dir / f) << "mine";
    CliResult r = run_cli("run --resume " + run.string() + " --quiet --stop-after 1");
    INFO(r.out);
    REQUIRE(r.code == 0);
    for (const auto& f : stale) CHECK_FALSE(fs::exists(dir / f));
    for (const auto& f : kept) CHECK(fs::exists(dir / f));
    // A new run into the same directory cleans up too.
    std::ofstream(dir / stale[0]) << "partial";
    REQUIRE(run_cli("run " + kTiny + " --quiet --set train.steps=2 --output " + run.string()).code == 0);
    CHECK_FALSE(fs::exists(dir / stale[0]));
    fs::remove_all(run);
}
