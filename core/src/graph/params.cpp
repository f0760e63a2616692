// Params over nlohmann::json: the strict JSON parser, the accessors, and the helpers that
// place and describe a value in an error. Schemas (ParamSpec, validation, did-you-mean) are in
// params_schema.cpp.
#include "flowlab/params.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include "flowlab/errors.hpp"
#include "graph/json_internal.hpp"

namespace flowlab {

using nlohmann::json;

// ------------------------------------------------------------------------------- helpers

std::string json_pointer_token(const std::string& key) {
    std::string out;
    for (char c : key) {
        if (c == '~') out += "~0";
        else if (c == '/') out += "~1";
        else out += c;
    }
    return out;
}

std::string describe_json(const json& v) {
    std::string text = v.dump();
    if (text.size() > 40) text = text.substr(0, 37) + "...";
    switch (v.type()) {
        case json::value_t::null: return "null";
        case json::value_t::boolean: return "boolean " + text;
        case json::value_t::number_integer:
        case json::value_t::number_unsigned: return "integer " + text;
        case json::value_t::number_float: return "number " + text;
        case json::value_t::string: return "string " + text;
        case json::value_t::array: return "list " + text;
        case json::value_t::object: return "object " + text;
        default: return text;
    }
}

// 1e3 in a config means 1000: an integral float is accepted where an integer is expected.
bool as_integer(const json& v, std::int64_t& out) {
    if (v.is_number_integer()) {
        out = v.get<std::int64_t>();
        return true;
    }
    if (v.is_number_float()) {
        double d = v.get<double>();
        if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
            out = static_cast<std::int64_t>(d);
            return true;
        }
    }
    return false;
}

namespace {

// "text: line 3, column 7" from nlohmann's byte offset (1-based position of the bad byte).
void line_column(const std::string& text, std::size_t byte, std::size_t& line, std::size_t& col) {
    std::size_t end = std::min(byte == 0 ? 0 : byte - 1, text.size());
    line = 1;
    col = 1;
    for (std::size_t i = 0; i < end; ++i) {
        if (text[i] == '\n') {
            ++line;
            col = 1;
        } else {
            ++col;
        }
    }
}

// nlohmann's messages start with "[json.exception.parse_error.101] parse error at line 1,
// column 2: "; keep only the part after that, we print the location ourselves.
std::string strip_json_prefix(const std::string& what) {
    auto pos = what.find(": ");
    if (what.rfind("[json.exception", 0) == 0 && pos != std::string::npos) return what.substr(pos + 2);
    return what;
}

}  // namespace

// ------------------------------------------------------------------------------- Params

const json& params_json(const Params& p) { return p.impl().value; }

Params make_params(json value, std::string file, std::string pointer) {
    auto impl = std::make_shared<Params::Impl>();
    impl->value = std::move(value);
    impl->file = std::move(file);
    impl->pointer = std::move(pointer);
    return Params(std::shared_ptr<const Params::Impl>(std::move(impl)));
}

Params::Params() : Params(make_params(json::object(), "<defaults>", "")) {}

namespace {

// Where the strict parser is, as a JSON pointer: one frame per open object or list.
struct ParseFrame {
    bool is_list = false;
    std::size_t index = 0;  // lists: the index of the next element
    std::string key;        // objects: the last key read
    std::set<std::string> keys;
};

std::string frames_pointer(const std::vector<ParseFrame>& frames) {
    std::string out;
    for (const auto& f : frames) out += "/" + (f.is_list ? std::to_string(f.index) : json_pointer_token(f.key));
    return out.empty() ? "/" : out;
}

// A finished value (scalar or closed container) advances the enclosing list.
void count_value(std::vector<ParseFrame>& frames) {
    if (!frames.empty() && frames.back().is_list) ++frames.back().index;
}

}  // namespace

json parse_json_strict(const std::string& text, const std::string& file) {
    static const std::string kOutOfRange = "number out of range (a double reaches +-1.8e308)";
    // The checks run inside the parser so that a hostile file never gets built: a 70,000-deep
    // nesting would overflow the stack in the recursive copy and destruction of the value.
    std::vector<ParseFrame> frames;
    json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& parsed) -> bool {
        switch (ev) {
            case json::parse_event_t::object_start:
            case json::parse_event_t::array_start:
                if (frames.size() >= kMaxJsonDepth) {
                    throw ConfigError(file + ":" + frames_pointer(frames) + ": JSON nested deeper than " +
                                      std::to_string(kMaxJsonDepth) + " levels; a flowlab config is a few levels deep");
                }
                frames.push_back({ev == json::parse_event_t::array_start, 0, {}, {}});
                break;
            case json::parse_event_t::key: {
                auto& f = frames.back();
                f.key = parsed.get<std::string>();
                if (!f.keys.insert(f.key).second)
                    throw ConfigError(file + ":" + frames_pointer(frames) + ": duplicate key '" + f.key +
                                      "' (JSON keeps only one of them; remove or rename the other)");
                break;
            }
            case json::parse_event_t::object_end:
            case json::parse_event_t::array_end:
                frames.pop_back();
                count_value(frames);
                break;
            case json::parse_event_t::value:
                if (parsed.is_number_float() && !std::isfinite(parsed.get<double>()))
                    throw ConfigError(file + ":" + frames_pointer(frames) + ": " + kOutOfRange);
                count_value(frames);
                break;
        }
        return true;
    };
    try {
        return json::parse(text, cb);
    } catch (const json::parse_error& e) {
        std::size_t line = 0, col = 0;
        line_column(text, e.byte, line, col);
        throw ConfigError(file + ":" + std::to_string(line) + ": invalid JSON: " + strip_json_prefix(e.what()) +
                          " (column " + std::to_string(col) + ")");
    } catch (const json::out_of_range&) {
        // The lexer's number overflow (1e400): the frames still say where it stood.
        throw ConfigError(file + ":" + frames_pointer(frames) + ": " + kOutOfRange);
    } catch (const json::exception& e) {
        throw ConfigError(file + ": invalid JSON: " + strip_json_prefix(e.what()));
    }
}

