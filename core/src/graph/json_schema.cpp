// The experiment format as a JSON Schema (draft 2020-12), from the registry's schemas.
#include <nlohmann/json.hpp>

#include "flowlab/json_schema.hpp"
#include "graph/json_internal.hpp"
#include "graph/schemas.hpp"

namespace flowlab {

using nlohmann::json;
using namespace graph;

namespace {

json spec_schema(const ParamSpec& p) {
    json j;
    switch (p.type) {
        case ParamType::integer: j["type"] = "integer"; break;
        case ParamType::number: j["type"] = "number"; break;
        case ParamType::boolean: j["type"] = "boolean"; break;
        case ParamType::string: j["type"] = "string"; break;
        case ParamType::int_list: j = {{"type", "array"}, {"items", {{"type", "integer"}}}}; break;
        case ParamType::number_list: j = {{"type", "array"}, {"items", {{"type", "number"}}}}; break;
        case ParamType::object: j["type"] = "object"; break;
        case ParamType::any: break;
        case ParamType::int_or_auto: break;  // a oneOf, below
        case ParamType::string_list: j = {{"type", "array"}, {"items", {{"type", "string"}}}}; break;
    }
    if (p.nullable && j.contains("type")) j["type"] = json::array({j["type"], "null"});
    j["description"] = p.doc;
    if (!p.required()) {
        try {
            j["default"] = json::parse(p.default_json);
        } catch (...) {
        }
    }
    if (std::isfinite(p.min_value)) j["minimum"] = p.min_value;
    if (std::isfinite(p.max_value)) j["maximum"] = p.max_value;
    if (!p.choices_.empty()) j["enum"] = p.choices_;
    if (p.type == ParamType::int_or_auto) {
        // An integer in range, or exactly "auto": the bounds apply to the integer branch only.
        json integer = {{"type", "integer"}};
        if (j.contains("minimum")) integer["minimum"] = j["minimum"];
        if (j.contains("maximum")) integer["maximum"] = j["maximum"];
        j.erase("minimum");
        j.erase("maximum");
        j["oneOf"] = json::array({integer, {{"const", "auto"}}});
    }
    return j;
}

json object_schema(const Schema& schema, const std::string& type_name, const std::string& doc) {
    json props = json::object(), required = json::array();
    if (!type_name.empty()) {
        props["type"] = {{"const", type_name}};
        required.push_back("type");
    }
    for (const auto& p : schema) {
        props[p.name] = spec_schema(p);
        if (p.required()) required.push_back(p.name);
    }
    json j = {{"type", "object"}, {"properties", props}, {"additionalProperties", false}};
    if (!required.empty()) j["required"] = required;
    if (!doc.empty()) j["description"] = doc;
    return j;
}

template <class Tab>
json one_of(const Tab& t) {
    json alts = json::array();
    for (const auto& [name, e] : t.entries()) alts.push_back(object_schema(e.schema, name, e.doc));
    return {{"oneOf", alts}};
}

}  // namespace

std::string experiment_json_schema(const Registry& registry) {
    json defs;
    defs["bijector"] = one_of(registry.bijectors);
    defs["bijector"]["oneOf"].push_back(object_schema(split_schema(), "split",
                                                      "factor out the last channels; the following layers act on the rest"));
    defs["repeat"] = {{"type", "object"},
                      {"properties", {{"repeat", {{"type", "integer"}, {"minimum", 1}}},
                                      {"layers", {{"$ref", "#/$defs/layers"}}}}},
                      {"required", {"repeat", "layers"}},
                      {"additionalProperties", false}};
    defs["layers"] = {{"type", "array"},
                      {"items", {{"oneOf", {{{"$ref", "#/$defs/bijector"}}, {{"$ref", "#/$defs/repeat"}}}}}}};
    defs["base"] = one_of(registry.distributions);
    defs["dequantizer"] = one_of(registry.dequantizers);
    defs["optimizer"] = one_of(registry.optimizers);
    defs["schedule"] = one_of(registry.schedules);
    defs["conditioner"] = one_of(registry.conditioners);
    defs["dataset"] = one_of(registry.datasets);
    // A node of a network graph: an op's parameters plus the two keys every node has.
    defs["op"] = one_of(registry.ops);
    for (auto& alt : defs["op"]["oneOf"]) {
        alt["properties"]["name"] = {{"type", "string"}, {"pattern", "^[A-Za-z0-9_-]+$"},
                                     {"description", "the node's name, unique in its network"}};
        alt["properties"]["inputs"] = {{"type", "array"}, {"items", {{"type", "string"}}}, {"minItems", 1},
                                       {"description", "the nodes or network inputs (x, context) it reads"}};
        alt["required"].push_back("name");
        alt["required"].push_back("inputs");
    }
    defs["network"] = {{"type", "object"},
                       {"properties", {{"nodes", {{"type", "array"}, {"items", {{"$ref", "#/$defs/op"}}}}},
                                       {"output", {{"type", "string"}}}}},
                       {"required", {"nodes", "output"}},
                       {"additionalProperties", false}};
    // The graph conditioner's inline nodes are nodes too.
    for (auto& alt : defs["conditioner"]["oneOf"])
        if (alt["properties"].contains("nodes") && alt["properties"]["type"] == json{{"const", "graph"}})
            alt["properties"]["nodes"] = {{"type", "array"}, {"items", {{"$ref", "#/$defs/op"}}}};

    json root = object_schema(experiment_schema(), "", "a flowlab experiment");
    root["$schema"] = "https://json-schema.org/draft/2020-12/schema";
    root["title"] = "flowlab experiment";
    root["$defs"] = defs;
    auto& pr = root["properties"];
    pr["plugins"] = {{"type", "array"}, {"items", {{"type", "string"}}}, {"description", "plugin names or paths"}};
    pr["data"] = {{"$ref", "#/$defs/dataset"}};
    json model = object_schema(model_schema(), "", "the flow");
    model["properties"]["base"] = {{"$ref", "#/$defs/base"}};
    model["properties"]["dequantizer"] = {{"oneOf", {{{"type", "null"}}, {{"$ref", "#/$defs/dequantizer"}}}}};
    model["properties"]["layers"] = {{"$ref", "#/$defs/layers"}};
    if (model["properties"].contains("networks"))
        model["properties"]["networks"] = {{"type", {"object", "null"}},
                                           {"additionalProperties", {{"$ref", "#/$defs/network"}}},
                                           {"description", model["properties"]["networks"].value("description", "")}};
    // The graph form: a bijector (or one of the graph's own nodes) plus the keys that place it.
    json flow_node = defs["bijector"];
    flow_node["oneOf"].push_back(object_schema({param_required("sizes", ParamType::int_list, "channels of each part")},
                                               "slice", "cut the channels (features) into parts: NAME:0, NAME:1, ..."));
    flow_node["oneOf"].push_back(object_schema({}, "concat", "join tensors along the channels (features)"));
    flow_node["oneOf"].push_back(
        {{"type", "object"},
         {"description", "a network of the context (inline nodes and output, or a named network)"},
         {"properties", {{"type", {{"const", "network"}}}, {"network", {{"type", "string"}}},
                         {"nodes", {{"type", "array"}, {"items", {{"$ref", "#/$defs/op"}}}}}, {"output", {{"type", "string"}}}}},
         {"required", {"type"}},
         {"additionalProperties", false}});
    for (auto& alt : flow_node["oneOf"]) {
        auto& p = alt["properties"];
        p["name"] = {{"type", "string"}, {"pattern", "^[^:]+$"}, {"description", "the node's name, unique in the flow"}};
        p["input"] = {{"type", "string"}, {"description", "the tensor it reads: x, context, NODE or NODE:i"}};
        p["inputs"] = {{"type", "array"}, {"items", {{"type", "string"}}}, {"minItems", 1}};
        p["context"] = {{"type", {"string", "null"}}, {"description", "the context tensor it reads (default: the flow's)"}};
        alt["required"].push_back("name");
    }
    defs["flow_node"] = flow_node;
    defs["flow_graph"] = {
        {"type", "object"},
        {"properties",
         {{"nodes", {{"type", "array"}, {"items", {{"$ref", "#/$defs/flow_node"}}}}},
          {"outputs",
           {{"type", "array"},
            {"minItems", 1},
            {"items",
             {{"oneOf",
               {{{"type", "string"}},
                {{"type", "object"},
                 {"properties", {{"tensor", {{"type", "string"}}}, {"base", {{"$ref", "#/$defs/base"}}},
                                 {"given", {{"type", "string"}}}}},
                 {"required", {"tensor"}},
                 {"additionalProperties", false}}}}}}}}}},
        {"required", {"nodes", "outputs"}},
        {"additionalProperties", false}};
    root["$defs"] = defs;
    model["properties"]["graph"] = {{"$ref", "#/$defs/flow_graph"}};
    model["oneOf"] = {{{"required", {"layers"}}}, {{"required", {"graph"}}}};
    pr["model"] = model;
    json train = object_schema(train_schema(), "", "training loop");
    train["properties"]["optimizer"] = {{"$ref", "#/$defs/optimizer"}};
    train["properties"]["schedule"] = {{"$ref", "#/$defs/schedule"}};
    train["properties"]["distributed"] = object_schema(distributed_schema(), "", "data-parallel runs under mpirun");
    pr["train"] = train;
    pr["eval"] = object_schema(eval_schema(), "", "evaluation");
    return root.dump(2);
}

}  // namespace flowlab
