// Network (network.hpp): building a graph of ops from JSON, its checks (each error names the
// JSON pointer at fault and ends with a hint), fusion and layouts, zero-initialisation, the
// library of named networks with its shared instances, and Module's one listing of what several
// parents share. The ops come from the shipped plugins, loaded as every run loads them.
#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include <flowlab/conv.hpp>
#include <flowlab/errors.hpp>
#include <flowlab/gradcheck.hpp>
#include <flowlab/network.hpp>
#include <flowlab/ops.hpp>

#include "test_support.hpp"

using namespace flowlab;
using namespace flowlab::test;

namespace {

const Registry& ops() { return standard_and_image_registry(); }

Params def(const std::string& json) { return Params::parse(json, "net.json"); }

std::unique_ptr<Network> build(const std::string& json, std::vector<NetworkInput> inputs, std::int64_t out = 0,
                               bool zero = false, std::uint64_t seed = 1, const Registry* reg = nullptr) {
    Rng rng(seed);
    return std::make_unique<Network>(def(json), std::move(inputs), out, zero, reg ? *reg : ops(), rng);
}

// The ConfigError that building `json` throws (a test failure when it builds).
std::string build_error(const std::string& json, std::vector<NetworkInput> inputs = {{"x", {4}}},
                        std::int64_t out = 0) {
    return error_of<ConfigError>([&] { build(json, std::move(inputs), out); });
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Every parameter to f64, plus some noise so that zero-initialised ones take part.
void to_f64(Module& m, double noise, std::uint64_t seed) {
    Rng rng(seed);
    for (auto& p : m.named_parameters()) {
        Tensor v = p.var.value().to(DType::f64).clone();
        for (std::int64_t i = 0; i < v.numel(); ++i) v.set_item(i, v.item(i) + noise * rng.normal());
        p.var.mutable_value() = v;
    }
}

Var param(const Module& m, const std::string& name) {
    for (const auto& p : m.named_parameters())
        if (p.name == name) return p.var;
    FAIL("no parameter " << name);
    return Var();
}

const char* kMlpLike = R"({"nodes": [
    {"name": "h1", "type": "linear", "inputs": ["x"], "out": 16},
    {"name": "a1", "type": "relu", "inputs": ["h1"]},
    {"name": "h2", "type": "linear", "inputs": ["a1"], "out": 16},
    {"name": "a2", "type": "relu", "inputs": ["h2"]},
    {"name": "o", "type": "linear", "inputs": ["a2"], "out": "auto"}], "output": "o"})";

const char* kCnnLike = R"({"nodes": [
    {"name": "c1", "type": "conv2d", "inputs": ["x"], "out": 8, "kernel": 3},
    {"name": "a1", "type": "relu", "inputs": ["c1"]},
    {"name": "c2", "type": "conv2d", "inputs": ["a1"], "out": 8, "kernel": 1},
    {"name": "a2", "type": "relu", "inputs": ["c2"]},
    {"name": "o", "type": "conv2d", "inputs": ["a2"], "out": "auto", "kernel": 3}], "output": "o"})";

// An op of a test plugin: y = x * s + 1 per feature, which takes a following relu itself, to show
// that the executor's fusion is the ops' to accept, not a list of known ops.
class ScaleOp final : public Op {
public:
    explicit ScaleOp(const OpSpec& s) {
        set_output_shape(s.inputs[0]);
        scale_ = add_parameter("scale", Tensor::full(s.inputs[0], s.zero_init ? 0.0 : 2.0));
    }
    Var operator()(const std::vector<Var>& in) override {
        ++calls;
        Var y = in[0] * scale_ + 1.0;
        return relu_ ? relu(y) : y;
    }
    bool absorb_activation(const std::string& act) override {
        if (act != "relu") return false;
        relu_ = true;
        return true;
    }
    int calls = 0;

private:
    Var scale_;
    bool relu_ = false;
};

