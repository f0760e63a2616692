// The `graph` conditioner and the standard plugin's ops: a graph equal to `mlp` is `mlp` (same
// draws, same values, same gradients), named networks with and without shared parameters,
// ResNet-style and gated networks, and the ops' gradients.
#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include <flowlab/errors.hpp>
#include <flowlab/gradcheck.hpp>
#include <flowlab/network.hpp>
#include <flowlab/ops.hpp>

#include "test_support.hpp"

using namespace flowlab;
using namespace flowlab::test;

namespace {

const Registry& reg() { return standard_and_image_registry(); }

std::unique_ptr<Conditioner> make(const std::string& json, ConditionerSpec spec, std::uint64_t seed,
                                  NetworkLibrary* lib = nullptr) {
    Rng rng(seed);
    spec.networks = lib;
    return reg().make_conditioner(Params::parse(json, "exp.json"), spec, rng);
}

std::string make_error(const std::string& json, ConditionerSpec spec, NetworkLibrary* lib = nullptr) {
    return error_of<ConfigError>([&] { make(json, std::move(spec), 1, lib); });
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// The graph of mlp {"hidden": [16, 16]} with a context: concat, then Linear-ReLU twice, then Linear.
const char* kMlpGraph = R"({"type": "graph", "nodes": [
    {"name": "in", "type": "concat", "inputs": ["x", "context"]},
    {"name": "h1", "type": "linear", "inputs": ["in"], "out": 16},
    {"name": "a1", "type": "relu", "inputs": ["h1"]},
    {"name": "h2", "type": "linear", "inputs": ["a1"], "out": 16},
    {"name": "a2", "type": "relu", "inputs": ["h2"]},
    {"name": "o", "type": "linear", "inputs": ["a2"], "out": "auto"}], "output": "o"})";

// Parameters of the graph by mlp's names.
const std::vector<std::pair<std::string, std::string>> kMlpNames = {
    {"linear0.weight", "net.h1.weight"}, {"linear0.bias", "net.h1.bias"}, {"linear1.weight", "net.h2.weight"},
    {"linear1.bias", "net.h2.bias"},     {"linear2.weight", "net.o.weight"}, {"linear2.bias", "net.o.bias"}};

Var named(const Module& m, const std::string& name) {
    for (const auto& p : m.named_parameters())
        if (p.name == name) return p.var;
    FAIL("no parameter " << name);
    return Var();
}

// Two conditioners as children of one module, as two layers of a flow hold theirs.
struct TwoLayers : Module {
    TwoLayers(Conditioner& a, Conditioner& b) {
        add_child("layers.0.conditioner", &a);
        add_child("layers.1.conditioner", &b);
    }
};

}  // namespace

TEST_CASE("a graph equal to mlp draws, computes and differentiates exactly as mlp", "[graph]") {
    const ConditionerSpec spec{{3}, {4}, {2}, true};
    auto mlp = make(R"({"type": "mlp", "hidden": [16, 16]})", spec, 7);
    auto graph = make(kMlpGraph, spec, 7);
    REQUIRE(graph->named_parameters().size() == kMlpNames.size());
    // The same draws from the same seed: the parameters start equal without copying.
    for (const auto& [m, g] : kMlpNames) {
        INFO(m);
        CHECK(named(*graph, g).shape() == named(*mlp, m).shape());
        CHECK(kern::max_abs_diff(named(*graph, g).value(), named(*mlp, m).value()) == 0.0);
    }
    // Then the same (perturbed, f64) weights copied over, and the outputs and gradients compared.
    perturb(*mlp, 11, 0.2, DType::f64);
    for (const auto& [m, g] : kMlpNames) named(*graph, g).mutable_value() = named(*mlp, m).value().clone();
    Tensor xv = randn({6, 3}, 12), cv = randn({6, 2}, 13), r = randn({6, 4}, 14);
    Var xm(xv, true), cm(cv, true), xg(xv, true), cg(cv, true);
    Var ym = (*mlp)(xm, cm), yg = (*graph)(xg, cg);
    REQUIRE(yg.shape() == Shape{6, 4});
    CHECK(kern::max_abs_diff(ym.value(), yg.value()) < 1e-14);
    sum_all(ym * Var(r)).backward();
    sum_all(yg * Var(r)).backward();
    for (const auto& [m, g] : kMlpNames) {
        INFO(m);
        CHECK(kern::max_abs_diff(named(*mlp, m).grad(), named(*graph, g).grad()) < 1e-13);
    }
    CHECK(kern::max_abs_diff(xm.grad(), xg.grad()) < 1e-13);
    CHECK(kern::max_abs_diff(cm.grad(), cg.grad()) < 1e-13);
    // In f32 the same ops run (linear_relu, linear): the same bits.
    for (const auto& [m, g] : kMlpNames) {
        named(*mlp, m).mutable_value() = named(*mlp, m).value().to(DType::f32);
        named(*graph, g).mutable_value() = named(*mlp, m).value().clone();
    }
    Tensor x32 = xv.to(DType::f32), c32 = cv.to(DType::f32);
    CHECK(kern::max_abs_diff((*mlp)(Var(x32), Var(c32)).value(), (*graph)(Var(x32), Var(c32)).value()) == 0.0);
}

