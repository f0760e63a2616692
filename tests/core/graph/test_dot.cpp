// flow_dot: the built flow as a Graphviz DOT digraph - one box per node, the tensors' shapes on
// the edges, the latent's outputs with their bases, conditioners nested as clusters, every
// identifier quoted. When Graphviz's dot is on PATH, the DOT must also parse and render.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <unistd.h>

#include <flowlab/architecture.hpp>
#include <flowlab/builder.hpp>
#include <flowlab/errors.hpp>

#include "test_support.hpp"

using namespace flowlab;
using namespace flowlab::test;

namespace {

struct Built {
    Params config;
    std::unique_ptr<Flow> flow;
    std::string dot;
};

// The DOT of `config_json` (an experiment with at least "model") built for these shapes.
Built dot_of(const std::string& config_json, const Shape& event, const Shape& context = {}) {
    Built b;
    b.config = Params::parse(config_json, "cfg.json");
    Rng rng(1);
    b.flow = build_flow(b.config.get_object("model"), event, context, shipped_plugins_registry(), rng);
    b.dot = flow_dot(b.config, *b.flow);
    return b;
}

std::size_t count_of(const std::string& s, const std::string& part) {
    std::size_t n = 0;
    for (auto pos = s.find(part); pos != std::string::npos; pos = s.find(part, pos + 1)) ++n;
    return n;
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Parameter counts as the boxes show them: 1234567 -> "1,234,567".
std::string with_commas(std::int64_t n) {
    std::string digits = std::to_string(n), out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return out;
}

// When Graphviz is installed: the DOT parses and renders (dot -Tsvg exits 0, the SVG is written).
void check_renders(const std::string& dot, const std::string& name) {
    if (find_on_path("dot").empty()) {
        SUCCEED("Graphviz's dot is not on PATH: the DOT of '" << name << "' is not rendered");
        return;
    }
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("flowlab-dot-" + name + "-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::ofstream(dir / "g.dot") << dot;
    const std::string why = render_dot_to_svg((dir / "g.dot").string(), (dir / "g.svg").string(), 60);
    INFO(dot);
    CHECK(why == "");
    CHECK(fs::exists(dir / "g.svg"));
    fs::remove_all(dir);
}

// A small multi-scale RealNVP on [2, 8, 8] images: squeeze -> [8, 4, 4], a coupling, a split
// keeping 2 channels (factoring 6, with a learned prior), a coupling on the kept part.
const char* kRealNvp = R"({"name": "small realnvp", "model": {"base": {"type": "standard_normal"}, "layers": [
    {"type": "squeeze"},
    {"type": "conv_affine_coupling", "conditioner": {"type": "cnn", "hidden": 8}},
    {"type": "split", "keep": 2, "prior": {"type": "cnn", "hidden": 4}},
    {"type": "conv_affine_coupling", "conditioner": {"type": "cnn", "hidden": 8, "kernel": 1}}]}})";

}  // namespace