const Registry& ops_with_scale() {
    static Registry* reg = [] {
        Registry* r = registry_of({"standard"});
        Registry staged;
        staged.set_origin("test_network.cpp");
        staged.add_op({"scale", "y = x * s + 1", {}, [](const Params& p, const OpSpec& s, Rng&) -> std::unique_ptr<Op> {
                           expect_inputs(p, s, 1, 1);
                           return std::make_unique<ScaleOp>(s);
                       }});
        r->merge(std::move(staged));
        return r;
    }();
    return *reg;
}

}  // namespace

TEST_CASE("a network runs its nodes in dependency order whatever order they are listed in", "[network]") {
    auto in_order = build(kMlpLike, {{"x", {4}}}, 6);
    auto shuffled = build(R"({"nodes": [
        {"name": "o", "type": "linear", "inputs": ["a2"], "out": "auto"},
        {"name": "a2", "type": "relu", "inputs": ["h2"]},
        {"name": "h1", "type": "linear", "inputs": ["x"], "out": 16},
        {"name": "h2", "type": "linear", "inputs": ["a1"], "out": 16},
        {"name": "a1", "type": "relu", "inputs": ["h1"]}], "output": "o"})",
                          {{"x", {4}}}, 6);
    CHECK(in_order->output_shape() == Shape{6});
    // A chain has one order, and the parameters are drawn in it: both draw the same values.
    Tensor x = randn({5, 4}, 2, DType::f32);
    Var y = (*in_order)({Var(x)});
    CHECK(y.shape() == Shape{5, 6});
    CHECK(kern::max_abs_diff(y.value(), (*shuffled)({Var(x)}).value()) == 0.0);
    const auto params = in_order->named_parameters();
    REQUIRE(params.size() == 6);
    CHECK(params[0].name == "h1.weight");
    CHECK(params[0].var.shape() == Shape{4, 16});
    CHECK(params[5].name == "o.bias");
    // An input of the same number of values per sample is reshaped.
    CHECK(kern::max_abs_diff((*in_order)({Var(x.reshape({5, 2, 2}))}).value(), y.value()) == 0.0);
    CHECK_THROWS_AS((*in_order)({Var(randn({5, 3}, 3, DType::f32))}), ShapeError);
    CHECK_THROWS_AS((*in_order)({}), ShapeError);
}

TEST_CASE("a relu that alone reads a linear layer's output is fused into it", "[network]") {
    CHECK(build(kMlpLike, {{"x", {4}}}, 6)->schedule() ==
          std::vector<std::string>{"h1 = linear+relu(x)", "h2 = linear+relu(h1)", "o = linear(h2)"});
    // A relu whose input something else reads too stays apart: that reader needs the value before it.
    CHECK(build(R"({"nodes": [
        {"name": "h", "type": "linear", "inputs": ["x"], "out": 4},
        {"name": "a", "type": "relu", "inputs": ["h"]},
        {"name": "r", "type": "add", "inputs": ["h", "a"]},
        {"name": "o", "type": "linear", "inputs": ["r"], "out": 2}], "output": "o"})",
                {{"x", {4}}})
              ->schedule() == std::vector<std::string>{"h = linear(x)", "a = relu(h)", "r = add(h, a)", "o = linear(r)"});
    // An activation the op does not take (tanh) stays a node of its own; a relu as the output is fused.
    CHECK(build(R"({"nodes": [
        {"name": "h", "type": "linear", "inputs": ["x"], "out": 4},
        {"name": "t", "type": "tanh", "inputs": ["h"]},
        {"name": "o", "type": "linear", "inputs": ["t"], "out": 4},
        {"name": "r", "type": "relu", "inputs": ["o"]}], "output": "r"})",
                {{"x", {4}}})
              ->schedule() == std::vector<std::string>{"h = linear(x)", "t = tanh(h)", "o = linear+relu(t)"});
}

