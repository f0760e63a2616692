// The image plugin's conv2d op: a graph equal to the `cnn` conditioner draws, computes and
// differentiates as `cnn`, with its hidden activations channels-last as cnn keeps them.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <flowlab/conv.hpp>
#include <flowlab/errors.hpp>
#include <flowlab/network.hpp>
#include <flowlab/ops.hpp>

#include "test_support.hpp"

using namespace flowlab;
using namespace flowlab::test;

namespace {

const Registry& reg() { return standard_and_image_registry(); }

std::unique_ptr<Conditioner> make(const std::string& json, const ConditionerSpec& spec, std::uint64_t seed) {
    Rng rng(seed);
    return reg().make_conditioner(Params::parse(json, "exp.json"), spec, rng);
}

Var named(const Module& m, const std::string& name) {
    for (const auto& p : m.named_parameters())
        if (p.name == name) return p.var;
    FAIL("no parameter " << name);
    return Var();
}

const char* kCnnGraph = R"({"type": "graph", "nodes": [
    {"name": "c1", "type": "conv2d", "inputs": ["x"], "out": 8, "kernel": 3},
    {"name": "a1", "type": "relu", "inputs": ["c1"]},
    {"name": "c2", "type": "conv2d", "inputs": ["a1"], "out": 8, "kernel": 1},
    {"name": "a2", "type": "relu", "inputs": ["c2"]},
    {"name": "o", "type": "conv2d", "inputs": ["a2"], "out": "auto", "kernel": 3}], "output": "o"})";

const std::vector<std::pair<std::string, std::string>> kCnnNames = {
    {"conv0.weight", "net.c1.weight"}, {"conv0.bias", "net.c1.bias"}, {"conv1.weight", "net.c2.weight"},
    {"conv1.bias", "net.c2.bias"},     {"conv2.weight", "net.o.weight"}, {"conv2.bias", "net.o.bias"}};

}  // namespace

TEST_CASE("a conv2d graph equal to cnn draws, computes and differentiates exactly as cnn", "[image][graph]") {
    const ConditionerSpec spec{{2, 5, 4}, {4, 5, 4}, {}, true};
    auto cnn = make(R"({"type": "cnn", "hidden": 8})", spec, 3);
    auto graph = make(kCnnGraph, spec, 3);
    REQUIRE(graph->named_parameters().size() == kCnnNames.size());
    for (const auto& [c, g] : kCnnNames) {
        INFO(c);
        CHECK(named(*graph, g).shape() == named(*cnn, c).shape());
        CHECK(kern::max_abs_diff(named(*graph, g).value(), named(*cnn, c).value()) == 0.0);
    }
    perturb(*cnn, 4, 0.2, DType::f64);
    for (const auto& [c, g] : kCnnNames) named(*graph, g).mutable_value() = named(*cnn, c).value().clone();
    Tensor xv = randn({3, 2, 5, 4}, 5), r = randn({3, 4, 5, 4}, 6);
    Var xc(xv, true), xg(xv, true);
    Var yc = (*cnn)(xc, Var()), yg = (*graph)(xg, Var());
    REQUIRE(yg.shape() == Shape{3, 4, 5, 4});
    CHECK(kern::max_abs_diff(yc.value(), yg.value()) < 1e-13);
    sum_all(yc * Var(r)).backward();
    sum_all(yg * Var(r)).backward();
    for (const auto& [c, g] : kCnnNames) {
        INFO(c);
        CHECK(kern::max_abs_diff(named(*cnn, c).grad(), named(*graph, g).grad()) < 1e-12);
    }
    CHECK(kern::max_abs_diff(xc.grad(), xg.grad()) < 1e-12);
    // In f32 cnn runs its three convolutions as one fused op (conv_stack, a few images at a
    // time) and the graph as three conv2d ops: the same arithmetic up to the order of the sums.
    for (const auto& [c, g] : kCnnNames) {
        named(*cnn, c).mutable_value() = named(*cnn, c).value().to(DType::f32);
        named(*cnn, c).zero_grad();
        named(*graph, g).mutable_value() = named(*cnn, c).value().clone();
        named(*graph, g).zero_grad();
    }
    Tensor x32 = xv.to(DType::f32), r32 = r.to(DType::f32);
    Var y1 = (*cnn)(Var(x32), Var()), y2 = (*graph)(Var(x32), Var());
    CHECK(kern::max_abs_diff(y1.value(), y2.value()) < 1e-5);
    sum_all(y1 * Var(r32)).backward();
    sum_all(y2 * Var(r32)).backward();
    for (const auto& [c, g] : kCnnNames) {
        INFO(c);
        CHECK(kern::max_abs_diff(named(*cnn, c).grad(), named(*graph, g).grad()) < 1e-4);
    }
}

