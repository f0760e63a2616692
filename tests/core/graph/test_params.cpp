#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <functional>

#include <flowlab/errors.hpp>
#include <flowlab/params.hpp>

using namespace flowlab;
using namespace flowlab::test;

namespace {

Schema mlp_schema() {
    return {
        param_int("hidden", 128, "width of each hidden layer").min(1),
        param_string("activation", "relu", "nonlinearity").choices({"relu", "tanh"}),
    };
}

// The first layer of a small config, so that pointers have some depth.
Params first_layer(const std::string& layer_json) {
    return Params::parse(R"({"model": {"layers": [)" + layer_json + "]}}", "moons.json")
        .get_object("model")
        .get_object_list("layers")[0];
}

}  // namespace

TEST_CASE("nested objects know their file and JSON pointer", "[params]") {
    Params p = first_layer(R"({"type": "mlp", "a/b": 1})");
    CHECK(p.file() == "moons.json");
    CHECK(p.pointer() == "/model/layers/0");
    CHECK(p.where() == "moons.json:/model/layers/0");
    CHECK(p.where("type") == "moons.json:/model/layers/0/type");
    // JSON pointer escaping of '/' in a key.
    CHECK(p.where("a/b") == "moons.json:/model/layers/0/a~1b");
    CHECK(Params::parse("{}", "x.json").where() == "x.json:/");
}

TEST_CASE("an unknown key is reported with its pointer, a suggestion and the known keys", "[params]") {
    Params p = first_layer(R"({"type": "mlp", "hiden": 64})");
    CHECK(error_of<ConfigError>([&] { p.validated(mlp_schema(), "conditioner 'mlp'"); }) ==
          "moons.json:/model/layers/0/hiden: unknown parameter 'hiden' for conditioner 'mlp'; "
          "did you mean 'hidden'? (known: hidden, activation)");
}

TEST_CASE("an unknown key far from every known one gets no suggestion", "[params]") {
    Params p = first_layer(R"({"zzzzzzzz": 1})");
    CHECK(error_of<ConfigError>([&] { p.validated(mlp_schema(), "conditioner 'mlp'"); }) ==
          "moons.json:/model/layers/0/zzzzzzzz: unknown parameter 'zzzzzzzz' for conditioner 'mlp' "
          "(known: hidden, activation)");
    CHECK(error_of<ConfigError>([&] { p.validated({}, "bijector 'reverse'"); }) ==
          "moons.json:/model/layers/0/zzzzzzzz: unknown parameter 'zzzzzzzz' for bijector 'reverse' "
          "(it takes no parameters)");
}

TEST_CASE("a value of the wrong type names the expected type and what was found", "[params]") {
    Params p = first_layer(R"({"hidden": "abc"})");
    CHECK(error_of<ConfigError>([&] { p.validated(mlp_schema(), "conditioner 'mlp'"); }) ==
          "moons.json:/model/layers/0/hidden: expected integer, got string \"abc\"");
    CHECK(error_of<ConfigError>([&] { first_layer(R"({"hidden": 1.5})").validated(mlp_schema(), "m"); }) ==
          "moons.json:/model/layers/0/hidden: expected integer, got number 1.5");
    CHECK(error_of<ConfigError>([&] { first_layer(R"({"activation": null})").validated(mlp_schema(), "m"); }) ==
          "moons.json:/model/layers/0/activation: expected string, got null");
}

TEST_CASE("list elements are checked one by one, with the element's index in the pointer", "[params]") {
    Schema s = {param_int_list("hidden", {64, 64}, "widths").min(1)};
    CHECK(error_of<ConfigError>([&] { first_layer(R"({"hidden": [64, "a"]})").validated(s, "m"); }) ==
          "moons.json:/model/layers/0/hidden/1: expected integer, got string \"a\"");
    CHECK(error_of<ConfigError>([&] { first_layer(R"({"hidden": [64, 0]})").validated(s, "m"); }) ==
          "moons.json:/model/layers/0/hidden/1: out of range: must be >= 1, got 0");
    CHECK(error_of<ConfigError>([&] { first_layer(R"({"hidden": 64})").validated(s, "m"); }) ==
          "moons.json:/model/layers/0/hidden: expected list of integers, got integer 64");
    CHECK(first_layer(R"({"hidden": [3, 4]})").validated(s, "m").get_int_list("hidden") ==
          std::vector<std::int64_t>{3, 4});
}

