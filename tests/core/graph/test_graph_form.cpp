// The graph form of a flow: named nodes over named tensors. A list config expands into it
// (same model, same parameter names); explicit graphs branch, merge, factor out named latents
// with their own bases, and share a context encoder; every mistake in a graph is a config error
// at the node's JSON pointer.
#include <catch2/catch.hpp>

#include <cmath>

#include <flowlab/builder.hpp>
#include <flowlab/config.hpp>
#include <flowlab/errors.hpp>

#include "test_support.hpp"

using namespace flowlab;
using namespace flowlab::test;

namespace {

std::unique_ptr<Flow> build(const std::string& model_json, const Shape& event, const Shape& context = {},
                            std::uint64_t seed = 7) {
    Rng rng(seed);
    return build_flow(Params::parse(model_json, "m.json"), event, context, shipped_plugins_registry(), rng);
}

// The model object of a config whose model is `model_json`, in the graph form.
std::string graph_form_of(const std::string& model_json) {
    const std::string cfg = R"({"flowlab": 1, "data": {"type": "moons"}, "model": )" + model_json + "}";
    const std::string text = config_in_graph_form(Params::parse(cfg, "c.json"));
    return Params::parse(text, "emitted.json").get_object("model").dump();
}

double max_diff(const Tensor& a, const Tensor& b) {
    double worst = 0;
    for (std::int64_t i = 0; i < a.numel(); ++i) worst = std::max(worst, std::abs(a.item(i) - b.item(i)));
    return worst;
}

void check_round_trip(Flow& flow, const Tensor& x, const Tensor& context = Tensor()) {
    const Var c = context.defined() ? Var(context) : Var();
    FlowResult z = flow.inverse(Var(x), c);
    FlowResult back = flow.forward(z.out, c);
    CHECK(max_diff(back.out.value(), x) < 1e-9);
    for (std::int64_t i = 0; i < x.size(0); ++i)
        CHECK(std::abs(z.log_det.value().item(i) + back.log_det.value().item(i)) < 1e-9);
}

// Glow at two levels with a learned split prior, in the list form.
const char* kGlowList = R"({"layers": [
    {"type": "squeeze"},
    {"repeat": 2, "layers": [{"type": "actnorm2d"}, {"type": "invconv1x1"},
                             {"type": "conv_affine_coupling", "conditioner": {"type": "cnn", "hidden": 8}}]},
    {"type": "split", "prior": {"type": "cnn", "hidden": 4}},
    {"type": "squeeze"},
    {"repeat": 2, "layers": [{"type": "actnorm2d"}, {"type": "invconv1x1"},
                             {"type": "conv_affine_coupling", "conditioner": {"type": "cnn", "hidden": 8}}]}]})";

}  // namespace

TEST_CASE("a list config and its emitted graph form are the same model, parameter names included", "[graph]") {
    const std::string graph = graph_form_of(kGlowList);
    CHECK(graph.find("\"layers.7.rest.0\"") != std::string::npos);  // the split's tail reads its kept part
    CHECK(graph.find("\"layers.7:0\"") != std::string::npos);
    auto list_flow = build(kGlowList, {2, 8, 8});
    auto graph_flow = build(graph, {2, 8, 8});
    const auto a = list_flow->named_parameters(), b = graph_flow->named_parameters();
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        CHECK(a[i].name == b[i].name);
        CHECK(max_diff(a[i].var.value(), b[i].var.value()) == 0.0);
    }
    CHECK(a.front().name.rfind("layers.1.", 0) == 0);
    const Tensor x = randn({4, 2, 8, 8}, 3, DType::f32);
    CHECK(max_diff(list_flow->log_prob(Var(x)).value(), graph_flow->log_prob(Var(x)).value()) == 0.0);
    // The emitted form emits itself.
    CHECK(graph_form_of(graph) == graph);
}

TEST_CASE("a list-form multi-scale flow round-trips and its latent is the factored parts then the rest", "[graph]") {
    auto flow = build(kGlowList, {2, 8, 8});
    const Tensor x = randn({3, 2, 8, 8}, 5);
    auto f64 = build(kGlowList, {2, 8, 8});
    perturb(*f64, 1, 0.05, DType::f64);
    check_round_trip(*f64, x);
    FlowResult z = f64->inverse(Var(x));
    CHECK(z.out.value().shape() == Shape{3, 128});
}

