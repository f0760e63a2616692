// Internal to the core: the JSON behind a Params, for the code that walks whole configs (the
// builder, the experiment loader, the conformance suite). Public headers never include
// nlohmann/json; only core .cpp files include this.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "flowlab/params.hpp"

namespace flowlab {

struct Params::Impl {
    nlohmann::json value;
    std::string file;     // the config file the value came from (or "<string>", "<defaults>")
    std::string pointer;  // JSON pointer of `value` inside that file ("" = the root)
};

const nlohmann::json& params_json(const Params& p);

// A Params over `value`, located at `pointer` of `file` (so errors name "file:/pointer/key").
Params make_params(nlohmann::json value, std::string file, std::string pointer);

// "a/b" -> "a~1b": one reference token of a JSON pointer (RFC 6901).
std::string json_pointer_token(const std::string& key);

// A short description of a value for error messages: `string "abc"`, `integer 3`, `null`.
std::string describe_json(const nlohmann::json& v);

}  // namespace flowlab