TEST_CASE("a value out of range states the allowed range", "[params]") {
    CHECK(error_of<ConfigError>([&] { first_layer(R"({"hidden": 0})").validated(mlp_schema(), "m"); }) ==
          "moons.json:/model/layers/0/hidden: out of range: must be >= 1, got 0");
    Schema s = {param_number("p", 0.5, "a probability").range(0, 1), param_number("lr", 1e-3, "rate").max(1)};
    CHECK(error_of<ConfigError>([&] { first_layer(R"({"p": 1.5})").validated(s, "m"); }) ==
          "moons.json:/model/layers/0/p: out of range: must be in [0, 1], got 1.5");
    CHECK(error_of<ConfigError>([&] { first_layer(R"({"lr": 2})").validated(s, "m"); }) ==
          "moons.json:/model/layers/0/lr: out of range: must be <= 1, got 2");
}

TEST_CASE("a string outside its choices suggests the closest choice", "[params]") {
    CHECK(error_of<ConfigError>([&] { first_layer(R"({"activation": "reluu"})").validated(mlp_schema(), "m"); }) ==
          "moons.json:/model/layers/0/activation: invalid value 'reluu'; did you mean 'relu'? (choices: relu, tanh)");
}

TEST_CASE("a missing required parameter names the object, the key and its doc", "[params]") {
    Schema s = {param_required("units", ParamType::integer, "number of units")};
    CHECK(error_of<ConfigError>([&] { first_layer(R"({"type": "dense"})").validated(s, "bijector 'dense'"); }) ==
          "moons.json:/model/layers/0: missing required parameter 'units' for bijector 'dense' "
          "(integer: number of units)");
}

TEST_CASE("validation fills in defaults, keeps the type key and accepts integral floats", "[params]") {
    Params v = first_layer(R"({"type": "mlp", "hidden": 1e3})").validated(mlp_schema(), "m");
    CHECK(v.get_int("hidden") == 1000);
    CHECK(v.get_string("activation") == "relu");
    CHECK(v.get_string("type") == "mlp");
    CHECK(v.where("hidden") == "moons.json:/model/layers/0/hidden");
    auto keys = v.keys();
    CHECK(std::find(keys.begin(), keys.end(), "activation") != keys.end());
}

TEST_CASE("nullable objects accept null and keep it, absent ones get their default", "[params]") {
    Schema s = {param_object("dequantizer", "null", "optional"),
                param_object("base", R"({"type": "standard_normal"})", "base")};
    Params v = Params::parse(R"({"dequantizer": null})", "m.json").validated(s, "model");
    CHECK_FALSE(v.has("dequantizer"));
    CHECK(v.get_object("base").get_string("type") == "standard_normal");
    CHECK(v.get_object("base").where() == "m.json:/base");
    CHECK(error_of<ConfigError>([&] { Params::parse(R"({"base": 3})", "m.json").validated(s, "model"); }) ==
          "m.json:/base: expected object, got integer 3");
}

TEST_CASE("invalid JSON is reported with the file and the line", "[params]") {
    std::string msg = error_of<ConfigError>([] { Params::parse("{\n  \"a\": 1,\n  \"b\": ]\n}", "bad.json"); });
    CHECK(msg.rfind("bad.json:3:", 0) == 0);
    CHECK(msg.find("invalid JSON") != std::string::npos);
    CHECK(error_of<ConfigError>([] { Params::parse("[1, 2]", "list.json"); }) ==
          "list.json:/: expected a JSON object, got list [1,2]");
}

TEST_CASE("strict parsing names the JSON pointer of a duplicate key, an overflowing number and deep nesting", "[params]") {
    CHECK(error_of<ConfigError>([] { Params::parse(R"({"a": [1, {"b": 1, "c": 2, "b": 3}]})", "d.json"); }) ==
          "d.json:/a/1/b: duplicate key 'b' (JSON keeps only one of them; remove or rename the other)");
    // The same key in two different objects is fine.
    CHECK(Params::parse(R"({"x": {"k": 1}, "y": {"k": 2}})", "ok.json").get_object("y").get_int("k") == 2);
    CHECK(error_of<ConfigError>([] { Params::parse(R"({"a": [[1], [2, -1e999]]})", "n.json"); }) ==
          "n.json:/a/1/1: number out of range (a double reaches +-1.8e308)");
    std::string deep = "{\"a\": " + std::string(300, '[') + std::string(300, ']') + "}";
    std::string msg = error_of<ConfigError>([&] { Params::parse(deep, "deep.json"); });
    CHECK(msg.rfind("deep.json:/a/0/0/", 0) == 0);
    CHECK(msg.find("nested deeper than 256 levels") != std::string::npos);
    // 255 levels inside the root object are accepted.
    std::string ok = "{\"a\": " + std::string(255, '[') + std::string(255, ']') + "}";
    CHECK(Params::parse(ok, "ok.json").has("a"));
}

