// Schemas: the ParamSpec constructors, validation against a Schema (Params::validated, which
// fills in the defaults) and the did-you-mean used by every "unknown X" error.
#include "flowlab/params.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

#include "flowlab/errors.hpp"
#include "graph/json_internal.hpp"

namespace flowlab {

using nlohmann::json;

// ------------------------------------------------------------------------------- helpers

const char* param_type_name(ParamType t) {
    switch (t) {
        case ParamType::integer: return "integer";
        case ParamType::number: return "number";
        case ParamType::boolean: return "boolean";
        case ParamType::string: return "string";
        case ParamType::int_list: return "list of integers";
        case ParamType::number_list: return "list of numbers";
        case ParamType::object: return "object";
        case ParamType::any: return "any";
        case ParamType::int_or_auto: return "integer or \"auto\"";
        case ParamType::string_list: return "list of strings";
    }
    return "?";
}

namespace {

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
    std::string out;
    for (std::size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
    return out;
}

std::string fmt_num(double v) {
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    char buf[64];
    if (v == std::floor(v) && std::fabs(v) < 1e15) std::snprintf(buf, sizeof buf, "%.0f", v);
    else std::snprintf(buf, sizeof buf, "%.10g", v);
    return buf;
}

json parse_default(const ParamSpec& s, const std::string& what) {
    try {
        return json::parse(s.default_json);
    } catch (const json::parse_error&) {
        throw ConfigError(what + ": the default of parameter '" + s.name + "' is not valid JSON: " + s.default_json);
    }
}

}  // namespace

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
    auto lower = [](std::string s) {
        for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        return s;
    };
    const std::string w = lower(word);
    if (w.empty()) return "";
    const std::size_t limit = std::max<std::size_t>(2, w.size() / 3);
    std::string best;
    std::size_t best_d = limit + 1;
    std::vector<std::size_t> prev, cur;
    for (const auto& cand_raw : candidates) {
        const std::string c = lower(cand_raw);
        if (c.empty()) continue;
        // Two-row Levenshtein.
        prev.assign(c.size() + 1, 0);
        cur.assign(c.size() + 1, 0);
        for (std::size_t j = 0; j <= c.size(); ++j) prev[j] = j;
        for (std::size_t i = 1; i <= w.size(); ++i) {
            cur[0] = i;
            for (std::size_t j = 1; j <= c.size(); ++j) {
                std::size_t sub = prev[j - 1] + (w[i - 1] == c[j - 1] ? 0 : 1);
                cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
            }
            std::swap(prev, cur);
        }
        std::size_t d = prev[c.size()];
        if (d < best_d) {
            best_d = d;
            best = cand_raw;
        }
    }
    return best_d <= limit ? best : "";
}

// ------------------------------------------------------------------------------- specs

namespace {
ParamSpec make_spec(std::string name, ParamType t, std::string def, std::string doc) {
    ParamSpec s;
    s.name = std::move(name);
    s.type = t;
    s.default_json = std::move(def);
    s.doc = std::move(doc);
    return s;
}
}  // namespace

ParamSpec param_int(std::string name, std::int64_t def, std::string doc) {
    return make_spec(std::move(name), ParamType::integer, std::to_string(def), std::move(doc));
}
ParamSpec param_number(std::string name, double def, std::string doc) {
    return make_spec(std::move(name), ParamType::number, json(def).dump(), std::move(doc));
}
ParamSpec param_bool(std::string name, bool def, std::string doc) {
    return make_spec(std::move(name), ParamType::boolean, def ? "true" : "false", std::move(doc));
}
ParamSpec param_string(std::string name, std::string def, std::string doc) {
    return make_spec(std::move(name), ParamType::string, json(def).dump(), std::move(doc));
}
ParamSpec param_int_list(std::string name, std::vector<std::int64_t> def, std::string doc) {
    return make_spec(std::move(name), ParamType::int_list, json(def).dump(), std::move(doc));
}
ParamSpec param_number_list(std::string name, std::vector<double> def, std::string doc) {
    return make_spec(std::move(name), ParamType::number_list, json(def).dump(), std::move(doc));
}
ParamSpec param_object(std::string name, std::string def_json, std::string doc) {
    ParamSpec s = make_spec(std::move(name), ParamType::object, std::move(def_json), std::move(doc));
    if (s.default_json == "null") s.nullable = true;  // a null default says null is a valid value
    return s;
}
ParamSpec param_required(std::string name, ParamType type, std::string doc) {
    return make_spec(std::move(name), type, "", std::move(doc));
}

// ------------------------------------------------------------------------------- validation