TEST_CASE("a fused network computes the values and gradients of its ops one by one", "[network]") {
    auto net = build(kMlpLike, {{"x", {4}}}, 6);
    to_f64(*net, 0.1, 3);
    Tensor xv = randn({5, 4}, 4);
    Var x(xv, true);
    Var y = (*net)({x});
    auto lin = [&](const Var& h, const std::string& n) { return linear(h, param(*net, n + ".weight"), param(*net, n + ".bias")); };
    Var ref = lin(relu(lin(relu(lin(x, "h1")), "h2")), "o");
    CHECK(kern::max_abs_diff(y.value(), ref.value()) < 1e-13);
    Tensor r = randn({5, 6}, 5);
    sum_all(y * Var(r)).backward();
    std::vector<Tensor> g;
    for (const auto& p : net->named_parameters()) g.push_back(p.var.grad().clone());
    Tensor gx = x.grad().clone();
    for (auto& p : net->named_parameters()) p.var.zero_grad();
    x.zero_grad();
    sum_all(ref * Var(r)).backward();
    std::size_t i = 0;
    for (const auto& p : net->named_parameters()) CHECK(kern::max_abs_diff(p.var.grad(), g[i++]) < 1e-13);
    CHECK(kern::max_abs_diff(x.grad(), gx) < 1e-13);
}

TEST_CASE("convolutions keep their hidden activations channels-last with the relu fused in", "[network]") {
    auto net = build(kCnnLike, {{"x", {2, 5, 5}}}, 4 * 25);
    CHECK(net->output_shape() == Shape{4, 5, 5});
    CHECK(net->schedule() == std::vector<std::string>{"c1 = conv2d+relu(x) [nhwc]", "c2 = conv2d+relu(c1) [nhwc]",
                                                      "o = conv2d(c2)"});
    // An op that needs nchw (flatten) gets its input made in nchw, not moved.
    auto flat = build(R"({"nodes": [
        {"name": "c", "type": "conv2d", "inputs": ["x"], "out": 3},
        {"name": "f", "type": "flatten", "inputs": ["c"]},
        {"name": "o", "type": "linear", "inputs": ["f"], "out": "auto"}], "output": "o"})",
                      {{"x", {2, 4, 4}}}, 6);
    CHECK(flat->schedule() == std::vector<std::string>{"c = conv2d(x)", "f = flatten(c)", "o = linear(f)"});
    // A residual block: the sum of channels-last values is channels-last, x is moved to join it once.
    auto res = build(R"({"nodes": [
        {"name": "c1", "type": "conv2d", "inputs": ["x"], "out": 2},
        {"name": "a1", "type": "relu", "inputs": ["c1"]},
        {"name": "c2", "type": "conv2d", "inputs": ["a1"], "out": 2},
        {"name": "r", "type": "add", "inputs": ["c2", "x"]},
        {"name": "g", "type": "gate", "inputs": ["r"]},
        {"name": "o", "type": "conv2d", "inputs": ["g"], "out": "auto", "kernel": 1}], "output": "o"})",
                     {{"x", {2, 4, 4}}}, 3 * 16);
    CHECK(res->schedule() == std::vector<std::string>{"c1 = conv2d+relu(x) [nhwc]", "c2 = conv2d(c1) [nhwc]",
                                                      "x = to_nhwc(x)", "r = add(c2, x) [nhwc]", "g = gate(r) [nhwc]",
                                                      "o = conv2d(g)"});
}