TEST_CASE("parallel branches on parts of the input merge again and stay one bijection", "[graph]") {
    const char* model = R"({"graph": {"nodes": [
        {"name": "parts", "type": "slice", "input": "x", "sizes": [2, 4]},
        {"name": "left", "type": "affine_coupling", "input": "parts:0", "conditioner": {"type": "mlp", "hidden": [8]}},
        {"name": "right", "type": "affine_coupling", "input": "parts:1", "conditioner": {"type": "mlp", "hidden": [8]}},
        {"name": "both", "type": "concat", "inputs": ["left", "right"]},
        {"name": "mix", "type": "reverse", "input": "both"}],
      "outputs": ["mix"]}})";
    auto flow = build(model, {6});
    perturb(*flow, 2, 0.3, DType::f64);
    const Tensor x = randn({5, 6}, 9);
    check_round_trip(*flow, x);
    // log|det| against the product of the two branches' own log-dets (the rest is volume-preserving).
    const auto& info = flow->layer_info();
    REQUIRE(info.size() == 5);
    CHECK(info[0].out_shapes == std::vector<Shape>{{2}, {4}});
    CHECK(info[3].in_shape == Shape{2});
    CHECK(info[3].out_shape == Shape{6});
}

TEST_CASE("named latents with their own bases: a prior that reads an earlier level, and sampling", "[graph]") {
    const char* model = R"({"graph": {"nodes": [
        {"name": "sq", "type": "squeeze", "input": "x"},
        {"name": "step", "type": "conv_affine_coupling", "input": "sq", "conditioner": {"type": "cnn", "hidden": 8}},
        {"name": "s", "type": "split", "input": "step"},
        {"name": "top", "type": "actnorm2d", "input": "s:0"}],
      "outputs": [{"tensor": "s:1", "base": {"type": "conditional_diag_gaussian"}, "given": "s:0"},
                  {"tensor": "top", "base": {"type": "standard_normal"}}]}})";
    auto flow = build(model, {1, 4, 4});
    perturb(*flow, 4, 0.2, DType::f64);
    const Tensor x = randn({3, 1, 4, 4}, 11);
    check_round_trip(*flow, x);
    CHECK(flow->base_num_parameters() > 0);
    const Tensor lp = flow->log_prob(Var(x)).value();
    for (std::int64_t i = 0; i < 3; ++i) CHECK(std::isfinite(lp.item(i)));
    // The log-prob is the two bases' terms plus the log-det: the conditional prior's term changes
    // with the kept part, so perturbing it moves the total.
    Rng rng(3);
    const Tensor s = build(model, {1, 4, 4})->sample(6, rng, 1.0);
    CHECK(s.shape() == Shape{6, 1, 4, 4});
    for (std::int64_t i = 0; i < s.numel(); ++i) CHECK(std::isfinite(s.item(i)));
}

TEST_CASE("one context encoder is shared by every layer that names it", "[graph]") {
    const char* model = R"({
      "graph": {"nodes": [
        {"name": "enc", "type": "network", "input": "context",
         "nodes": [{"name": "h", "type": "linear", "inputs": ["x"], "out": 6}, {"name": "a", "type": "tanh", "inputs": ["h"]}],
         "output": "a"},
        {"name": "c0", "type": "affine_coupling", "input": "x", "context": "enc", "conditioner": {"type": "mlp", "hidden": [8]}},
        {"name": "c1", "type": "affine_coupling", "input": "c0", "context": "enc", "parity": 1,
         "conditioner": {"type": "mlp", "hidden": [8]}}],
      "outputs": ["c1"]}})";
    auto flow = build(model, {4}, {3});
    perturb(*flow, 6, 0.3, DType::f64);
    const Tensor x = randn({5, 4}, 1), c = randn({5, 3}, 2);
    check_round_trip(*flow, x, c);
    int encoder_tensors = 0;
    for (const auto& p : flow->named_parameters())
        if (p.name.rfind("enc.", 0) == 0) ++encoder_tensors;
    CHECK(encoder_tensors == 2);  // one weight, one bias: one encoder, not one per layer
    // Both layers' gradients reach it.
    sum_all(flow->log_prob(Var(x), Var(c))).backward();
    for (const auto& p : flow->named_parameters())
        if (p.name.rfind("enc.", 0) == 0) CHECK(max_abs(p.var.grad()) > 0);
}

