// The helpers of op.hpp that ops' factories call: input counts and sizes ("auto").
#include "flowlab/op.hpp"

#include <limits>

#include "flowlab/errors.hpp"
#include "graph/json_internal.hpp"

namespace flowlab {

using nlohmann::json;

void expect_inputs(const Params& p, const OpSpec& s, std::size_t min_inputs, std::size_t max_inputs) {
    const std::size_t n = s.inputs.size();
    if (n >= min_inputs && n <= max_inputs) return;
    std::string want;
    if (min_inputs == max_inputs) want = std::to_string(min_inputs);
    else if (max_inputs == std::numeric_limits<std::size_t>::max()) want = "at least " + std::to_string(min_inputs);
    else want = std::to_string(min_inputs) + " to " + std::to_string(max_inputs);
    const std::string type = p.has("type") ? "op '" + p.get_string("type") + "'" : std::string("this op");
    throw ConfigError(p.where("inputs") + ": " + type + " takes " + want + " input" + (want == "1" ? "" : "s") +
                      ", the node lists " + std::to_string(n) + "; fix its \"inputs\"");
}

std::int64_t op_size(const Params& p, const std::string& key, const OpSpec& s, std::int64_t per_unit) {
    const json& j = params_json(p);
    auto it = j.find(key);
    if (it != j.end() && it->is_string() && it->get<std::string>() == "auto") {
        if (s.auto_size <= 0)
            throw ConfigError(p.where(key) + ": \"auto\" sizes only the network's output node (to what the network "
                                             "must return, when its user fixes that); give this node a number");
        if (per_unit <= 0 || s.auto_size % per_unit != 0)
            throw ConfigError(p.where(key) + ": \"auto\" does not fit: the network must return " +
                              std::to_string(s.auto_size) + " values per sample, not a multiple of the " +
                              std::to_string(per_unit) + " that one unit of this op gives; give a number, and " +
                              "end the network with a node whose output has that size");
        return s.auto_size / per_unit;
    }
    const std::int64_t v = p.get_int(key);
    if (v < 1)
        throw ConfigError(p.where(key) + ": must be >= 1 (or \"auto\" on the output node), got " + std::to_string(v));
    return v;
}

}  // namespace flowlab