TEST_CASE("layouts change where values live, not what they are", "[network]") {
    // The residual gated network above in f64 (the plain loops take any layout) against the same
    // computation in nchw throughout.
    auto net = build(R"({"nodes": [
        {"name": "c1", "type": "conv2d", "inputs": ["x"], "out": 4},
        {"name": "a1", "type": "relu", "inputs": ["c1"]},
        {"name": "c2", "type": "conv2d", "inputs": ["a1"], "out": 2},
        {"name": "r", "type": "add", "inputs": ["c2", "x"]},
        {"name": "k", "type": "concat", "inputs": ["r", "a1"]},
        {"name": "n", "type": "layer_norm", "inputs": ["k"]},
        {"name": "s", "type": "slice", "inputs": ["n"], "start": 1, "size": 4},
        {"name": "g", "type": "gate", "inputs": ["s"]},
        {"name": "o", "type": "conv2d", "inputs": ["g"], "out": "auto", "kernel": 1}], "output": "o"})",
                     {{"x", {2, 4, 3}}}, 3 * 12);
    to_f64(*net, 0.2, 6);
    Tensor xv = randn({3, 2, 4, 3}, 7);
    Var y = (*net)({Var(xv)});
    auto conv = [&](const Var& h, const std::string& n, std::int64_t pad) {
        return conv2d(h, param(*net, n + ".weight"), param(*net, n + ".bias"), 1, pad);
    };
    Var x(xv);
    Var a1 = relu(conv(x, "c1", 1));
    Var k = concat({conv(a1, "c2", 1) + x, a1}, 1);
    Var flat = reshape(k, {3, -1});
    Var centred = flat - mean(flat, 1, true);
    Var n = reshape(centred / sqrt(mean(square(centred), 1, true) + 1e-5), k.shape()) *
                reshape(param(*net, "n.gain"), {6, 1, 1}) +
            reshape(param(*net, "n.bias"), {6, 1, 1});
    Var s = slice(n, 1, 1, 4);
    Var ref = conv(slice(s, 1, 0, 2) * sigmoid(slice(s, 1, 2, 2)), "o", 0);
    REQUIRE(y.shape() == Shape{3, 3, 4, 3});
    CHECK(kern::max_abs_diff(y.value(), ref.value()) < 1e-12);
    // Gradients through the moves, against finite differences.
    auto res = gradcheck([&](const std::vector<Var>& v) { return (*net)({v[0]}); }, {xv});
    INFO(res.worst);
    CHECK(res.ok(1e-6));
    // And in f32, on oneDNN's kernels, with the hidden activations channels-last.
    auto f32 = build(kCnnLike, {{"x", {2, 6, 6}}}, 4 * 36);
    to_f64(*f32, 0.05, 8);
    std::vector<Var> w;
    for (auto& p : f32->named_parameters()) w.push_back(p.var);
    Tensor x64 = randn({2, 2, 6, 6}, 9);
    Tensor ref64 = (*f32)({Var(x64)}).value();
    for (auto& v : w) v.mutable_value() = v.value().to(DType::f32);
    CHECK(kern::max_abs_diff((*f32)({Var(x64.to(DType::f32))}).value().to(DType::f64), ref64) < 1e-4);
}

TEST_CASE("an op of another plugin takes part in fusion by accepting the activation", "[network]") {
    auto net = build(R"({"nodes": [
        {"name": "s", "type": "scale", "inputs": ["x"]},
        {"name": "a", "type": "relu", "inputs": ["s"]},
        {"name": "o", "type": "linear", "inputs": ["a"], "out": 2}], "output": "o"})",
                     {{"x", {3}}}, 0, false, 1, &ops_with_scale());
    CHECK(net->schedule() == std::vector<std::string>{"s = scale+relu(x)", "o = linear(s)"});
    Tensor x = Tensor::from_vector({1, 3}, {-1.0, 0.0, 1.0});
    NoGradGuard ng;
    (*net)({Var(x)});
}

TEST_CASE("the output node starts at zero when asked, or the nearest node with parameters before it", "[network]") {
    Tensor x = randn({3, 4}, 10, DType::f32);
    auto zero = build(kMlpLike, {{"x", {4}}}, 6, true);
    CHECK(kern::sq_norm((*zero)({Var(x)}).value()) == 0.0);
    CHECK(kern::sq_norm(param(*zero, "h2.weight").value()) > 0.0);
    // The rng draws nothing for a zeroed output node: the hidden layers match the non-zeroed ones.
    auto drawn = build(kMlpLike, {{"x", {4}}}, 6, false);
    CHECK(kern::max_abs_diff(param(*zero, "h2.weight").value(), param(*drawn, "h2.weight").value()) == 0.0);
    // A gate has no parameters: the linear before it starts at zero, and so does the output.
    auto gated = build(R"({"nodes": [
        {"name": "h", "type": "linear", "inputs": ["x"], "out": 8},
        {"name": "a", "type": "elu", "inputs": ["h"]},
        {"name": "v", "type": "linear", "inputs": ["a"], "out": 12},
        {"name": "o", "type": "gate", "inputs": ["v"]}], "output": "o"})",
                       {{"x", {4}}}, 6, true);
    CHECK(kern::sq_norm((*gated)({Var(x)}).value()) == 0.0);
    CHECK(kern::sq_norm(param(*gated, "v.weight").value()) == 0.0);
    CHECK(kern::sq_norm(param(*gated, "h.weight").value()) > 0.0);
}

