// The trainer in-process: it learns, it stops where it is told, and evaluation says so when
// there is nothing to evaluate. (The runner's end-to-end behaviour - checkpoints, resume,
// signals, non-finite steps - is in tests/apps/test_runner.cpp.)
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <thread>

#include <flowlab/config.hpp>
#include <flowlab/trainer.hpp>

#include "test_support.hpp"

using namespace flowlab;

namespace {

Experiment tiny(const std::vector<std::string>& sets = {}) {
    Params cfg = load_experiment(std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json", sets);
    return build_experiment(cfg, flowlab::test::standard_and_image_registry());
}

}  // namespace

TEST_CASE("training lowers the test NLL of an untrained flow", "[trainer]") {
    Experiment exp = tiny({"train.steps=150", "train.threads=1"});
    const double before = evaluate(exp, "test", 500).nll;
    TrainOptions opt;
    opt.quiet = true;
    TrainSummary s = train(exp, opt);
    CHECK(s.steps == 150);
    CHECK(s.skipped_steps == 0);
    CHECK_FALSE(s.interrupted);
    CHECK(std::isfinite(s.final_train_loss));
    CHECK(s.test_nll < before - 0.3);  // an untrained flow on moons sits near 2.8 nats
    CHECK(s.test_nll == Approx(evaluate(exp, "test", 500).nll));
}

TEST_CASE("stop_after ends the call early and steps_override replaces train.steps", "[trainer]") {
    Experiment exp = tiny({"train.threads=1"});
    TrainOptions opt;
    opt.quiet = true;
    opt.steps_override = 12;
    opt.stop_after = 5;
    std::int64_t last = 0;
    opt.on_step = [&](std::int64_t done) { last = done; };
    TrainSummary s = train(exp, opt);
    CHECK(s.interrupted);
    CHECK(s.steps == 5);
    CHECK(last == 5);
}

TEST_CASE("evaluating an empty split gives NaN, never a plausible zero", "[trainer]") {
    Experiment exp = tiny({"data.test=0"});
    EvalResult r = evaluate(exp, "test", 100);
    CHECK(r.n == 0);
    CHECK(std::isnan(r.nll));
    CHECK(std::isnan(r.bpd));
}

TEST_CASE("the thread count does not change a bit of training", "[trainer][threads]") {
    // GEMM tiles and reduction chunks depend on the shapes only, which is what lets the thread
    // governor switch between one thread and all of them mid-run. The quickstart's sizes (a
    // batch of 512, hidden 128) are large enough for the GEMMs to be split into tiles.
    if (std::thread::hardware_concurrency() < 2) {
        WARN("one hardware thread: nothing to compare");
        return;
    }
    auto train_with = [](const std::string& threads) {
        Params cfg = load_experiment(std::string(FLOWLAB_SOURCE_DIR) + "/configs/quickstart.json",
                                     {"train.steps=40", "train.adaptive_threads=false", "train.threads=" + threads});
        Experiment exp = build_experiment(cfg, flowlab::test::standard_and_image_registry());
        TrainOptions opt;
        opt.quiet = true;
        opt.final_eval = false;
        train(exp, opt);
        return exp.flow->named_parameters();
    };
    const auto one = train_with("1");
    const auto two = train_with("2");
    REQUIRE(one.size() == two.size());
    for (std::size_t i = 0; i < one.size(); ++i) {
        INFO(one[i].name);
        const Tensor& a = one[i].var.value();
        const Tensor& b = two[i].var.value();
        REQUIRE(a.numel() == b.numel());
        CHECK(std::memcmp(a.data<float>(), b.data<float>(), static_cast<std::size_t>(a.numel()) * sizeof(float)) == 0);
    }
}
