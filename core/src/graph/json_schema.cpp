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
    pr["model"] = model;
    json train = object_schema(train_schema(), "", "training loop");
    train["properties"]["optimizer"] = {{"$ref", "#/$defs/optimizer"}};
    train["properties"]["schedule"] = {{"$ref", "#/$defs/schedule"}};
    pr["train"] = train;
    pr["eval"] = object_schema(eval_schema(), "", "evaluation");
    return root.dump(2);
}

}  // namespace flowlab
