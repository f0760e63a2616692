// Loading an experiment: the file read with a size limit, parsed strictly, --set overrides
// applied, validated against the experiment format.
#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "flowlab/errors.hpp"
#include "flowlab/config.hpp"
#include "graph/json_internal.hpp"
#include "graph/schemas.hpp"

namespace flowlab {

using nlohmann::json;
using namespace graph;
namespace fs = std::filesystem;

namespace {

// A config is small; a larger file is a mistake (or /dev/zero), refused before reading it all.
constexpr std::uintmax_t kMaxConfigBytes = 16u << 20;

std::string read_config_text(const std::string& path) {
    std::error_code ec;
    if (fs::is_directory(path, ec))
        throw IoError(path + ": is a directory, not a config file (give the .json file inside it)");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(path + ": cannot open the config file (check the path)");
    std::string text;
    char buf[1 << 16];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
        text.append(buf, static_cast<std::size_t>(in.gcount()));
        if (text.size() > kMaxConfigBytes)
            throw IoError(path + ": larger than " + std::to_string(kMaxConfigBytes >> 20) +
                          " MB; a flowlab config is a small JSON file (is this the right path?)");
    }
    if (in.bad()) throw IoError(path + ": read error");
    return text;
}
// --set a.b.c=value: value is parsed as JSON when it can be, else taken as a string.
void apply_override(json& root, const std::string& path, const std::string& assignment) {
    auto eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0)
        throw ConfigError("--set " + assignment + ": expected key.path=value (e.g. train.steps=100)");
    std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
    // A value that looks like JSON but is not (a typo in a list, 1e400) is an error; a bare
    // word is a string.
    json v;
    const std::string what = "--set " + key;
    const char first = value.empty() ? '\0' : value[0];
    if (first == '{' || first == '[' || first == '"' || first == '-' || (first >= '0' && first <= '9') ||
        value == "true" || value == "false" || value == "null") {
        v = parse_json_strict(value, what);
    } else {
        v = value;
    }
    json* node = &root;
    std::string pointer;
    std::stringstream ks(key);
    std::string part;
    std::vector<std::string> parts;
    while (std::getline(ks, part, '.')) parts.push_back(part);
    for (std::size_t i = 0; i < parts.size(); ++i) {
        const std::string& p = parts[i];
        pointer += "/" + p;
        bool last = i + 1 == parts.size();
        if (node->is_array()) {
            std::size_t idx = 0;
            try {
                idx = std::stoul(p);
            } catch (...) {
                throw ConfigError(path + ":" + pointer + ": --set " + key + ": '" + p + "' is not an index into a list");
            }
            if (idx >= node->size())
                throw ConfigError(path + ":" + pointer + ": --set " + key + ": index out of range (list has " +
                                  std::to_string(node->size()) + " items)");
            node = &(*node)[idx];
        } else {
            if (!node->is_object() && !node->is_null())
                throw ConfigError(path + ":" + pointer + ": --set " + key + ": cannot set a key inside a " +
                                  node->type_name());
            node = &(*node)[p];
        }
        if (last) *node = v;
    }
}

}  // namespace

Params load_experiment(const std::string& path, const std::vector<std::string>& overrides) {
    return load_experiment_json(parse_json_strict(read_config_text(path), path), path, "", overrides);
}

Params load_run_config(const std::string& run_dir, const std::vector<std::string>& overrides) {
    const std::string path = (fs::path(run_dir) / "config.json").string();
    std::error_code ec;
    if (!fs::exists(path, ec)) throw IoError(path + ": not found; is " + run_dir + " a flowlab run directory?");
    json whole = parse_json_strict(read_config_text(path), path);
    if (!whole.is_object() || !whole.contains("config"))
        throw IoError(path + ":/config: missing; this config.json was not written by flowlab run");
    return load_experiment_json(std::move(whole["config"]), path, "/config", overrides);
}

Params load_experiment_json(json root, const std::string& path, const std::string& pointer,
                            const std::vector<std::string>& overrides) {
    if (!root.is_object()) throw ConfigError(path + ":/: an experiment must be a JSON object");
    for (const auto& o : overrides) apply_override(root, path, o);
    if (!root.contains("name")) root["name"] = fs::path(path).stem().string();
    Params p = make_params(root, path, pointer).validated(experiment_schema(), "experiment");
    // Nested sections with fixed schemas are validated now so that a typo fails before any work.
    json resolved = params_json(p);
    resolved["model"] = params_json(p.get_object("model").validated(model_schema(), "model"));
    const Params train = p.get_object("train").validated(train_schema(), "train");
    resolved["train"] = params_json(train);
    resolved["train"]["distributed"] =
        params_json(train.get_object("distributed").validated(distributed_schema(), "train.distributed"));
    resolved["eval"] = params_json(p.get_object("eval").validated(eval_schema(), "eval"));
    if (!resolved["plugins"].is_array())
        throw ConfigError(p.where("plugins") + ": expected a list of plugin names, e.g. [\"standard\"]");
    for (std::size_t i = 0; i < resolved["plugins"].size(); ++i)
        if (!resolved["plugins"][i].is_string())
            throw ConfigError(p.where("plugins") + "/" + std::to_string(i) + ": expected a plugin name (string)");
    // A plugin given as a relative path is relative to the config file, not to wherever flowlab
    // was started, so that an experiment folder can be moved or run from anywhere.
    for (auto& plugin : resolved["plugins"]) {
        const std::string name = plugin.get<std::string>();
        const bool is_path = name.find('/') != std::string::npos ||
                             (name.size() > 3 && name.compare(name.size() - 3, 3, ".so") == 0);
        if (is_path && fs::path(name).is_relative())
            plugin = (fs::absolute(fs::path(path)).parent_path() / name).lexically_normal().string();
    }
    if (resolved["output"].get<std::string>().empty()) {
        // A fresh directory per run, so that a second run never overwrites the first.
        std::time_t now = std::time(nullptr);
        char stamp[32];
        std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
        resolved["output"] = "runs/" + resolved["name"].get<std::string>() + "-" + stamp;
    }
    return make_params(resolved, path, pointer);
}

std::vector<std::string> experiment_plugins(const Params& experiment) {
    std::vector<std::string> out;
    for (const auto& v : params_json(experiment)["plugins"]) out.push_back(v.get<std::string>());
    return out;
}

}  // namespace flowlab