namespace {

std::string range_text(const ParamSpec& s) {
    bool lo = std::isfinite(s.min_value), hi = std::isfinite(s.max_value);
    if (lo && hi) return "must be in [" + fmt_num(s.min_value) + ", " + fmt_num(s.max_value) + "]";
    if (lo) return "must be >= " + fmt_num(s.min_value);
    return "must be <= " + fmt_num(s.max_value);
}

void check_range(const ParamSpec& s, double v, const std::string& where) {
    if (v < s.min_value || v > s.max_value || std::isnan(v))
        throw ConfigError(where + ": out of range: " + range_text(s) + ", got " + fmt_num(v));
}

// Checks one present, non-null value; returns it normalised (integral floats -> integers).
json check_value(const ParamSpec& s, const json& v, const std::string& where) {
    auto wrong = [&](const char* expected, const json& got, const std::string& at) {
        throw ConfigError(at + ": expected " + expected + ", got " + describe_json(got));
    };
    switch (s.type) {
        case ParamType::integer: {
            std::int64_t x = 0;
            if (!as_integer(v, x)) wrong("integer", v, where);
            check_range(s, static_cast<double>(x), where);
            return x;
        }
        case ParamType::number:
            if (!v.is_number()) wrong("number", v, where);
            check_range(s, v.get<double>(), where);
            return v;
        case ParamType::boolean:
            if (!v.is_boolean()) wrong("boolean", v, where);
            return v;
        case ParamType::string: {
            if (!v.is_string()) wrong("string", v, where);
            const std::string str = v.get<std::string>();
            if (!s.choices_.empty() && std::find(s.choices_.begin(), s.choices_.end(), str) == s.choices_.end()) {
                std::string msg = where + ": invalid value '" + str + "'";
                std::string dym = did_you_mean(str, s.choices_);
                if (!dym.empty()) msg += "; did you mean '" + dym + "'?";
                throw ConfigError(msg + " (choices: " + join(s.choices_) + ")");
            }
            return v;
        }
        case ParamType::int_list: {
            if (!v.is_array()) wrong("list of integers", v, where);
            json out = json::array();
            for (std::size_t i = 0; i < v.size(); ++i) {
                const std::string at = where + "/" + std::to_string(i);
                std::int64_t x = 0;
                if (!as_integer(v[i], x)) wrong("integer", v[i], at);
                check_range(s, static_cast<double>(x), at);
                out.push_back(x);
            }
            return out;
        }
        case ParamType::number_list: {
            if (!v.is_array()) wrong("list of numbers", v, where);
            for (std::size_t i = 0; i < v.size(); ++i) {
                const std::string at = where + "/" + std::to_string(i);
                if (!v[i].is_number()) wrong("number", v[i], at);
                check_range(s, v[i].get<double>(), at);
            }
            return v;
        }
        case ParamType::object:
            if (!v.is_object()) wrong("object", v, where);
            return v;
        case ParamType::any:
            return v;
        case ParamType::int_or_auto: {
            if (v.is_string() && v.get<std::string>() == "auto") return v;
            std::int64_t x = 0;
            if (!as_integer(v, x)) wrong("integer or \"auto\"", v, where);
            check_range(s, static_cast<double>(x), where);
            return x;
        }
        case ParamType::string_list: {
            if (!v.is_array()) wrong("list of strings", v, where);
            for (std::size_t i = 0; i < v.size(); ++i)
                if (!v[i].is_string()) wrong("string", v[i], where + "/" + std::to_string(i));
            return v;
        }
    }
    return v;
}

}  // namespace

Params Params::validated(const Schema& schema, const std::string& what) const {
    const json& in = impl_->value;
    if (!in.is_object()) throw ConfigError(where() + ": expected an object for " + what + ", got " + describe_json(in));

    std::vector<std::string> known;
    for (const auto& s : schema) known.push_back(s.name);

    // Unknown keys first: a typo is the most common mistake, and it also explains a
    // "missing required" that would otherwise be reported.
    for (auto it = in.begin(); it != in.end(); ++it) {
        const std::string& key = it.key();
        if (key == "type" || std::find(known.begin(), known.end(), key) != known.end()) continue;
        std::string msg = where(key) + ": unknown parameter '" + key + "' for " + what;
        std::string dym = did_you_mean(key, known);
        if (!dym.empty()) msg += "; did you mean '" + dym + "'?";
        msg += known.empty() ? std::string(" (it takes no parameters)") : " (known: " + join(known) + ")";
        throw ConfigError(msg);
    }

    json out = in;
    for (const auto& s : schema) {
        auto it = in.find(s.name);
        if (it == in.end()) {
            if (s.required())
                throw ConfigError(where() + ": missing required parameter '" + s.name + "' for " + what + " (" +
                                  param_type_name(s.type) + (s.doc.empty() ? "" : ": " + s.doc) + ")");
            out[s.name] = parse_default(s, what);
            continue;
        }
        if (it->is_null()) {
            if (s.nullable || s.type == ParamType::any) continue;
            throw ConfigError(where(s.name) + ": expected " + param_type_name(s.type) + ", got null");
        }
        out[s.name] = check_value(s, *it, where(s.name));
    }
    return make_params(std::move(out), impl_->file, impl_->pointer);
}

}  // namespace flowlab
