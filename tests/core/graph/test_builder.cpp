// The graph builder: shapes inferred node by node, errors at the node's JSON pointer, repeat
// blocks, split, and the plugins' defaults for the slots a config leaves out.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include <unistd.h>

#include <flowlab/builder.hpp>
#include <flowlab/config.hpp>
#include <flowlab/errors.hpp>

#include "test_support.hpp"

using namespace flowlab;
using namespace flowlab::test;

namespace {

}  // namespace

TEST_CASE("a repeat block builds fresh layers and the info lists every node with its shapes", "[builder]") {
    Params model = Params::parse(R"({"layers": [{"repeat": 3, "layers": [{"type": "reverse"}, {"type":
        "affine_coupling", "conditioner": {"type": "mlp", "hidden": [4]}}]}]})", "m.json");
    Rng rng(1);
    auto flow = build_flow(model, {3}, {}, standard_and_image_registry(), rng);
    const auto& info = flow->layer_info();
    REQUIRE(info.size() == 6);
    CHECK(info[0].pointer == "/layers/0/layers/0");
    CHECK(info[1].pointer == "/layers/0/layers/1");
    CHECK(info[5].in_shape == Shape{3});
    CHECK(info[5].out_shape == Shape{3});
    // Fresh parameters per repetition: the three couplings do not share tensors.
    CHECK(info[1].num_parameters > 0);
    CHECK(flow->num_parameters() == 3 * info[1].num_parameters);
}

TEST_CASE("a repeat count past the layer limit is a config error at the block, a deep flow builds", "[builder]") {
    Rng rng(1);
    Params typo = Params::parse(R"({"layers": [{"repeat": 20478, "layers": [{"type": "affine_coupling",
        "conditioner": {"type": "mlp", "hidden": [4]}}, {"type": "reverse"}]}]})", "m.json");
    CHECK(error_of<ConfigError>([&] { build_flow(typo, {4}, {}, standard_and_image_registry(), rng); })
              .rfind("m.json:/layers/0/repeat: repeat 20478 makes 40956 layers, more than the limit of 10000", 0) == 0);
    // A count whose product with the block's size passes 64 bits (found by fuzz_graph: the
    // message's layer count overflowed) is the same error.
    Params huge = Params::parse(R"({"layers": [{"repeat": 8888888888888888885, "layers": [{"type": "x",
        "conditioner": {"type": "mlp", "hidden": [4]}}, {"type": "reverse"}]}]})", "m.json");
    CHECK(error_of<ConfigError>([&] { build_flow(huge, {4}, {}, standard_and_image_registry(), rng); })
              .rfind("m.json:/layers/0/repeat: repeat 8888888888888888885 makes more than 9223372036854775807 layers, "
                     "more than the limit of 10000", 0) == 0);
    // 2,500 couplings are one flow module's children: names are checked in constant time, so this
    // builds in linear time (it was quadratic when each name was compared with every other).
    Params deep = Params::parse(R"({"layers": [{"repeat": 2500, "layers": [{"type": "affine_coupling",
        "conditioner": {"type": "mlp", "hidden": [4]}}, {"type": "reverse"}]}]})", "m.json");
    auto flow = build_flow(deep, {4}, {}, standard_and_image_registry(), rng);
    CHECK(flow->layer_info().size() == 5000);
}

TEST_CASE("a bad node is reported at its JSON pointer, and shapes are checked through the chain", "[builder]") {
    Rng rng(1);
    Params typo = Params::parse(R"({"layers": [{"type": "reverse"}, {"type": "afine_coupling"}]})", "m.json");
    CHECK(error_of<ConfigError>([&] { build_flow(typo, {2}, {}, standard_and_image_registry(), rng); })
              .rfind("m.json:/layers/1/type: unknown bijector 'afine_coupling'; did you mean 'affine_coupling'?", 0) == 0);
    // squeeze needs an image [C, H, W]; vector data fails at the squeeze node.
    Params image_layer = Params::parse(R"({"layers": [{"type": "reverse"}, {"type": "squeeze"}]})", "m.json");
    CHECK(error_of<ConfigError>([&] { build_flow(image_layer, {4}, {}, standard_and_image_registry(), rng); })
              .rfind("m.json:/layers/1", 0) == 0);
}

TEST_CASE("split factors out channels, runs the rest of its list on the kept ones and round-trips", "[builder]") {
    Params model = Params::parse(R"({"layers": [{"type": "squeeze"}, {"type": "split"}, {"type": "actnorm2d"}]})",
                                 "m.json");
    Rng rng(2);
    auto flow = build_flow(model, {1, 4, 4}, {}, standard_and_image_registry(), rng);
    const auto& info = flow->layer_info();
    REQUIRE(info.size() == 3);
    CHECK(info[1].type == "split");
    CHECK(info[1].in_shape == Shape{4, 2, 2});
    CHECK(info[2].in_shape == Shape{2, 2, 2});  // the kept half
    Tensor x = randn({3, 1, 4, 4}, 5, DType::f32);
    FlowResult z = flow->inverse(Var(x));
    FlowResult back = flow->forward(z.out);
    double worst = 0, ld = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) worst = std::max(worst, std::abs(back.out.value().item(i) - x.item(i)));
    for (std::int64_t i = 0; i < 3; ++i) ld = std::max(ld, std::abs(z.log_det.value().item(i) + back.log_det.value().item(i)));
    CHECK(worst < 1e-5);
    CHECK(ld < 1e-5);
}

TEST_CASE("build_experiment fills a left-out base, optimizer and schedule from the plugins' defaults", "[builder]") {
    namespace fs = std::filesystem;
    const fs::path path = fs::temp_directory_path() / ("flowlab-builder-" + std::to_string(::getpid()) + ".json");
    std::ofstream(path) << R"({"flowlab": 1, "data": {"type": "moons", "train": 64, "test": 16},
        "model": {"layers": [{"type": "affine_coupling"}]}, "train": {"batch_size": 16}})";
    Params cfg = load_experiment(path.string());
    fs::remove(path);
    CHECK_FALSE(cfg.get_object("model").has("base"));  // left to the plugins
    Experiment exp = build_experiment(cfg, standard_and_image_registry());
    CHECK(exp.config.get_object("model").get_object("base").get_string("type") == "standard_normal");
    CHECK(exp.config.get_object("train").get_object("optimizer").get_string("type") == "adam");
    CHECK(exp.config.get_object("train").get_object("schedule").get_string("type") == "constant");
    CHECK(exp.optimizer != nullptr);
    CHECK(exp.schedule != nullptr);
}
