// Hostile and mistaken input at the command line: each case is a reproducer of a crash, an
// internal error or a silently wrong result, and must now end in a clear error with its exit code.
#include <catch2/catch.hpp>

#include "cli_support.hpp"

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <flowlab/checkpoint.hpp>
#include <flowlab/experiment.hpp>
#include <flowlab/run_dir.hpp>

namespace fs = std::filesystem;
using nlohmann::json;
using namespace flowlab::test;

namespace {

const std::string kTinyConfig = std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json";





void write(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

// dir/name: the tiny config with the first `from` in its text replaced by `to`.
fs::path edited_config(const fs::path& dir, const std::string& name, const std::string& from, const std::string& to) {
    std::string cfg = read_text(kTinyConfig);
    cfg.replace(cfg.find(from), from.size(), to);
    write(dir / name, cfg);
    return dir / name;
}

// `flowlab validate` of the tiny config with `options` after it.
CliResult validate_tiny(const std::string& options) { return run_cli("validate " + kTinyConfig + " " + options); }

// The run ended with exit code `code` and its output says each of `says`.
void check_exit(const CliResult& r, int code, std::initializer_list<std::string> says) {
    INFO(r.out);
    CHECK(r.code == code);
    for (const auto& part : says) CHECK(contains(r.out, part));
}

}  // namespace

TEST_CASE("a config nested 70000 levels deep is a config error, not a stack overflow", "[cli]") {
    fs::path dir = fresh_temp_dir("deep");
    std::string deep = "{\"flowlab\": 1, \"x\": " + std::string(70000, '[') + std::string(70000, ']') + "}";
    write(dir / "deep.json", deep);
    check_exit(run_cli("validate " + (dir / "deep.json").string()), 3,
               {"deep.json:/x/0/0/0", "nested deeper than 256 levels"});
    fs::remove_all(dir);
}

TEST_CASE("a duplicate key in a config is an error naming both the pointer and the key", "[cli]") {
    fs::path dir = fresh_temp_dir("dup");
    const fs::path cfg = edited_config(dir, "dup.json", "\"seed\": 3", "\"seed\": 3, \"seed\": 4");
    check_exit(run_cli("validate " + cfg.string()), 3, {"dup.json:/seed: duplicate key 'seed'"});
    fs::remove_all(dir);
}

TEST_CASE("a number beyond the range of a double is a config error in a file and in --set", "[cli]") {
    fs::path dir = fresh_temp_dir("huge");
    const fs::path cfg = edited_config(dir, "huge.json", "\"steps\": 40", "\"steps\": 1e400");
    check_exit(run_cli("validate " + cfg.string()), 3, {"huge.json:/train/steps: number out of range"});
    check_exit(validate_tiny("--set train.optimizer.lr=1e400"), 3, {"--set train.optimizer.lr:/: number out of range"});
    fs::remove_all(dir);
}

TEST_CASE("a directory, a device or a huge file given as the config is an i/o error naming it", "[cli]") {
    fs::path dir = fresh_temp_dir("notafile");
    check_exit(run_cli("validate " + dir.string()), 5, {dir.string() + ": is a directory, not a config file"});
    check_exit(run_cli("validate /dev/zero"), 5, {"/dev/zero: larger than 16 MB"});
    fs::remove_all(dir);
}

TEST_CASE("an empty flow is refused by validate, before any training", "[cli]") {
    check_exit(validate_tiny("--set 'model.layers=[]'"), 3,
               {"tiny_moons.json:/model: the model has no trainable parameters"});
}

TEST_CASE("a thread count beyond the machine's hardware threads is a config error", "[cli]") {
    for (const char* n : {"10000", "2147483648"})
        check_exit(validate_tiny(std::string("--set train.threads=") + n), 3, {"tiny_moons.json:/train/threads"});
}

TEST_CASE("a repeat count far beyond memory fails before building, with the size it would need", "[cli]") {
    check_exit(validate_tiny("--set model.layers.0.repeat=1000000000"), 3,
               {"tiny_moons.json:/model/layers/0/repeat: repeat 1000000000"});
    // 16.8 M parameters a coupling, 2,000 of them: about 540 GB to train.
    check_exit(validate_tiny("--set 'model.layers.0.layers.0.conditioner.hidden=[4096,4096]'"
                             " --set model.layers.0.repeat=1000"),
               3, {"GB to train"});
}

TEST_CASE("a layer too large to train fails while building, naming the layer and the sizes", "[cli]") {
    // hidden [1e11]: the first weight alone is 400 GB, past a quarter of any test machine's
    // memory, and refused before it is allocated.
    check_exit(validate_tiny("--set 'model.layers.0.layers.0.conditioner.hidden=[100000000000]'"), 3,
               {"tiny_moons.json:/model/layers/0/layers/0: cannot build layer 'affine_coupling'",
                "the model's parameters", "over its budget of"});
}

TEST_CASE("summary.json and config.json stay valid JSON whatever the run's name", "[cli]") {
    fs::path dir = fresh_temp_dir("name");
    const std::string name = "a \\\"quoted\\\" name " + std::string(1500, 'n');
    CliResult r = run_cli("run " + kTinyConfig + " --quiet --set train.steps=2 --set eval.samples=0 --set 'name=\"" +
                              name + "\"' --output " + (dir / "run").string());
    INFO(r.out);
    REQUIRE(r.code == 0);
    json summary = json::parse(read_text(dir / "run" / "summary.json"));
    CHECK(summary["name"].get<std::string>() == "a \"quoted\" name " + std::string(1500, 'n'));
    CHECK(summary["steps"] == 2);
    json config = json::parse(read_text(dir / "run" / "config.json"));
    CHECK(config["config"]["name"] == summary["name"]);
    fs::remove_all(dir);
}

TEST_CASE("an empty test split reports no test NLL instead of zero", "[cli]") {
    fs::path dir = fresh_temp_dir("notest");
    CliResult r = run_cli("run " + kTinyConfig + " --quiet --set train.steps=2 --set data.test=0 --set eval.samples=0 "
                              "--output " + (dir / "run").string());
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(contains(r.out, "test NLL   n/a (the test split is empty)"));
    CHECK_FALSE(contains(r.out, "test NLL   0.0000"));
    json summary = json::parse(read_text(dir / "run" / "summary.json"));
    CHECK(summary["test_nll"].is_null());
    fs::remove_all(dir);
}

TEST_CASE("eval of non-finite weights prints valid JSON with null and exits with the numeric code", "[cli]") {
    fs::path dir = fresh_temp_dir("naneval");
    fs::path run = dir / "run";
    CliResult r = run_cli("run " + kTinyConfig + " --quiet --set train.steps=2 --set eval.samples=0 --output " +
                              run.string());
    REQUIRE(r.code == 0);
    // Rewrite the newest checkpoint with NaN weights through the checkpoint writer, so that it is
    // a well-formed file whose values are bad.
    const std::string path = flowlab::run_checkpoints(run.string()).front();
    flowlab::Checkpoint ck = flowlab::read_checkpoint(path);
    for (auto& t : ck.tensors)
        if (t.name.rfind("param/", 0) == 0 || t.name.rfind("ema/", 0) == 0) t.tensor.fill(std::nan(""));
    flowlab::write_checkpoint(path, ck);
    CliResult e = run_cli("eval " + run.string() + " --quiet");
    INFO(e.out);
    CHECK(e.code == 6);
    // stderr's message and stdout's line share the pipe; the JSON line is the one with a brace.
    const auto brace = e.out.find("{\"split\"");
    REQUIRE(brace != std::string::npos);
    json line = json::parse(e.out.substr(brace, e.out.find('\n', brace) - brace));
    CHECK(line["nll"].is_null());
    CHECK(contains(e.out, "NLL is not finite"));
    fs::remove_all(dir);
}

TEST_CASE("a relative plugin path in a config is found relative to the config file", "[cli]") {
    fs::path dir = fresh_temp_dir("relplugin");
    fs::create_directories(dir / "exp" / "lib");
    fs::copy_file(std::string(FLOWLAB_TEST_FIXTURE_DIR) + "/good_plugin.so", dir / "exp" / "lib" / "good_plugin.so");
    const fs::path cfg = edited_config(dir / "exp", "rel.json", "\"seed\": 3",
                                       "\"seed\": 3, \"plugins\": [\"standard\", \"lib/good_plugin.so\"]");
    // Started from elsewhere: the path must not resolve against the working directory.
    check_exit(run_cli("validate " + cfg.string()), 0, {});
    fs::remove_all(dir);
}