TEST_CASE("a parameterless output with no chain to zero is an error when the network must start at zero",
          "[network]") {
    const std::string e = error_of<ConfigError>([] {
        build(R"({"nodes": [
            {"name": "h", "type": "linear", "inputs": ["x"], "out": 4},
            {"name": "o", "type": "add", "inputs": ["h", "x"]}], "output": "o"})",
              {{"x", {4}}}, 4, true);
    });
    CHECK(starts_with(e, "net.json:/nodes/1: the output node 'o' has no parameters"));
    CHECK(contains(e, "end the network with a linear or conv2d node"));
}

TEST_CASE("every build error names the JSON pointer at fault and ends with a hint", "[network]") {
    SECTION("an unknown op, with a did-you-mean") {
        const std::string e = build_error(R"({"nodes": [{"name": "h", "type": "lineer", "inputs": ["x"], "out": 2}],
                                              "output": "h"})");
        CHECK(starts_with(e, "net.json:/nodes/0/type: unknown op 'lineer'; did you mean 'linear'?"));
        CHECK(contains(e, "(known: add, "));  // the registered ops, sorted
        for (const char* op : {"concat", "conv2d", "elu", "flatten", "gate", "linear"}) CHECK(contains(e, op));
        // The error's kind and name let the builder say which plugin provides an op.
        UnknownTypeError u = [] {
            try {
                build(R"({"nodes": [{"name": "h", "type": "conv3d", "inputs": ["x"]}], "output": "h"})", {{"x", {4}}});
            } catch (const UnknownTypeError& e) {
                return e;
            }
            return UnknownTypeError("", "", "");
        }();
        CHECK(u.kind() == "op");
        CHECK(u.name() == "conv3d");
    }
    SECTION("an op's unknown parameter") {
        const std::string e = build_error(R"({"nodes": [{"name": "h", "type": "linear", "inputs": ["x"], "outs": 2}],
                                              "output": "h"})");
        CHECK(starts_with(e, "net.json:/nodes/0/outs: unknown parameter 'outs' for op 'linear'; did you mean 'out'?"));
    }
    SECTION("duplicate node names") {
        const std::string e = build_error(R"({"nodes": [
            {"name": "h", "type": "linear", "inputs": ["x"], "out": 2},
            {"name": "h", "type": "relu", "inputs": ["h"]}], "output": "h"})");
        CHECK(e == "net.json:/nodes/1/name: duplicate node name 'h' (node /nodes/0 has it too); node names must be unique");
        CHECK(starts_with(build_error(R"({"nodes": [{"name": "x", "type": "relu", "inputs": ["x"]}], "output": "x"})"),
                          "net.json:/nodes/0/name: duplicate name 'x': it is the network's input 'x'; rename the node"));
    }
    SECTION("an input that names nothing") {
        const std::string e = build_error(R"({"nodes": [
            {"name": "h1", "type": "linear", "inputs": ["x"], "out": 2},
            {"name": "o", "type": "relu", "inputs": ["h2"]}], "output": "o"})");
        CHECK(e == "net.json:/nodes/1/inputs/0: node 'o' reads 'h2', which names no node and no network input; "
                   "did you mean 'h1'? (network inputs: x; nodes: h1, o)");
        CHECK(starts_with(build_error(R"({"nodes": [{"name": "o", "type": "relu", "inputs": ["context"]}],
                                          "output": "o"})"),
                          "net.json:/nodes/0/inputs/0: node 'o' reads 'context', but this network has no context input"));
    }
    SECTION("a cycle, naming its nodes") {
        const std::string e = build_error(R"({"nodes": [
            {"name": "h", "type": "linear", "inputs": ["x"], "out": 2},
            {"name": "a", "type": "add", "inputs": ["h", "c"]},
            {"name": "b", "type": "relu", "inputs": ["a"]},
            {"name": "c", "type": "tanh", "inputs": ["b"]},
            {"name": "o", "type": "relu", "inputs": ["c"]}], "output": "o"})");
        CHECK(e == "net.json:/nodes/1/inputs: the nodes 'a', 'c', 'b' form a cycle (a reads c, c reads b, b reads a); "
                   "a node cannot depend on its own result: break the cycle");
        CHECK(contains(build_error(R"({"nodes": [{"name": "o", "type": "relu", "inputs": ["o"]}], "output": "o"})"),
                       "the nodes 'o' form a cycle (o reads o)"));
    }
    SECTION("a node whose result never reaches the output") {
        const std::string e = build_error(R"({"nodes": [
            {"name": "h", "type": "linear", "inputs": ["x"], "out": 2},
            {"name": "u", "type": "tanh", "inputs": ["h"]},
            {"name": "o", "type": "relu", "inputs": ["h"]}], "output": "o"})");
        CHECK(e == "net.json:/nodes/1: node 'u' is unused: its result does not reach the output 'o' (nothing the "
                   "output depends on reads it); remove it, or feed it into a node that does");
    }
    SECTION("an input of the network that never reaches the output") {
        const std::string e = build_error(R"({"nodes": [{"name": "o", "type": "linear", "inputs": ["x"], "out": 2}],
                                              "output": "o"})",
                                          {{"x", {4}}, {"context", {3}}});
        CHECK(starts_with(e, "net.json:/nodes: the network never uses its input 'context'"));
        CHECK(contains(e, "read it, e.g. concat it with x"));
    }
    SECTION("shapes that do not fit") {
        const std::string add = build_error(R"({"nodes": [
            {"name": "a", "type": "linear", "inputs": ["x"], "out": 64},
            {"name": "b", "type": "linear", "inputs": ["x"], "out": 32},
            {"name": "r", "type": "add", "inputs": ["a", "b"]}], "output": "r"})");
        CHECK(add == "net.json:/nodes/2: node 'r' cannot take its inputs (a [64], b [32]): add needs inputs of one "
                     "shape, got [64] and [32]: make them agree (the \"out\" of the nodes that make them)");
        const std::string conv = build_error(R"({"nodes": [{"name": "c", "type": "conv2d", "inputs": ["x"], "out": 2}],
                                                 "output": "c"})");
        CHECK(starts_with(conv, "net.json:/nodes/0: node 'c' cannot take its inputs (x [4]): conv2d needs an image"));
        CHECK(contains(conv, "use linear on vectors"));
        const std::string lin = build_error(R"({"nodes": [{"name": "l", "type": "linear", "inputs": ["x"], "out": 2}],
                                                "output": "l"})",
                                            {{"x", {1, 2, 2}}});
        CHECK(contains(lin, "flatten it first"));
        CHECK(contains(build_error(R"({"nodes": [{"name": "g", "type": "gate", "inputs": ["x"]}], "output": "g"})",
                                   {{"x", {5}}}),
                       "give the node before it an even \"out\""));
        CHECK(starts_with(build_error(R"({"nodes": [{"name": "s", "type": "slice", "inputs": ["x"], "start": 3,
                                          "size": 2}], "output": "s"})"),
                          "net.json:/nodes/0: node 's' cannot take its inputs (x [4]): slice [3, 5) runs past"));
        CHECK(contains(build_error(R"({"nodes": [{"name": "k", "type": "concat", "inputs": ["x", "y"]}],
                                       "output": "k"})",
                                   {{"x", {2, 4, 4}}, {"y", {2, 3, 3}}}),
                       "make their sizes agree"));
    }
    SECTION("the wrong number of inputs") {
        CHECK(build_error(R"({"nodes": [{"name": "r", "type": "add", "inputs": ["x"]}], "output": "r"})") ==
              "net.json:/nodes/0/inputs: op 'add' takes at least 2 inputs, the node lists 1; fix its \"inputs\"");
        CHECK(build_error(R"({"nodes": [{"name": "r", "type": "relu", "inputs": ["x", "x"]}], "output": "r"})") ==
              "net.json:/nodes/0/inputs: op 'relu' takes 1 input, the node lists 2; fix its \"inputs\"");
    }
    SECTION("the output: missing, naming nothing, the wrong size, auto elsewhere") {
        CHECK(build_error(R"({"nodes": [{"name": "h", "type": "relu", "inputs": ["x"]}]})") ==
              "net.json:/: missing \"output\": the name of the node whose result the network returns (e.g. "
              "\"output\": \"h\")");
        CHECK(build_error(R"({"nodes": [{"name": "h1", "type": "relu", "inputs": ["x"]}], "output": "h2"})") ==
              "net.json:/output: output 'h2' names no node; did you mean 'h1'? (nodes: h1)");
        CHECK(build_error(R"({"nodes": [{"name": "h", "type": "linear", "inputs": ["x"], "out": 3}], "output": "h"})",
                          {{"x", {4}}}, 6) ==
              "net.json:/nodes/0: the network's output 'h' has 3 values per sample (shape [3]), where 6 are needed; "
              "set its \"out\" to \"auto\"");
        CHECK(build_error(R"({"nodes": [{"name": "h", "type": "linear", "inputs": ["x"], "out": "auto"},
                                        {"name": "o", "type": "relu", "inputs": ["h"]}], "output": "o"})",
                          {{"x", {4}}}, 6) ==
              "net.json:/nodes/0/out: \"auto\" sizes only the network's output node (to what the network must return, "
              "when its user fixes that); give this node a number");
        CHECK(build_error(R"({"nodes": [{"name": "c", "type": "conv2d", "inputs": ["x"], "out": "auto"}], "output": "c"})",
                          {{"x", {2, 3, 3}}}, 10)
                  .find("net.json:/nodes/0/out: \"auto\" does not fit") == 0);
        CHECK(starts_with(build_error(R"({"output": "h"})"), "net.json:/: missing \"nodes\""));
        CHECK(starts_with(build_error(R"({"nodes": [], "output": "h"})"), "net.json:/nodes: the network has no nodes"));
    }
    SECTION("malformed nodes") {
        CHECK(starts_with(build_error(R"({"nodes": [{"type": "relu", "inputs": ["x"]}], "output": "h"})"),
                          "net.json:/nodes/0: a node needs a \"name\""));
        CHECK(starts_with(build_error(R"({"nodes": [{"name": "a.b", "type": "relu", "inputs": ["x"]}], "output": "a.b"})"),
                          "net.json:/nodes/0/name: invalid node name 'a.b': use letters, digits"));
        CHECK(starts_with(build_error(R"({"nodes": [{"name": "h", "type": "relu"}], "output": "h"})"),
                          "net.json:/nodes/0: node 'h' has no \"inputs\": list what it reads"));
        CHECK(starts_with(build_error(R"({"nodes": [{"name": "h", "type": "relu", "inputs": "x"}], "output": "h"})"),
                          "net.json:/nodes/0/inputs: expected a list of names"));
        CHECK(starts_with(build_error(R"({"nodes": [{"name": "h", "inputs": ["x"]}], "output": "h"})"),
                          "net.json:/nodes/0: missing \"type\": which op to build"));
    }
}

