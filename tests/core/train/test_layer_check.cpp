// The run-time layer checks (layer_check.hpp): they find a layer whose directions disagree,
// name it even inside a split, and change nothing about training.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <flowlab/config.hpp>
#include <flowlab/layer_check.hpp>
#include <flowlab/trainer.hpp>

#include "cli_support.hpp"
#include "test_support.hpp"

using namespace flowlab;
namespace fs = std::filesystem;

namespace {

// The shipped plugins and the example whose inverse log-det has its sign flipped.
const Registry& registry_with_broken_layer() {
    static Registry* reg = [] {
        auto* r = new Registry();
        for (const char* name : {"standard", "density"})
            load_plugin(*r, std::string(FLOWLAB_TEST_PLUGIN_DIR) + "/libflowlab_" + name + ".so");
        load_plugin(*r, std::string(FLOWLAB_TEST_EXAMPLE_DIR) + "/libflowlab_broken_logdet.so");
        return r;
    }();
    return *reg;
}

// A moons experiment with these layers (a JSON list), written to a file of its own.
Experiment moons_with(const std::string& layers, const std::vector<std::string>& sets = {}) {
    const fs::path dir = flowlab::test::fresh_temp_dir("layer_check");
    const fs::path path = dir / "exp.json";
    std::ofstream(path) << R"({"flowlab": 1, "seed": 2, "data": {"type": "moons", "train": 2000, "test": 500},
                               "model": {"layers": )" << layers
                        << R"(}, "train": {"batch_size": 128, "steps": 40, "threads": 1, "adaptive_threads": false}})";
    Experiment exp = build_experiment(load_experiment(path.string(), sets), registry_with_broken_layer());
    fs::remove_all(dir);
    return exp;
}

const char* const kCoupling =
    R"({"type": "affine_coupling", "mask": "alternate", "parity": 0, "conditioner": {"type": "mlp", "hidden": [8]}})";

// Moves the named layer's log-scale away from zero, where a flipped sign shows.
void set_log_scale(Flow& flow, const std::string& name, double v) {
    for (auto& p : flow.named_parameters())
        if (p.name == name) p.var.mutable_value().fill(v);
}

Tensor first_rows(const Experiment& exp, std::int64_t n) { return exp.data.train.x.rows(0, n); }

}  // namespace

TEST_CASE("the layer checks pass a correct flow and name the layer whose log-det has the wrong sign", "[layer_check]") {
    Experiment exp = moons_with(std::string("[") + kCoupling + R"(, {"type": "broken_scale_shift"}, )" + kCoupling + "]");
    const Tensor x = first_rows(exp, 64);
    // At initialisation both log-dets are 0: the broken layer looks right.
    CHECK_FALSE(check_flow_layers(*exp.flow, x).has_value());
    set_log_scale(*exp.flow, "layers.1.log_scale", 0.2);
    const auto bad = check_flow_layers(*exp.flow, x);
    REQUIRE(bad.has_value());
    CHECK(bad->layer == 1);
    CHECK(bad->check == "log_det_cancel");
    // Inverse 0.4, forward 0.4: |0.4 + 0.4| / max(1, 0.4).
    CHECK(bad->worst == Approx(0.8).epsilon(1e-5));
    const LayerInfo& info = exp.flow->layer_info()[bad->layer];
    CHECK(info.pointer == "/model/layers/1");
    CHECK(info.type == "broken_scale_shift");
    CHECK(info.plugin == "broken_logdet");
    CHECK(info.plugin_path.find("libflowlab_broken_logdet.so") != std::string::npos);
    // A correct layer of the same flow, moved the same way, passes.
    set_log_scale(*exp.flow, "layers.1.log_scale", 0.0);
    CHECK_FALSE(check_flow_layers(*exp.flow, x).has_value());
}