TEST_CASE("graph mistakes are config errors at the node's pointer, with a hint", "[graph]") {
    auto error = [](const std::string& nodes, const std::string& outputs, const Shape& event = {4},
                    const Shape& context = {}) {
        return error_of<ConfigError>(
            [&] { build(R"({"graph": {"nodes": )" + nodes + R"(, "outputs": )" + outputs + "}}", event, context); });
    };
    const std::string rev = R"({"name": "a", "type": "reverse", "input": "x"})";
    // A dangling input, with a did-you-mean.
    CHECK(error("[" + rev + R"(, {"name": "b", "type": "reverse", "input": "aa"}])", R"(["b"])")
              .rfind("m.json:/graph/nodes/1/input: no tensor 'aa'; did you mean 'a'?", 0) == 0);
    // A cycle.
    CHECK(error(R"([{"name": "a", "type": "reverse", "input": "b"}, {"name": "b", "type": "reverse", "input": "a"}])",
                R"(["b"])")
              .find("form a cycle") != std::string::npos);
    // A tensor read twice.
    CHECK(error("[" + rev + R"(, {"name": "b", "type": "reverse", "input": "a"}, {"name": "c", "type": "reverse", "input": "a"}])",
                R"(["b", "c"])")
              .rfind("m.json:/graph/nodes/2/input: tensor 'a' is already read by node 'b'", 0) == 0);
    // An unused output.
    CHECK(error(R"([{"name": "s", "type": "slice", "input": "x", "sizes": [2, 2]}])", R"(["s:0"])")
              .rfind("m.json:/graph/nodes/0: the output 's:1' of node 's' is neither read", 0) == 0);
    // A multi-output node read without its port.
    CHECK(error(R"([{"name": "s", "type": "split", "input": "x"}, {"name": "b", "type": "reverse", "input": "s"}])",
                R"(["b"])")
              .find("read one of them, s:0 to s:1") != std::string::npos);
    // Shapes that do not join.
    CHECK(error(R"([{"name": "s", "type": "slice", "input": "x", "sizes": [1, 3]},
                    {"name": "q", "type": "squeeze", "input": "s:0"}])",
                R"(["q", "s:1"])", {4, 3, 3})
              .rfind("m.json:/graph/nodes/1", 0) == 0);
    CHECK(error(R"([{"name": "s", "type": "slice", "input": "x", "sizes": [1, 2]}])", R"(["s:0", "s:1"])")
              .find("sum to 3 but the input [4] has 4") != std::string::npos);
    // Duplicate names, reserved names, an output that a node reads.
    CHECK(error("[" + rev + "," + rev + "]", R"(["a"])").rfind("m.json:/graph/nodes/1/name: the name 'a' is already", 0) ==
          0);
    CHECK(error(R"([{"name": "x", "type": "reverse", "input": "x"}])", R"(["x"])").find("names the flow's data") !=
          std::string::npos);
    CHECK(error("[" + rev + R"(, {"name": "b", "type": "reverse", "input": "a"}])", R"(["a", "b"])")
              .find("'a' is read by node 'b', so it is not a latent part") != std::string::npos);
    // The context is not data; a network does not read data.
    CHECK(error(R"([{"name": "a", "type": "reverse", "input": "context"}])", R"(["a"])", {4}, {2})
              .find("is a context tensor") != std::string::npos);
    CHECK(error(R"([{"name": "n", "type": "network", "input": "x", "nodes": [{"name": "h", "type": "linear", "inputs": ["x"], "out": 2}], "output": "h"},
                    {"name": "a", "type": "reverse", "input": "x"}])",
                R"(["a"])")
              .find("a network node encodes the context") != std::string::npos);
    // Both forms at once, or neither.
    CHECK(error_of<ConfigError>([&] {
              build(R"({"layers": [], "graph": {"nodes": [], "outputs": ["x"]}})", {4});
          }).find("not both") != std::string::npos);
}