TEST_CASE("the graph conditioner starts at zero and reshapes its output to the layer's shape", "[graph]") {
    auto net = make(R"({"type": "graph", "nodes": [
        {"name": "f", "type": "flatten", "inputs": ["x"]},
        {"name": "h", "type": "linear", "inputs": ["f"], "out": 8},
        {"name": "o", "type": "linear", "inputs": ["h"], "out": "auto"}], "output": "o"})",
                    ConditionerSpec{{2, 2, 2}, {3, 2, 2}, {}, true}, 1);
    Var y = (*net)(Var(randn({5, 2, 2, 2}, 2, DType::f32)), Var());
    CHECK(y.shape() == Shape{5, 3, 2, 2});
    CHECK(kern::sq_norm(y.value()) == 0.0);
    CHECK(net->num_parameters() == 8 * 8 + 8 + 8 * 12 + 12);
    // Without the spec's registry the registry fills in itself.
    ConditionerSpec no_reg{{4}, {2}, {}, true};
    CHECK(no_reg.registry == nullptr);
    CHECK_NOTHROW(make(R"({"type": "graph", "nodes": [{"name": "o", "type": "linear", "inputs": ["x"], "out": "auto"}],
                          "output": "o"})",
                       no_reg, 1));
}

TEST_CASE("a named network with share = true is one instance with one set of parameters", "[graph]") {
    NetworkLibrary lib(Params::parse(R"({"trunk": {"nodes": [
        {"name": "h", "type": "linear", "inputs": ["x"], "out": 8},
        {"name": "a", "type": "relu", "inputs": ["h"]},
        {"name": "o", "type": "linear", "inputs": ["a"], "out": "auto"}], "output": "o"}})",
                                     "exp.json"));
    const ConditionerSpec spec{{2}, {4}, {}, false};
    const char* shared = R"({"type": "graph", "network": "trunk", "share": true})";
    auto a = make(shared, spec, 1, &lib);
    auto b = make(shared, spec, 2, &lib);
    auto own = make(R"({"type": "graph", "network": "trunk"})", spec, 3, &lib);
    TwoLayers flow(*a, *b);
    const auto params = flow.named_parameters();
    REQUIRE(params.size() == 4);
    CHECK(params[0].name == "layers.0.conditioner.net.h.weight");
    CHECK(flow.num_parameters() == 2 * 8 + 8 + 8 * 4 + 4);
    CHECK(named(*b, "net.h.weight").node() == named(*a, "net.h.weight").node());
    // share = false: parameters of its own, drawn from its rng.
    CHECK(named(*own, "net.h.weight").node() != named(*a, "net.h.weight").node());
    CHECK(kern::max_abs_diff(named(*own, "net.h.weight").value(), named(*a, "net.h.weight").value()) > 0.0);

    // Both layers' gradients reach the one parameter, and the optimizer updates it once.
    Tensor x1 = randn({3, 2}, 4, DType::f32), x2 = randn({3, 2}, 5, DType::f32);
    Var loss = sum_all(square((*a)(Var(x1), Var()))) + sum_all(square((*b)(Var(x2), Var())));
    loss.backward();
    auto opt = reg().make_optimizer(Params::parse(R"({"type": "sgd", "lr": 0.5})"), flow.named_parameters());
    REQUIRE(opt->params().size() == 4);
    Var w = named(*a, "net.o.weight");
    const Tensor before = w.value().clone(), grad = w.grad().clone();
    REQUIRE(kern::sq_norm(grad) > 0.0);
    opt->step(0.5);
    Tensor expected = before.clone();
    kern::axpy_inplace(expected, -0.5, grad);
    CHECK(kern::max_abs_diff(w.value(), expected) < 1e-7);

    // Layers that share must agree on the shapes.
    const std::string e = make_error(shared, ConditionerSpec{{3}, {6}, {}, false}, &lib);
    CHECK(e.rfind("exp.json:/network: network 'trunk' is shared (\"share\": true), and its one instance was built at "
                  "exp.json:/network for x [2] -> 4 values per sample; here it would need x [3] -> 6",
                  0) == 0);
}