TEST_CASE("getters check types even on unvalidated parameters", "[params]") {
    Params p = Params::parse(R"({"n": "x", "obj": {"k": true}, "xs": [1, {"a": 1}]})", "g.json");
    CHECK(error_of<ConfigError>([&] { p.get_number("n"); }) == "g.json:/n: expected number, got string \"x\"");
    CHECK(error_of<ConfigError>([&] { p.get_int("missing"); }) == "g.json:/missing: missing parameter 'missing'");
    CHECK(error_of<ConfigError>([&] { p.get_object_list("xs"); }) == "g.json:/xs/0: expected an object, got integer 1");
    CHECK(p.get_object("obj").get_bool("k"));
    CHECK(p.get_json("obj") == R"({"k":true})");
}

TEST_CASE("with() returns a copy with one key replaced", "[params]") {
    Params p = Params::parse(R"({"a": 1})", "w.json");
    Params q = p.with("a", "2").with("b", R"("text")");
    CHECK(p.get_int("a") == 1);
    CHECK(q.get_int("a") == 2);
    CHECK(q.get_string("b") == "text");
    CHECK(q.where("b") == "w.json:/b");
    CHECK_THROWS_AS(p.with("a", "{oops"), ConfigError);
}

TEST_CASE("did_you_mean suggests the closest name within a small edit distance", "[params]") {
    std::vector<std::string> names = {"affine_coupling", "reverse", "spline_coupling"};
    CHECK(did_you_mean("afine_coupling", names) == "affine_coupling");
    CHECK(did_you_mean("Reverse", names) == "reverse");
    CHECK(did_you_mean("splin_couplin", names) == "spline_coupling");
    CHECK(did_you_mean("batch_norm", names) == "");
    CHECK(did_you_mean("", names) == "");
    CHECK(did_you_mean("anything", {}) == "");
}

TEST_CASE("schema helpers record the type and a JSON default", "[params]") {
    CHECK(param_int("n", 3, "d").default_json == "3");
    CHECK(param_bool("b", true, "d").default_json == "true");
    CHECK(param_string("s", "x\"y", "d").default_json == R"("x\"y")");
    CHECK(param_int_list("l", {1, 2}, "d").default_json == "[1,2]");
    CHECK(param_required("r", ParamType::number, "d").required());
    CHECK_FALSE(param_number("x", 0.5, "d").required());
    CHECK(std::string(param_type_name(ParamType::int_list)) == "list of integers");
}

TEST_CASE("an integer-or-auto parameter takes an integer in range or \"auto\", a string list only strings",
          "[params]") {
    const Schema s = {param_required("out", ParamType::int_or_auto, "width").min(1),
                      param_required("inputs", ParamType::string_list, "names")};
    auto check = [&](const std::string& json) {
        return Params::parse(json, "n.json").validated(s, "op 'linear'");
    };
    CHECK(check(R"({"out": 4, "inputs": ["x"]})").get_int("out") == 4);
    CHECK(check(R"({"out": 4.0, "inputs": []})").get_int("out") == 4);
    CHECK(check(R"({"out": "auto", "inputs": ["a", "b"]})").get_string("out") == "auto");
    CHECK(error_of<ConfigError>([&] { check(R"({"out": "big", "inputs": ["x"]})"); }) ==
          "n.json:/out: expected integer or \"auto\", got string \"big\"");
    CHECK(error_of<ConfigError>([&] { check(R"({"out": 0, "inputs": ["x"]})"); }) ==
          "n.json:/out: out of range: must be >= 1, got 0");
    CHECK(error_of<ConfigError>([&] { check(R"({"out": 1, "inputs": ["x", 2]})"); }) ==
          "n.json:/inputs/1: expected string, got integer 2");
    CHECK(error_of<ConfigError>([&] { check(R"({"out": 1, "inputs": "x"})"); }) ==
          "n.json:/inputs: expected list of strings, got string \"x\"");
    CHECK(std::string(param_type_name(ParamType::int_or_auto)) == "integer or \"auto\"");
    CHECK(std::string(param_type_name(ParamType::string_list)) == "list of strings");
}