TEST_CASE("a library of named networks checks its definitions and shares one instance on request", "[network]") {
    const Params models = Params::parse(R"({"networks": {
        "mlp2": {"nodes": [{"name": "h", "type": "linear", "inputs": ["x"], "out": 8},
                           {"name": "a", "type": "relu", "inputs": ["h"]},
                           {"name": "o", "type": "linear", "inputs": ["a"], "out": "auto"}], "output": "o"},
        "other": {"nodes": [{"name": "o", "type": "linear", "inputs": ["x"], "out": "auto"}], "output": "o"}}})",
                                        "exp.json");
    NetworkLibrary lib(models.get_object("networks"));
    CHECK(lib.names() == std::vector<std::string>{"mlp2", "other"});
    CHECK(error_of<ConfigError>([&] { lib.definition("mlp", "exp.json:/model/layers/0/conditioner/network"); }) ==
          "exp.json:/model/layers/0/conditioner/network: unknown network 'mlp'; did you mean 'mlp2'? "
          "(model.networks defines: mlp2, other)");
    CHECK(contains(error_of<ConfigError>([] { NetworkLibrary().definition("a", "w"); }),
                   "the model defines no networks; define it in"));

    Rng rng(3);
    auto a = lib.shared("mlp2", "L0", {{"x", {2}}}, 4, true, ops(), rng);
    const std::uint64_t drawn = rng.counter();
    auto b = lib.shared("mlp2", "L1", {{"x", {2}}}, 4, true, ops(), rng);
    CHECK(a == b);
    CHECK(rng.counter() == drawn);  // the second use draws nothing
    auto own = lib.build("mlp2", "L2", {{"x", {2}}}, 4, true, ops(), rng);
    CHECK(own != a);
    CHECK(error_of<ConfigError>([&] { lib.shared("mlp2", "L3", {{"x", {3}}}, 6, true, ops(), rng); }) ==
          "L3: network 'mlp2' is shared (\"share\": true), and its one instance was built at L0 for x [2] -> 4 values "
          "per sample; here it would need x [3] -> 6 values per sample: layers that share a network must agree on its "
          "shapes; give this layer its own copy with \"share\": false");

    // Definitions are checked when the library is made, pointing into the file.
    auto bad = [](const std::string& json) {
        return error_of<ConfigError>(
            [&] { NetworkLibrary(Params::parse(json, "exp.json").get_object("networks")); });
    };
    CHECK(starts_with(bad(R"({"networks": {"n": {"nodes": [], "outptu": "o"}}})"),
                      "exp.json:/networks/n/outptu: unknown parameter 'outptu' for network 'n'; did you mean 'output'?"));
    CHECK(starts_with(bad(R"({"networks": {"n": {"nodes": [{"name": "o", "type": "relu", "inputs": ["y"]}],
                                                 "output": "o"}}})"),
                      "exp.json:/networks/n/nodes/0/inputs/0: node 'o' reads 'y', which names no node"));
    CHECK(starts_with(bad(R"({"networks": {"n": {"nodes": [{"name": "o", "type": "relu", "inputs": ["x"]},
                                                           {"name": "u", "type": "relu", "inputs": ["x"]}],
                                                 "output": "o"}}})"),
                      "exp.json:/networks/n/nodes/1: node 'u' is unused"));
    CHECK(starts_with(bad(R"({"networks": {"a b": {"nodes": [], "output": "o"}}})"),
                      "exp.json:/networks/a b: invalid network name 'a b'"));
}