TEST_CASE("the graph conditioner's own errors point into the config", "[graph]") {
    const ConditionerSpec spec{{2}, {4}, {}, true};
    NetworkLibrary lib(Params::parse(R"({"trunk": {"nodes": [{"name": "o", "type": "linear", "inputs": ["x"],
                                                              "out": "auto"}], "output": "o"}})"));
    CHECK(make_error(R"({"type": "graph", "network": "trunk", "output": "o"})", spec, &lib) ==
          "exp.json:/network: give either \"network\" (the name of a definition in model.networks) or \"nodes\" and "
          "\"output\", not both");
    CHECK(make_error(R"({"type": "graph", "nodes": [{"name": "o", "type": "linear", "inputs": ["x"], "out": "auto"}],
                         "output": "o", "share": true})",
                     spec)
              .rfind("exp.json:/share: \"share\" applies to a named network", 0) == 0);
    CHECK(make_error(R"({"type": "graph", "network": "trunk"})", spec) ==
          "exp.json:/network: refers to network 'trunk', but the model defines no networks; define it in \"model\": "
          "{\"networks\": {\"trunk\": {\"nodes\": [...], \"output\": ...}}}, or give \"nodes\" and \"output\" here");
    CHECK(contains(make_error(R"({"type": "graph", "network": "trnk"})", spec, &lib),
                   "exp.json:/network: unknown network 'trnk'; did you mean 'trunk'?"));
    CHECK(make_error(R"({"type": "graph"})", spec).rfind("exp.json:/: the graph conditioner needs \"nodes\"", 0) == 0);
    CHECK(make_error(R"({"type": "graph", "nodes": [{"name": "o", "type": "linear", "inputs": ["x"], "out": 3}],
                         "output": "o"})",
                     spec) == "exp.json:/nodes/0: the network's output 'o' has 3 values per sample (shape [3]), where "
                              "4 are needed; set its \"out\" to \"auto\"");
    // A conditional flow: the network must read its context.
    CHECK(contains(make_error(R"({"type": "graph", "nodes": [{"name": "o", "type": "linear", "inputs": ["x"],
                                                              "out": "auto"}], "output": "o"})",
                              ConditionerSpec{{2}, {4}, {3}, true}),
                   "never uses its input 'context'"));
}

TEST_CASE("a ResNet-style and a gated graph build, run and have correct gradients", "[graph]") {
    const char* resnet = R"({"type": "graph", "nodes": [
        {"name": "xc", "type": "concat", "inputs": ["x", "context"]},
        {"name": "in", "type": "linear", "inputs": ["xc"], "out": 12},
        {"name": "a0", "type": "elu", "inputs": ["in"]},
        {"name": "b1", "type": "linear", "inputs": ["a0"], "out": 12},
        {"name": "b1a", "type": "relu", "inputs": ["b1"]},
        {"name": "b1b", "type": "linear", "inputs": ["b1a"], "out": 12},
        {"name": "r1", "type": "add", "inputs": ["a0", "b1b"]},
        {"name": "n1", "type": "layer_norm", "inputs": ["r1"]},
        {"name": "b2", "type": "linear", "inputs": ["n1"], "out": 12},
        {"name": "b2a", "type": "softplus", "inputs": ["b2"]},
        {"name": "r2", "type": "add", "inputs": ["n1", "b2a"]},
        {"name": "o", "type": "linear", "inputs": ["r2"], "out": "auto"}], "output": "o"})";
    const char* gated = R"({"type": "graph", "nodes": [
        {"name": "in", "type": "concat", "inputs": ["x", "context"]},
        {"name": "h", "type": "linear", "inputs": ["in"], "out": 16},
        {"name": "g", "type": "gate", "inputs": ["h"]},
        {"name": "s", "type": "slice", "inputs": ["h"], "start": 4, "size": 8},
        {"name": "t", "type": "tanh", "inputs": ["s"]},
        {"name": "m", "type": "mul", "inputs": ["g", "t"]},
        {"name": "q", "type": "sigmoid", "inputs": ["m"]},
        {"name": "o", "type": "linear", "inputs": ["q"], "out": "auto"}], "output": "o"})";
    for (const char* json : {resnet, gated}) {
        INFO(json);
        auto net = make(json, ConditionerSpec{{3}, {4}, {2}, true}, 5);
        perturb(*net, 6, 0.3, DType::f64);
        Tensor x = randn({4, 3}, 7), c = randn({4, 2}, 8);
        Var y = (*net)(Var(x), Var(c));
        CHECK(y.shape() == Shape{4, 4});
        CHECK(kern::all_finite(y.value()));
        auto res = gradcheck([&](const std::vector<Var>& v) { return (*net)(v[0], v[1]); }, {x, c});
        INFO(res.worst);
        CHECK(res.ok(1e-6));
    }
}

TEST_CASE("the standard plugin registers the ops of network graphs, documented", "[graph]") {
    Registry r;
    load_plugin(r, std::string(FLOWLAB_TEST_PLUGIN_DIR) + "/libflowlab_standard.so");
    for (const char* name : {"linear", "relu", "tanh", "elu", "sigmoid", "softplus", "add", "mul", "concat", "slice",
                             "flatten", "gate", "layer_norm"}) {
        INFO(name);
        const OpEntry* e = r.ops.find(name);
        REQUIRE(e != nullptr);
        CHECK(!e->doc.empty());
        for (const auto& spec : e->schema) CHECK(!spec.doc.empty());
    }
    CHECK(r.conditioners.contains("graph"));
    // conv2d is the image plugin's.
    CHECK_FALSE(r.ops.contains("conv2d"));
    CHECK(reg().ops.contains("conv2d"));
    // An op may not declare the keys every node has.
    Registry bad;
    CHECK_THROWS_AS(bad.add_op({"x", "d", {param_int("inputs", 1, "d")},
                                [](const Params&, const OpSpec&, Rng&) -> std::unique_ptr<Op> { return nullptr; }}),
                    PluginError);
}