TEST_CASE("a layer check failure inside a split names the inner layer, not the split", "[layer_check]") {
    Experiment exp = moons_with(std::string("[") + kCoupling + R"(, {"type": "split", "keep": 1}, {"type": "broken_scale_shift"}])");
    REQUIRE(exp.flow->layer_info().size() == 3);
    set_log_scale(*exp.flow, "layers.1.rest.0.log_scale", -0.3);
    const auto bad = check_flow_layers(*exp.flow, first_rows(exp, 32));
    REQUIRE(bad.has_value());
    CHECK(bad->layer == 2);
    CHECK(exp.flow->layer_info()[2].pointer == "/model/layers/2");
    CHECK(exp.flow->layer_info()[1].type == "split");
    CHECK(exp.flow->layer_info()[1].plugin.empty());
}

TEST_CASE("the trainer stops at the first evaluation once a broken layer has moved, naming it", "[layer_check]") {
    Experiment exp = moons_with(std::string("[") + kCoupling + R"(, {"type": "broken_scale_shift"}])",
                                {"train.eval_every=20", "train.optimizer={\"type\": \"adam\", \"lr\": 0.01}"});
    TrainOptions opt;
    opt.quiet = true;
    std::int64_t last = 0;
    opt.on_step = [&](std::int64_t done) { last = done; };
    const std::string msg = flowlab::test::error_of<LayerCheckError>([&] { train(exp, opt); });
    CHECK(last == 20);
    CHECK(msg.find("exp.json:/model/layers/1: layer 2 of 2, 'broken_scale_shift' from plugin 'broken_logdet'") !=
          std::string::npos);
    CHECK(msg.find("fails the layer check at step 20 (an evaluation)") != std::string::npos);
    CHECK(msg.find("it had written no checkpoint yet") != std::string::npos);
    CHECK(msg.find("Find the fault with: flowlab check-plugin ") != std::string::npos);
    // Switched off, the same run trains to its end without a word.
    Experiment quiet = moons_with(std::string("[") + kCoupling + R"(, {"type": "broken_scale_shift"}])",
                                  {"train.eval_every=20", "train.check_layers=false"});
    CHECK(train(quiet, opt).steps == 40);
}

TEST_CASE("the layer checks change no bit of training: parameters, buffers, batches and noise", "[layer_check]") {
    // Batch norm updates running statistics in training mode and a uniform dequantizer draws
    // noise: the checks must do neither to the training's state.
    auto train_with = [](const std::string& check) {
        Experiment exp = moons_with(std::string("[") + kCoupling + R"(, {"type": "batch_norm"}, )" + kCoupling + "]",
                                    {"train.eval_every=10", "train.check_layers=" + check,
                                     "model.dequantizer={\"type\": \"uniform\", \"bits\": 1}"});
        TrainOptions opt;
        opt.quiet = true;
        const TrainSummary s = train(exp, opt);
        return std::make_pair(s, std::move(exp));
    };
    auto [with, exp_with] = train_with("true");
    auto [without, exp_without] = train_with("false");
    CHECK(with.final_train_loss == without.final_train_loss);
    CHECK(with.test_nll == without.test_nll);
    auto same_bits = [](const Tensor& a, const Tensor& b) {
        return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
    };
    const auto pa = exp_with.flow->named_parameters(), pb = exp_without.flow->named_parameters();
    REQUIRE(pa.size() == pb.size());
    for (std::size_t i = 0; i < pa.size(); ++i) {
        INFO(pa[i].name);
        CHECK(same_bits(pa[i].var.value(), pb[i].var.value()));
    }
    const auto ba = exp_with.flow->named_buffers(), bb = exp_without.flow->named_buffers();
    REQUIRE(ba.size() == bb.size());
    REQUIRE_FALSE(ba.empty());
    for (std::size_t i = 0; i < ba.size(); ++i) {
        INFO(ba[i].name);
        CHECK(same_bits(ba[i].tensor, bb[i].tensor));
    }
}
