// flowlab::Model, the C++ API for a trained run: what it loads, that it computes what
// `flowlab eval` computes, and the errors it gives.
#include <catch2/catch.hpp>

#include "cli_support.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "flowlab/errors.hpp"
#include "flowlab/experiment.hpp"
#include "flowlab/model.hpp"
#include "flowlab/run_dir.hpp"

using namespace flowlab;
namespace fs = std::filesystem;

using namespace flowlab::test;

namespace {

const std::string kTinyMoons = std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json";




// A short tiny_moons run with a parameter average, so that EMA and raw weights differ.
fs::path trained_run(const fs::path& dir, const std::string& extra = "") {
    const fs::path run = dir / "run";
    const CliResult r = run_cli("run " + kTinyMoons + " --quiet --set train.steps=20 --set train.threads=1 "
                              "--set train.ema_decay=0.9 --set eval.samples=0 --output " + run.string() + extra);
    INFO(r.out);
    REQUIRE(r.code == 0);
    return run;
}

double mean_log_prob(Model& m, const Tensor& x, std::int64_t batch) {
    double sum = 0.0;
    for (std::int64_t start = 0; start < x.size(0); start += batch) {
        const std::int64_t len = std::min(batch, x.size(0) - start);
        const Tensor lp = m.log_prob(x.rows(start, len));
        REQUIRE(lp.shape() == Shape{len});
        for (std::int64_t i = 0; i < len; ++i) sum += lp.item(i);
    }
    return sum / static_cast<double>(x.size(0));
}

}  // namespace

TEST_CASE("Model::load gives the log-likelihood flowlab eval reports, and a flow that inverts", "[model]") {
    const fs::path dir = fresh_temp_dir("eval");
    const fs::path run = trained_run(dir);
    Model m = Model::load(run.string());
    CHECK(m.run_dir() == run.string());
    CHECK(m.checkpoint() == run_checkpoints(run.string()).front());
    CHECK(m.event_shape() == Shape{2});
    CHECK(m.context_shape().empty());
    CHECK(m.dtype() == DType::f32);
    CHECK(m.num_parameters() > 0);
    CHECK(m.config().get_string("name") == "tiny-moons");
    CHECK(m.config().get_object("train").get_int("steps") == 20);
    REQUIRE(!m.plugins().empty());
    CHECK(m.plugins().front().name == "standard");
    CHECK(m.experiment().optimizer == nullptr);

    // The mean log p of the test split is minus eval's NLL (printed with 6 decimals).
    const Tensor& test = m.data().test.x;
    REQUIRE(test.size(0) == 500);
    const double mean = mean_log_prob(m, test, 500);
    const CliResult e = run_cli("eval " + run.string() + " --quiet");
    INFO(e.out);
    REQUIRE(e.code == 0);
    const auto at = e.out.find("\"nll\": ");
    REQUIRE(at != std::string::npos);
    const double eval_nll = std::stod(e.out.substr(at + 7));
    CHECK(-mean == Approx(eval_nll).margin(1e-6));
    CHECK(std::isfinite(mean));
    // Batching does not change a log-density; f64 input gives the f32 answer.
    CHECK(mean_log_prob(m, test, 37) == Approx(mean).epsilon(1e-6));
    CHECK(mean_log_prob(m, test.to(DType::f64), 500) == Approx(mean).epsilon(1e-6));

    // Samples, and data -> latent -> data.
    Rng rng(7);
    const Tensor x = m.sample(9, rng, 0.8);
    REQUIRE(x.shape() == Shape{9, 2});
    const Transformed z = m.inverse(x);
    const Transformed back = m.forward(z.value);
    REQUIRE(z.log_det.shape() == Shape{9});
    for (std::int64_t i = 0; i < x.numel(); ++i) CHECK(back.value.item(i) == Approx(x.item(i)).margin(1e-4));
    for (std::int64_t i = 0; i < 9; ++i) CHECK(z.log_det.item(i) + back.log_det.item(i) == Approx(0.0).margin(1e-4));
    const Tensor lp = m.log_prob(x);
    for (std::int64_t i = 0; i < 9; ++i) CHECK(std::isfinite(lp.item(i)));
    // The same seed draws the same samples.
    Rng again(7);
    const Tensor y = m.sample(9, again, 0.8);
    for (std::int64_t i = 0; i < x.numel(); ++i) CHECK(y.item(i) == x.item(i));

    // A checkpoint file loads as its run directory does; without EMA the raw weights differ.
    Model same = Model::load(m.checkpoint());
    CHECK(same.run_dir() == run.string());
    CHECK(mean_log_prob(same, test, 500) == Approx(mean).epsilon(1e-9));
    ModelOptions raw;
    raw.prefer_ema = false;
    Model no_ema = Model::load(run.string(), raw);
    CHECK(mean_log_prob(no_ema, test, 500) != Approx(mean).epsilon(1e-6));
    // Overrides apply to the run's config (as --set does for eval).
    ModelOptions more;
    more.overrides = {"eval.batch_size=100"};
    CHECK(Model::load(run.string(), more).config().get_object("eval").get_int("batch_size") == 100);
    fs::remove_all(dir);
}