Params Params::parse(const std::string& json_text, const std::string& file) {
    json v = parse_json_strict(json_text, file);
    if (!v.is_object()) throw ConfigError(file + ":/: expected a JSON object, got " + describe_json(v));
    return make_params(std::move(v), file, "");
}

namespace {
const json* find_key(const json& obj, const std::string& key) {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    return it == obj.end() ? nullptr : &*it;
}
}  // namespace

bool Params::has(const std::string& key) const {
    const json* v = find_key(impl_->value, key);
    return v && !v->is_null();
}

std::vector<std::string> Params::keys() const {
    std::vector<std::string> out;
    if (impl_->value.is_object())
        for (auto it = impl_->value.begin(); it != impl_->value.end(); ++it) out.push_back(it.key());
    return out;
}

namespace {
const json& require_key(const Params& p, const std::string& key) {
    const json* v = find_key(params_json(p), key);
    if (!v || v->is_null()) throw ConfigError(p.where(key) + ": missing parameter '" + key + "'");
    return *v;
}
[[noreturn]] void wrong_type(const Params& p, const std::string& key, const char* expected, const json& v) {
    throw ConfigError(p.where(key) + ": expected " + expected + ", got " + describe_json(v));
}
}  // namespace

std::int64_t Params::get_int(const std::string& key) const {
    const json& v = require_key(*this, key);
    std::int64_t out = 0;
    if (!as_integer(v, out)) wrong_type(*this, key, "integer", v);
    return out;
}

double Params::get_number(const std::string& key) const {
    const json& v = require_key(*this, key);
    if (!v.is_number()) wrong_type(*this, key, "number", v);
    return v.get<double>();
}

bool Params::get_bool(const std::string& key) const {
    const json& v = require_key(*this, key);
    if (!v.is_boolean()) wrong_type(*this, key, "boolean", v);
    return v.get<bool>();
}

std::string Params::get_string(const std::string& key) const {
    const json& v = require_key(*this, key);
    if (!v.is_string()) wrong_type(*this, key, "string", v);
    return v.get<std::string>();
}

std::vector<std::int64_t> Params::get_int_list(const std::string& key) const {
    const json& v = require_key(*this, key);
    if (!v.is_array()) wrong_type(*this, key, "list of integers", v);
    std::vector<std::int64_t> out;
    for (std::size_t i = 0; i < v.size(); ++i) {
        std::int64_t x = 0;
        if (!as_integer(v[i], x))
            throw ConfigError(where(key) + "/" + std::to_string(i) + ": expected integer, got " + describe_json(v[i]));
        out.push_back(x);
    }
    return out;
}

std::vector<double> Params::get_number_list(const std::string& key) const {
    const json& v = require_key(*this, key);
    if (!v.is_array()) wrong_type(*this, key, "list of numbers", v);
    std::vector<double> out;
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (!v[i].is_number())
            throw ConfigError(where(key) + "/" + std::to_string(i) + ": expected number, got " + describe_json(v[i]));
        out.push_back(v[i].get<double>());
    }
    return out;
}

Params Params::get_object(const std::string& key) const {
    const json& v = require_key(*this, key);
    if (!v.is_object()) wrong_type(*this, key, "an object", v);
    return make_params(v, impl_->file, impl_->pointer + "/" + json_pointer_token(key));
}

std::vector<Params> Params::get_object_list(const std::string& key) const {
    const json& v = require_key(*this, key);
    if (!v.is_array()) wrong_type(*this, key, "a list of objects", v);
    std::vector<Params> out;
    const std::string base = impl_->pointer + "/" + json_pointer_token(key);
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (!v[i].is_object())
            throw ConfigError(where(key) + "/" + std::to_string(i) + ": expected an object, got " + describe_json(v[i]));
        out.push_back(make_params(v[i], impl_->file, base + "/" + std::to_string(i)));
    }
    return out;
}

std::string Params::get_json(const std::string& key) const {
    const json* v = find_key(impl_->value, key);
    if (!v) throw ConfigError(where(key) + ": missing parameter '" + key + "'");
    return v->dump();
}

std::string Params::dump(int indent) const { return impl_->value.dump(indent); }

std::string Params::where() const {
    return impl_->file + ":" + (impl_->pointer.empty() ? std::string("/") : impl_->pointer);
}

std::string Params::where(const std::string& key) const {
    return impl_->file + ":" + impl_->pointer + "/" + json_pointer_token(key);
}

const std::string& Params::file() const { return impl_->file; }
const std::string& Params::pointer() const { return impl_->pointer; }

Params Params::with(const std::string& key, const std::string& json_value) const {
    json v;
    try {
        v = json::parse(json_value);
    } catch (const json::parse_error& e) {
        throw ConfigError(where(key) + ": invalid JSON value " + json_value + ": " + strip_json_prefix(e.what()));
    }
    json copy = impl_->value.is_object() ? impl_->value : json::object();
    copy[key] = std::move(v);
    return make_params(std::move(copy), impl_->file, impl_->pointer);
}

}  // namespace flowlab