namespace {
// Two parents that hold one child, as two layers hold one shared network.
struct Holder : Module {
    Holder(Module* shared_child, Module* own_child) {
        add_child("net", shared_child);
        if (own_child) add_child("own", own_child);
    }
};
struct Pair : Module {
    Pair(Module* a, Module* b) {
        add_child("a", a);
        add_child("b", b);
    }
};
struct WithBuffer : Module {
    WithBuffer() {
        w = add_parameter("w", Tensor::zeros({3}));
        add_buffer("stats", Tensor::zeros({2}));
    }
    Var w;
};
}  // namespace

TEST_CASE("a module shared by several parents is listed once, under its first path", "[network][module]") {
    WithBuffer shared, own;
    Holder first(&shared, nullptr), second(&shared, &own);
    Pair root(&first, &second);
    const auto params = root.named_parameters();
    REQUIRE(params.size() == 2);
    CHECK(params[0].name == "a.net.w");
    CHECK(params[1].name == "b.own.w");
    CHECK(root.parameters().size() == 2);
    CHECK(root.num_parameters() == 6);
    const auto buffers = root.named_buffers();
    REQUIRE(buffers.size() == 2);
    CHECK(buffers[0].name == "a.net.stats");
    CHECK(buffers[1].name == "b.own.stats");
    // Each parent alone still lists it.
    CHECK(second.named_parameters().size() == 2);
    CHECK(second.named_parameters("layer")[0].name == "layer.net.w");
}