TEST_CASE("Model::load finds a plugin where the run loaded it, with no search path given", "[model]") {
    const fs::path dir = fresh_temp_dir("plugin");
    const std::string fixtures = FLOWLAB_TEST_FIXTURE_DIR;
    const fs::path run = trained_run(dir, " --plugin-dir " + fixtures + " --set 'plugins=[\"standard\", \"good_plugin\"]'");
    const auto dirs = run_plugin_dirs(run.string());
    CHECK(std::find(dirs.begin(), dirs.end(), fixtures) != dirs.end());
    CHECK(run_plugin_dirs(run.string(), {"/first"}).front() == "/first");
    Model m = Model::load(run.string());
    bool found = false;
    for (const auto& p : m.plugins()) found = found || p.path == fixtures + "/good_plugin.so";
    CHECK(found);
    fs::remove_all(dir);
}

TEST_CASE("Model reports a missing run, a bad checkpoint and wrong input shapes as flowlab errors", "[model]") {
    const fs::path dir = fresh_temp_dir("errors");
    CHECK_THROWS_AS(Model::load((dir / "nope").string()), IoError);
    CHECK_THROWS_WITH(Model::load((dir / "nope").string()), Catch::Contains("no such run directory or checkpoint"));
    fs::create_directories(dir / "empty");
    CHECK_THROWS_WITH(Model::load((dir / "empty").string()), Catch::Contains("no checkpoints in this run directory"));

    const fs::path run = trained_run(dir);
    Model m = Model::load(run.string());
    CHECK_THROWS_AS(m.log_prob(Tensor::zeros({4, 3})), ShapeError);
    CHECK_THROWS_WITH(m.log_prob(Tensor::zeros({4})), Catch::Contains("expected [batch, 2]"));
    CHECK_THROWS_AS(m.log_prob(Tensor()), ShapeError);
    CHECK_THROWS_AS(m.log_prob(Tensor::zeros({4, 2}), Tensor::zeros({4, 1})), ShapeError);  // no context here
    Rng rng(1);
    CHECK_THROWS_AS(m.sample(-1, rng), ShapeError);
    CHECK(m.sample(0, rng).size(0) == 0);

    // A checkpoint whose bytes were damaged is an i/o error naming the file.
    const std::string ck = run_checkpoints(run.string()).front();
    {
        std::FILE* f = std::fopen(ck.c_str(), "r+b");
        REQUIRE(f);
        std::fseek(f, -8, SEEK_END);
        std::fputs("garbage!", f);
        std::fclose(f);
    }
    CHECK_THROWS_AS(Model::load(ck), IoError);
    CHECK_THROWS_WITH(Model::load(ck), Catch::Contains(ck));
    fs::remove_all(dir);
}

TEST_CASE("Model::load builds the model from config.json's shapes and reads the data only when asked", "[model]") {
    const fs::path dir = fresh_temp_dir("nodata");
    const fs::path csv = dir / "points.csv";
    {
        std::FILE* f = std::fopen(csv.c_str(), "w");
        REQUIRE(f);
        for (int i = 0; i < 300; ++i) std::fprintf(f, "%.6f,%.6f\n", std::sin(0.1 * i), std::cos(0.37 * i) * 0.5);
        std::fclose(f);
    }
    const fs::path run = trained_run(dir, " --set 'plugins=[\"standard\",\"density\"]' --set 'data={\"type\":\"csv\",\"path\":\"" +
                                              csv.string() + "\"}'");
    const Tensor x = Tensor::from_vector({3, 2}, {0.1, 0.2, -0.3, 0.4, 0.5, -0.6});
    const Tensor with_data = Model::load(run.string()).log_prob(x);

    fs::remove(csv);
    Model m = Model::load(run.string());  // no data file: the shapes come from config.json
    CHECK(m.event_shape() == Shape{2});
    const Tensor without = m.log_prob(x);
    CHECK(kern::max_abs_diff(with_data, without) == 0.0);
    Rng rng(3);
    CHECK(m.sample(5, rng).shape() == Shape{5, 2});
    // Asking for the splits reads the data, and a missing file is then an error naming it.
    CHECK_THROWS_WITH(m.data(), Catch::Contains(csv.string()));
    fs::remove_all(dir);
}
