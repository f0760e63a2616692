// The trainer in-process: it learns, it stops where it is told, and evaluation says so when
// there is nothing to evaluate. (The runner's end-to-end behaviour - checkpoints, resume,
// signals, non-finite steps - is in tests/apps/test_runner.cpp.)
#include <catch2/catch.hpp>

#include <cmath>

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