TEST_CASE("a W3-sized conv2d graph plans cnn's layouts and fusions", "[image][graph]") {
    Rng rng(1);
    Network net(Params::parse(kCnnGraph, "exp.json").with("nodes", R"([
        {"name": "c1", "type": "conv2d", "inputs": ["x"], "out": 128, "kernel": 3},
        {"name": "a1", "type": "relu", "inputs": ["c1"]},
        {"name": "c2", "type": "conv2d", "inputs": ["a1"], "out": 128, "kernel": 1},
        {"name": "a2", "type": "relu", "inputs": ["c2"]},
        {"name": "o", "type": "conv2d", "inputs": ["a2"], "out": "auto", "kernel": 3}])"),
                {{"x", {2, 14, 14}}}, 4 * 14 * 14, true, reg(), rng);
    CHECK(net.schedule() == std::vector<std::string>{"c1 = conv2d+relu(x) [nhwc]", "c2 = conv2d+relu(c1) [nhwc]",
                                                     "o = conv2d(c2)"});
    CHECK(net.num_parameters() == 2 * 128 * 9 + 128 + 128 * 128 + 128 + 128 * 4 * 9 + 4);
    CHECK(net.output_shape() == Shape{4, 14, 14});
}

TEST_CASE("conv2d's errors name the node and say what to do", "[image][graph]") {
    const ConditionerSpec spec{{2, 4, 4}, {4, 4, 4}, {}, true};
    const std::string even = error_of<ConfigError>([&] {
        make(R"({"type": "graph", "nodes": [{"name": "o", "type": "conv2d", "inputs": ["x"], "out": "auto",
                 "kernel": 2}], "output": "o"})",
             spec, 1);
    });
    CHECK(even == "exp.json:/nodes/0/kernel: the kernel size must be odd, so that padding keeps the size; got 2");
    const std::string vec = error_of<ConfigError>([&] {
        make(R"({"type": "graph", "nodes": [{"name": "f", "type": "flatten", "inputs": ["x"]},
                 {"name": "o", "type": "conv2d", "inputs": ["f"], "out": 2}], "output": "o"})",
             spec, 1);
    });
    CHECK(vec.rfind("exp.json:/nodes/1: node 'o' cannot take its inputs (f [32]): conv2d needs an image [C, H, W]", 0) ==
          0);
}

namespace {

// Median seconds of one forward and backward of each conditioner, the two interleaved call by
// call so that the machine's drifts hit both alike.
std::pair<double, double> interleaved_medians(Conditioner& a, Conditioner& b, const Tensor& x, int reps) {
    std::vector<double> ta, tb;
    auto once = [&](Conditioner& c) {
        const auto t0 = std::chrono::steady_clock::now();
        Var y = c(Var(x), Var());
        sum_all(y).backward();
        for (auto& p : c.named_parameters()) p.var.zero_grad();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    for (int i = 0; i < 3; ++i) once(a), once(b);
    for (int i = 0; i < reps; ++i) {
        ta.push_back(once(a));
        tb.push_back(once(b));
    }
    std::sort(ta.begin(), ta.end());
    std::sort(tb.begin(), tb.end());
    return {ta[ta.size() / 2], tb[tb.size() / 2]};
}

}  // namespace

// Hidden (run with "[graph-bench]"): a timing, not a check of correctness.
TEST_CASE("graph conditioners cost what the built-in mlp and cnn cost at W1 and W3 sizes", "[.][graph-bench]") {
    const ConditionerSpec w1{{1}, {2}, {}, false};
    auto mlp = make(R"({"type": "mlp", "hidden": [128, 128]})", w1, 1);
    auto mlp_graph = make(R"({"type": "graph", "nodes": [
        {"name": "h1", "type": "linear", "inputs": ["x"], "out": 128},
        {"name": "a1", "type": "relu", "inputs": ["h1"]},
        {"name": "h2", "type": "linear", "inputs": ["a1"], "out": 128},
        {"name": "a2", "type": "relu", "inputs": ["h2"]},
        {"name": "o", "type": "linear", "inputs": ["a2"], "out": "auto"}], "output": "o"})",
                          w1, 1);
    auto [tm, tg] = interleaved_medians(*mlp, *mlp_graph, randn({512, 1}, 1, DType::f32), 2000);
    WARN("W1 conditioner fwd+bwd: mlp " << tm * 1e6 << " us, graph " << tg * 1e6 << " us, graph/mlp " << tg / tm);
    const ConditionerSpec w3{{2, 14, 14}, {4, 14, 14}, {}, false};
    auto cnn = make(R"({"type": "cnn", "hidden": 128})", w3, 1);
    auto cnn_graph = make(R"({"type": "graph", "nodes": [
        {"name": "c1", "type": "conv2d", "inputs": ["x"], "out": 128, "kernel": 3},
        {"name": "a1", "type": "relu", "inputs": ["c1"]},
        {"name": "c2", "type": "conv2d", "inputs": ["a1"], "out": 128, "kernel": 1},
        {"name": "a2", "type": "relu", "inputs": ["c2"]},
        {"name": "o", "type": "conv2d", "inputs": ["a2"], "out": "auto", "kernel": 3}], "output": "o"})",
                          w3, 1);
    REQUIRE(cnn_graph->num_parameters() == cnn->num_parameters());
    auto [tc, tcg] = interleaved_medians(*cnn, *cnn_graph, randn({64, 2, 14, 14}, 2, DType::f32), 200);
    WARN("W3 conditioner fwd+bwd: cnn " << tc * 1e6 << " us, graph " << tcg * 1e6 << " us, graph/cnn " << tcg / tc);
}