TEST_CASE("the DOT of a small RealNVP has a box per node, shapes on its edges and the latent's outputs", "[dot]") {
    const Built b = dot_of(kRealNvp, {2, 8, 8});
    const std::string& d = b.dot;
    INFO(d);
    CHECK(d.rfind("digraph \"small realnvp\" {\n", 0) == 0);
    CHECK(has(d, "rankdir=TB;"));
    // One box per node, each with its name, type and parameter count.
    const auto& info = b.flow->layer_info();
    REQUIRE(info.size() == 4);
    for (const LayerInfo& li : info) {
        CHECK(has(d, "\"" + li.name + "\" [shape=box"));
        CHECK(count_of(d, "\"" + li.name + "\" [shape=box") == 1);
    }
    CHECK(has(d, R"~("layers.0" [shape=box, style=rounded, label="layers.0\nsqueeze\n0 parameters"];)~"));
    CHECK(has(d, "\"layers.1\" [shape=box, style=rounded, label=\"layers.1\\nconv_affine_coupling\\n" +
                     with_commas(info[1].num_parameters) + " parameters\"]"));
    CHECK(count_of(d, "[shape=box, style=rounded") == 4);
    // The input with its shape, and the edge into the first node labelled with it.
    CHECK(has(d, R"~("x" [shape=ellipse, label="x\n[2,8,8]"];)~"));
    CHECK(has(d, R"~("x" -> "layers.0" [label="[2,8,8]", weight=10];)~"));
    CHECK(has(d, R"~("layers.0" -> "layers.1" [label="[8,4,4]", weight=10];)~"));
    CHECK(has(d, R"~("layers.1" -> "layers.2" [label="[8,4,4]", weight=10];)~"));
    // The split's two outputs: the kept part to the rest of the list, the factored part to the latent.
    CHECK(has(d, R"~("layers.2" -> "layers.2.rest.0" [label=":0 [2,4,4]")~"));
    CHECK(has(d, R"~("layers.2" -> "output:0" [label=":1 [6,4,4]")~"));
    CHECK(has(d, R"~("layers.2.rest.0" -> "output:1" [label="[2,4,4]")~"));
    // The outputs as ellipses, labelled with the tensor and the shared base.
    CHECK(has(d, R"~("output:0" [shape=ellipse, peripheries=2, label="latent part 0\nlayers.2:1\nmodel.base: standard_normal"];)~"));
    CHECK(has(d, R"~("output:1" [shape=ellipse, peripheries=2, label="latent part 1\nlayers.2.rest.0\nmodel.base: standard_normal"];)~"));
    // Built-in conditioners and the split's prior: one summary box each, in a cluster of its node.
    CHECK(has(d, R"~(subgraph "cluster:layers.1:conditioner" {)~"));
    CHECK(has(d, R"~("cond:layers.1:conditioner" [shape=box, style=filled, fillcolor=gray95, label="cnn hidden 8\n)~"));
    CHECK(has(d, R"~(subgraph "cluster:layers.2:prior" {)~"));
    CHECK(has(d, R"~(label="cnn hidden 4\n)~"));
    CHECK(has(d, R"~(label="cnn hidden 8 kernel 1\n)~"));
    CHECK(has(d, R"~("layers.1" -> "cond:layers.1:conditioner" [lhead="cluster:layers.1:conditioner")~"));
    // Every edge ends on a declared node or cluster anchor; no unknown tensor.
    CHECK_FALSE(has(d, "(unknown)"));
    check_renders(d, "realnvp");
}

TEST_CASE("a graph conditioner is a cluster with its ops and their edges, inline or from model.networks", "[dot]") {
    const Built b = dot_of(R"({"name": "g", "model": {"base": {"type": "standard_normal"},
        "networks": {"res": {"nodes": [
            {"name": "h", "type": "linear", "inputs": ["x"], "out": 8},
            {"name": "a", "type": "relu", "inputs": ["h"]},
            {"name": "r", "type": "add", "inputs": ["h", "a"]},
            {"name": "o", "type": "linear", "inputs": ["r"], "out": "auto"}], "output": "o"}},
        "layers": [
          {"type": "affine_coupling", "conditioner": {"type": "graph", "nodes": [
             {"name": "h1", "type": "linear", "inputs": ["x"], "out": 16},
             {"name": "a1", "type": "tanh", "inputs": ["h1"]},
             {"name": "out", "type": "linear", "inputs": ["a1"], "out": "auto"}], "output": "out"}},
          {"type": "affine_coupling", "parity": 1, "conditioner": {"type": "graph", "network": "res"}},
          {"type": "affine_coupling", "conditioner": {"type": "mlp", "hidden": [128, 128], "activation": "relu"}},
          {"type": "affine_coupling", "parity": 1},
          {"type": "affine_coupling", "conditioner": {"type": "graph", "network": "res"}}]}})",
                           {4});
    const std::string& d = b.dot;
    INFO(d);
    // Inline: each op a box in the layer's cluster, the network input, the edges between them.
    CHECK(has(d, R"~(subgraph "cluster:layers.0:conditioner" {)~"));
    CHECK(has(d, R"~(label="conditioner: graph, )~"));
    CHECK(has(d, R"~("op:layers.0:conditioner:h1" [shape=box, style="filled", fillcolor=gray95, label="h1\nlinear out 16"];)~"));
    CHECK(has(d, R"~("op:layers.0:conditioner:a1" [shape=box, style="filled", fillcolor=gray95, label="a1\ntanh"];)~"));
    CHECK(has(d, R"~("op:layers.0:conditioner:out" [shape=box, style="filled,bold", fillcolor=gray95, label="out\nlinear out auto\n(output)"];)~"));
    CHECK(has(d, R"~("in:layers.0:conditioner:x" [shape=plaintext, label="x\n(conditioning part)"];)~"));
    CHECK(has(d, R"~("in:layers.0:conditioner:x" -> "op:layers.0:conditioner:h1";)~"));
    CHECK(has(d, R"~("op:layers.0:conditioner:h1" -> "op:layers.0:conditioner:a1";)~"));
    CHECK(has(d, R"~("op:layers.0:conditioner:a1" -> "op:layers.0:conditioner:out";)~"));
    // From model.networks: the definition's ops, the residual edge included, named after the network.
    CHECK(has(d, R"~(label="conditioner: graph 'res' (model.networks))~"));
    CHECK(has(d, R"~("op:layers.1:conditioner:h" -> "op:layers.1:conditioner:r";)~"));
    CHECK(has(d, R"~("op:layers.1:conditioner:a" -> "op:layers.1:conditioner:r";)~"));
    CHECK(count_of(d, "\"op:layers.1:conditioner:") >= 4 + 5);  // 4 op boxes, 5 edge ends between ops
    // A definition used again is drawn once: the later layer's cluster is one box pointing back.
    CHECK_FALSE(has(d, "\"op:layers.4:conditioner:"));
    CHECK(has(d, R"~("cond:layers.4:conditioner" [shape=box, style=filled, fillcolor=gray95, label="conditioner: graph 'res' (model.networks)\nits ops as drawn for layers.1\n)~"));
    // A built-in one is one box summarising it; one left out is the layer's default, with its parameters.
    CHECK(has(d, R"~(label="mlp hidden [128, 128] relu\n)~"));
    CHECK(has(d, R"~(label="the layer's default\n)~"));
    CHECK_FALSE(has(d, "(unknown)"));
    check_renders(d, "graphcond");
}

TEST_CASE("the graph form: context edges dashed, a network node's ops, own bases with their given tensor", "[dot]") {
    const Built b = dot_of(R"({"name": "cond", "model": {
        "networks": {"enc": {"nodes": [{"name": "fc", "type": "linear", "inputs": ["x"], "out": 3}], "output": "fc"}},
        "graph": {"nodes": [
          {"name": "emb", "type": "network", "input": "context", "network": "enc"},
          {"name": "first.step", "type": "affine_coupling", "input": "x", "context": "emb"},
          {"name": "s", "type": "slice", "input": "first.step", "sizes": [1, 3]},
          {"name": "last", "type": "affine_coupling", "input": "s:1", "context": null}],
         "outputs": [{"tensor": "s:0", "base": {"type": "conditional_diag_gaussian"}, "given": "last"},
                     {"tensor": "last", "base": {"type": "diag_gaussian"}}]}}})",
                           {4}, {2});
    const std::string& d = b.dot;
    INFO(d);
    CHECK(has(d, R"~("context" [shape=ellipse, style=dashed, label="context\n[2]"];)~"));
    // The network node encodes the context: a dashed box, dashed edges, its op graph as a cluster.
    CHECK(has(d, R"~("emb" [shape=box, style="rounded,dashed", label="emb\nnetwork\n)~"));
    CHECK(has(d, R"~("context" -> "emb" [label="[2]", style=dashed];)~"));
    CHECK(has(d, R"~(label="network 'enc' (model.networks)";)~"));
    CHECK(has(d, R"~("op:emb:network:fc")~"));
    CHECK(has(d, R"~("in:emb:network:x" [shape=plaintext, label="x = context"];)~"));
    CHECK(has(d, R"~("emb" -> "first.step" [label="[3]", style=dashed];)~"));
    // Data edges, a slice's outputs by number, and a node without context.
    CHECK(has(d, R"~("x" -> "first.step" [label="[4]", weight=10];)~"));
    CHECK(has(d, R"~("first.step" -> "s" [label="[4]", weight=10];)~"));
    CHECK(has(d, R"~("s" -> "last" [label=":1 [3]", weight=10];)~"));
    CHECK_FALSE(has(d, R"~("context" -> "last")~"));
    CHECK_FALSE(has(d, R"~("context" -> "s")~"));  // a slice has nothing that reads the context
    CHECK_FALSE(has(d, R"~("emb" -> "last")~"));
    // Own bases: named on the output, and the conditioning ("given") tensor's edge, dashed.
    CHECK(has(d, R"~("output:0" [shape=ellipse, peripheries=2, label="latent part 0\ns:0\nbase: conditional_diag_gaussian\ngiven last"];)~"));
    CHECK(has(d, R"~("s" -> "output:0" [label=":0 [1]", weight=10];)~"));
    CHECK(has(d, R"~("last" -> "output:0" [label="[3]", style=dashed];)~"));
    // Without "given", a conditional flow's own base is conditioned on the context.
    CHECK(has(d, R"~(label="latent part 1\nlast\nbase: diag_gaussian\ngiven context"];)~"));
    CHECK(has(d, R"~("context" -> "output:1" [label="[2]", style=dashed];)~"));
    check_renders(d, "graphform");
}

TEST_CASE("names with dots, colons, quotes and backslashes are quoted and escaped", "[dot]") {
    const Built b = dot_of(R"({"name": "odd \"name\" \\ here", "model": {"base": {"type": "standard_normal"}, "graph": {
        "nodes": [{"name": "a.b \"q\" \\l", "type": "reverse", "input": "x"},
                  {"name": "edge", "type": "split", "input": "a.b \"q\" \\l"}],
        "outputs": ["edge:1", "edge:0"]}}})",
                           {4});
    const std::string& d = b.dot;
    INFO(d);
    CHECK(d.rfind(R"~(digraph "odd \"name\" \\ here" {)~", 0) == 0);
    CHECK(has(d, R"~("a.b \"q\" \\l" [shape=box, style=rounded, label="a.b \"q\" \\l\nreverse\n0 parameters"];)~"));
    // A DOT keyword as a name is just a quoted string.
    CHECK(has(d, R"~("a.b \"q\" \\l" -> "edge" [label="[4]", weight=10];)~"));
    CHECK(has(d, R"~("edge" -> "output:0" [label=":1 [2]", weight=10];)~"));
    // Every line's quotes pair up: no identifier or label leaks out of its string.
    std::istringstream lines(d);
    std::string line;
    while (std::getline(lines, line)) {
        std::size_t quotes = 0;
        for (std::size_t i = 0; i < line.size(); ++i) {
            if (line[i] == '\\') {
                ++i;
                continue;
            }
            if (line[i] == '"') ++quotes;
        }
        INFO(line);
        CHECK(quotes % 2 == 0);
    }
    check_renders(d, "names");
}
