// Internal to the core: the JSON behind a Params, for the code that walks whole configs (the
// builder, the experiment loader, the conformance suite). Public headers never include
// nlohmann/json; only core .cpp files include this.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

// Parses JSON that comes from outside (configs, run directories, --set values) strictly:
// a duplicate key, a number beyond the range of a double or nesting deeper than
// kMaxJsonDepth is a ConfigError naming `file` and the JSON pointer; invalid JSON names the
// line. Never builds a value deeper than the limit.
inline constexpr std::size_t kMaxJsonDepth = 256;
nlohmann::json parse_json_strict(const std::string& text, const std::string& file);

// load_experiment over an already parsed value located at `pointer` of `file` (a run
// directory's config.json holds the experiment under /config).
Params load_experiment_json(nlohmann::json root, const std::string& file, const std::string& pointer,
                            const std::vector<std::string>& overrides);

// A short description of a value for error messages: `string "abc"`, `integer 3`, `null`.
std::string describe_json(const nlohmann::json& v);

// Reads an integer parameter, accepting an integral float (1e3 is 1000); false for anything
// else. Params' accessors and schema validation share it.
bool as_integer(const nlohmann::json& v, std::int64_t& out);

}  // namespace flowlab