TEST_CASE("a base conditioned on a tensor that sampling only knows later is refused at build time", "[graph]") {
    const char* model = R"({"graph": {"nodes": [
        {"name": "s", "type": "split", "input": "x"},
        {"name": "a", "type": "affine_coupling", "input": "s:0"}],
      "outputs": [{"tensor": "a", "base": {"type": "conditional_diag_gaussian"}, "given": "s:0"},
                  {"tensor": "s:1", "base": {"type": "standard_normal"}}]}})";
    // s:0 is what 'a' came from: sampling knows it only after inverting 'a', which needs 'a' drawn.
    CHECK(error_of<ConfigError>([&] { build(model, {4}); }).find("sampling cannot draw 'a' given 's:0'") !=
          std::string::npos);
}

TEST_CASE("the shipped explicit-graph Glow and the list-form Glow are the same model on the same weights", "[graph]") {
    auto model_of = [](const char* file) {
        return load_experiment(std::string(FLOWLAB_SOURCE_DIR) + "/configs/" + file).get_object("model");
    };
    Rng r1(0), r2(0);
    auto list = build_flow(model_of("fmnist_glow.json"), {1, 28, 28}, {}, shipped_plugins_registry(), r1);
    auto graph = build_flow(model_of("fmnist_glow_graph.json"), {1, 28, 28}, {}, shipped_plugins_registry(), r2);
    // The graph's nodes are written in the list's order, so even the initial weights agree; the
    // weights are copied anyway (by position: the names differ), after moving them off their
    // initialisation so that no layer is the identity.
    perturb(*list, 8, 0.02, DType::f32);
    const auto a = list->named_parameters();
    auto b = graph->named_parameters();
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        REQUIRE(a[i].var.value().shape() == b[i].var.value().shape());
        b[i].var.mutable_value().copy_from(a[i].var.value());
    }
    CHECK(list->layer_info().size() == graph->layer_info().size());
    Tensor x = randn({4, 1, 28, 28}, 12, DType::f32, 0.25);
    const Tensor lp_list = list->log_prob(Var(x)).value(), lp_graph = graph->log_prob(Var(x)).value();
    CHECK(max_diff(lp_list, lp_graph) == 0.0);
    CHECK(std::isfinite(lp_list.item(0)));
}

TEST_CASE("the quickstart with its conditioners written as JSON graphs is the same flow", "[graph]") {
    const std::string mlp = R"({"type": "mlp", "hidden": [128, 128], "activation": "relu"})";
    const std::string graph = R"({"type": "graph", "nodes": [
        {"name": "linear0", "type": "linear", "inputs": ["x"], "out": 128},
        {"name": "relu0", "type": "relu", "inputs": ["linear0"]},
        {"name": "linear1", "type": "linear", "inputs": ["relu0"], "out": 128},
        {"name": "relu1", "type": "relu", "inputs": ["linear1"]},
        {"name": "linear2", "type": "linear", "inputs": ["relu1"], "out": "auto"}], "output": "linear2"})";
    auto model = [](const std::string& conditioner) {
        return R"({"layers": [{"repeat": 4, "layers": [
            {"type": "affine_coupling", "mask": "alternate", "parity": 0, "scale_clamp": 1.0, "conditioner": )" +
               conditioner + R"(},
            {"type": "affine_coupling", "mask": "alternate", "parity": 1, "scale_clamp": 1.0, "conditioner": )" +
               conditioner + "}]}]}";
    };
    // Same seed, same draws: the graph's linear ops initialise as mlp's layers do.
    auto a = build(model(mlp), {2}, {}, 4), b = build(model(graph), {2}, {}, 4);
    perturb(*a, 3, 0.05, DType::f32);
    perturb(*b, 3, 0.05, DType::f32);
    const auto pa = a->named_parameters(), pb = b->named_parameters();
    REQUIRE(pa.size() == pb.size());
    for (std::size_t i = 0; i < pa.size(); ++i) CHECK(max_diff(pa[i].var.value(), pb[i].var.value()) == 0.0);
    const Tensor x = randn({64, 2}, 21, DType::f32);
    CHECK(max_diff(a->log_prob(Var(x)).value(), b->log_prob(Var(x)).value()) < 1e-6);
}
