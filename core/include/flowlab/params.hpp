// Params and Schema: how a registered type declares and reads its parameters without pulling
// a JSON library into every translation unit.
//
// A type registers a Schema (name, type, default, range, one-line doc per parameter). The graph
// builder validates the user's JSON against it (an unknown key is an error with a did-you-mean,
// a wrong type or a value out of range names the JSON pointer) and fills in the defaults, so a
// factory reads every declared key without checking:
//
//   Schema s = {
//       param_int("hidden", 128, "width of each hidden layer").min(1),
//       param_string("activation", "relu", "nonlinearity").choices({"relu", "tanh"}),
//   };
//   ... factory: std::int64_t h = p.get_int("hidden");
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace flowlab {

// int_or_auto: an integer, or the string "auto" (a size the caller resolves, e.g. an op's output
// width that fits what its network must return); string_list: a list of strings (names).
enum class ParamType { integer, number, boolean, string, int_list, number_list, object, any, int_or_auto, string_list };
const char* param_type_name(ParamType t);

struct ParamSpec {
    std::string name;
    ParamType type = ParamType::any;
    std::string default_json;  // JSON text of the default; empty = required
    std::string doc;
    double min_value = -std::numeric_limits<double>::infinity();
    double max_value = std::numeric_limits<double>::infinity();
    std::vector<std::string> choices_;  // for strings; empty = any
    bool nullable = false;               // JSON null is accepted (e.g. an optional sub-object)

    ParamSpec& min(double v) { min_value = v; return *this; }
    ParamSpec& max(double v) { max_value = v; return *this; }
    ParamSpec& range(double lo, double hi) { min_value = lo; max_value = hi; return *this; }
    ParamSpec& choices(std::vector<std::string> c) { choices_ = std::move(c); return *this; }
    ParamSpec& allow_null() { nullable = true; return *this; }
    bool required() const { return default_json.empty(); }
};

using Schema = std::vector<ParamSpec>;

ParamSpec param_int(std::string name, std::int64_t def, std::string doc);
ParamSpec param_number(std::string name, double def, std::string doc);
ParamSpec param_bool(std::string name, bool def, std::string doc);
ParamSpec param_string(std::string name, std::string def, std::string doc);
ParamSpec param_int_list(std::string name, std::vector<std::int64_t> def, std::string doc);
ParamSpec param_number_list(std::string name, std::vector<double> def, std::string doc);
// A nested object (e.g. a conditioner {"type": ...}); `def_json` is its default JSON text.
ParamSpec param_object(std::string name, std::string def_json, std::string doc);
ParamSpec param_required(std::string name, ParamType type, std::string doc);

// A read-only view on one JSON object of a config, which knows where it came from
// (file and JSON pointer) so that every error can point at it.
class Params {
public:
    Params();  // an empty object, location "<defaults>"
    static Params parse(const std::string& json_text, const std::string& file = "<string>");

    bool has(const std::string& key) const;       // present and not null
    std::vector<std::string> keys() const;
    std::int64_t get_int(const std::string& key) const;
    double get_number(const std::string& key) const;
    bool get_bool(const std::string& key) const;
    std::string get_string(const std::string& key) const;
    std::vector<std::int64_t> get_int_list(const std::string& key) const;
    std::vector<double> get_number_list(const std::string& key) const;
    Params get_object(const std::string& key) const;  // throws if absent or not an object
    std::vector<Params> get_object_list(const std::string& key) const;
    std::string get_json(const std::string& key) const;  // the raw JSON text of a value
    std::string dump(int indent = -1) const;             // this object as JSON text

    // "file:/json/pointer" of this object, or of one of its keys.
    std::string where() const;
    std::string where(const std::string& key) const;
    const std::string& file() const;
    const std::string& pointer() const;

    // Validates against a schema (unknown keys, types, ranges, choices) and returns a copy with
    // defaults filled in. Throws ConfigError naming where().
    Params validated(const Schema& schema, const std::string& what) const;

    // A copy with `key` set to the JSON text `json_value`.
    Params with(const std::string& key, const std::string& json_value) const;

    struct Impl;
    explicit Params(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
    const Impl& impl() const { return *impl_; }

private:
    std::shared_ptr<const Impl> impl_;
};

// Levenshtein-based suggestion: the closest candidate within a small edit distance, or "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace flowlab
