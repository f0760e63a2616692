// Loading, validating and building an experiment from its JSON file.
#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "flowlab/errors.hpp"
#include "flowlab/experiment.hpp"
#include "flowlab/version.hpp"
#include "json_internal.hpp"
#include "split.hpp"

namespace flowlab {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

ParamSpec plugins_spec() {
    ParamSpec s;
    s.name = "plugins";
    s.type = ParamType::any;
    // Which shipped plugins a config without "plugins" loads is the plugin tier's choice, made
    // in the build (FLOWLAB_DEFAULT_PLUGINS), not the core's.
    s.default_json = FLOWLAB_DEFAULT_PLUGINS_JSON;
    s.doc = "plugin names (libflowlab_<name>.so) or paths to load";
    return s;
}

// The top level of an experiment file. Nested objects are validated against their own
// schemas (the registry's, or the ones below) when they are built.
Schema experiment_schema() {
    return {
        param_int("flowlab", 1, "config format version").range(1, 1),
        param_string("name", "experiment", "name of the experiment (default run directory runs/<name>)"),
        param_int("seed", 0, "seed of the model init, batch order and dequantisation noise").min(0),
        plugins_spec(),
        param_required("data", ParamType::object, "dataset: {\"type\": ..., parameters}"),
        param_required("model", ParamType::object, "flow: {\"base\", \"dequantizer\", \"layers\"}"),
        param_object("train", "{}", "training loop settings"),
        param_object("eval", "{}", "evaluation settings"),
        param_string("output", "", "run directory (default runs/<name>)"),
    };
}

Schema model_schema() {
    return {
        param_object("base", "null", "base distribution (null: the loaded plugins' default, see flowlab list)")
            .allow_null(),
        param_object("dequantizer", "null", "dequantizer for discrete data (null = none)").allow_null(),
        param_required("layers", ParamType::any, "list of layers or {\"repeat\": N, \"layers\": [...]} blocks"),
    };
}

Schema train_schema() {
    return {
        param_int("batch_size", 256, "training batch size").min(1),
        param_int("steps", 1000, "optimizer steps").min(0),
        param_number("clip_grad_norm", 1.0, "clip the global gradient 2-norm to this (0 = off)").min(0),
        param_object("optimizer", "null", "optimizer (null: the loaded plugins' default, see flowlab list)").allow_null(),
        param_object("schedule", "null", "learning-rate schedule (null: the loaded plugins' default)").allow_null(),
        param_int("eval_every", 0, "evaluate on the test split every N steps (0 = at the end only)").min(0),
        param_int("log_every", 100, "log the training loss every N steps").min(1),
        param_int("threads", 0, "threads for GEMMs and element-wise kernels (0 = all cores)").range(0, 4096),
        param_int("max_bad_steps", 20, "abort after this many consecutive non-finite steps").min(1),
        param_int("checkpoint_every", 1000, "write a checkpoint every N steps (and always at the end)").min(1),
        param_number("ema_decay", 0.0, "exponential moving average of the parameters (bias-corrected), used "
                                       "for evaluation and sampling (0 = off; e.g. 0.999)").range(0, 1),
        param_int("early_stopping_patience", 0, "stop when the validation NLL has not improved for this many "
                                                "evaluations (0 = off; needs a validation split and eval_every)").min(0),
    };
}

Schema split_schema();

Schema eval_schema() {
    return {
        param_int("batch_size", 2000, "evaluation batch size").min(1),
        param_int("samples", 1000, "samples drawn at the end of a run (written to samples.csv)").min(0),
        param_number("temperature", 1.0, "sampling temperature").min(0),
        param_int("importance_samples", 1, "importance samples per example for the test bound of a "
                                           "stochastic dequantizer, uniform or variational (1 = the ELBO)").min(1),
    };
}

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
    resolved["train"] = params_json(p.get_object("train").validated(train_schema(), "train"));
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

std::vector<std::string> experiment_plugins(const Params& experiment) {
    std::vector<std::string> out;
    for (const auto& v : params_json(experiment)["plugins"]) out.push_back(v.get<std::string>());
    return out;
}

namespace {

Schema split_schema() {
    return {
        param_int("keep", 0, "channels (features) kept for the rest of the chain; 0 = half").min(0),
        param_object("prior", "null", "conditioner for a learned Gaussian prior of the factored part "
                                      "given the kept part (null = standard normal)").allow_null(),
    };
}

void build_list(const std::vector<Params>& items, std::size_t first, bool in_repeat, Shape& shape,
                const Shape& context_shape, const Registry& registry, Rng& rng,
                std::vector<std::unique_ptr<Bijector>>& layers, std::vector<LayerInfo>& info);

std::string gigabytes(double bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f GB", bytes / 1e9);
    return buf;
}

// A flow far beyond the machine fails here with its size, not after filling the memory. Training
// holds each parameter four times (value, gradient, two Adam moments) in f32; per-layer objects
// and activations come on top, so the bound is a floor of what the run would need.
constexpr std::int64_t kMaxLayers = 1'000'000;
void check_repeat_size(const Params& item, std::int64_t repeat, std::int64_t layers_per_rep, std::int64_t params_per_rep) {
    const double layers = static_cast<double>(repeat) * static_cast<double>(layers_per_rep);
    if (layers > static_cast<double>(kMaxLayers))
        throw ConfigError(item.where("repeat") + ": repeat " + std::to_string(repeat) + " makes " +
                          std::to_string(static_cast<long long>(layers)) + " layers, more than the limit of " +
                          std::to_string(kMaxLayers) + "; a deep flow has hundreds");
    const double bytes = static_cast<double>(repeat) * static_cast<double>(params_per_rep) * 4.0 * sizeof(float);
    const std::uint64_t memory = available_memory_bytes();
    if (memory > 0 && bytes > static_cast<double>(memory))
        throw ConfigError(item.where("repeat") + ": repeat " + std::to_string(repeat) + " of " +
                          std::to_string(params_per_rep) + " parameters each needs at least " + gigabytes(bytes) +
                          " to train (parameters, gradients, optimizer state), more than the " +
                          gigabytes(static_cast<double>(memory)) + " available; lower the repeat count or the layer sizes");
}

void build_layers(const Params& list_owner, const std::string& key, bool in_repeat, Shape& shape,
                  const Shape& context_shape, const Registry& registry, Rng& rng,
                  std::vector<std::unique_ptr<Bijector>>& layers, std::vector<LayerInfo>& info) {
    const json& list = params_json(list_owner)[key];
    if (!list.is_array())
        throw ConfigError(list_owner.where(key) + ": expected a list of layers, e.g. [{\"type\": \"reverse\"}]");
    build_list(list_owner.get_object_list(key), 0, in_repeat, shape, context_shape, registry, rng, layers, info);
}

void build_list(const std::vector<Params>& items, std::size_t first, bool in_repeat, Shape& shape,
                const Shape& context_shape, const Registry& registry, Rng& rng,
                std::vector<std::unique_ptr<Bijector>>& layers, std::vector<LayerInfo>& info) {
    for (std::size_t i = first; i < items.size(); ++i) {
        const Params& item = items[i];
        const json& j = params_json(item);
        if (j.contains("repeat")) {
            for (auto it = j.begin(); it != j.end(); ++it)
                if (it.key() != "repeat" && it.key() != "layers")
                    throw ConfigError(item.where(it.key()) + ": unknown key '" + it.key() +
                                      "' in a repeat block; a block has only \"repeat\" and \"layers\"");
            if (!j["repeat"].is_number_integer() || j["repeat"].get<std::int64_t>() < 1)
                throw ConfigError(item.where("repeat") + ": expected a positive integer");
            if (!j.contains("layers"))
                throw ConfigError(item.where() + ": a repeat block needs \"layers\": [...]");
            std::int64_t n = j["repeat"].get<std::int64_t>();
            const std::size_t info_before = info.size();
            build_layers(item, "layers", true, shape, context_shape, registry, rng, layers, info);
            // One repetition is built; check what all of them would cost before building the rest.
            std::int64_t per_rep_params = 0;
            for (std::size_t k = info_before; k < info.size(); ++k) per_rep_params += info[k].num_parameters;
            check_repeat_size(item, n, static_cast<std::int64_t>(info.size() - info_before), per_rep_params);
            for (std::int64_t r = 1; r < n; ++r)
                build_layers(item, "layers", true, shape, context_shape, registry, rng, layers, info);
            continue;
        }
        if (!j.contains("type"))
            throw ConfigError(item.where() + ": a layer needs a \"type\" (or is a {\"repeat\": N, \"layers\": [...]} block)");
        if (j["type"] == "split") {
            // The graph's multi-scale node: the rest of this list runs on the kept channels.
            if (in_repeat)
                throw ConfigError(item.where("type") + ": a split cannot stand inside a repeat block; "
                                  "put it in the enclosing list (the layers after it act on the kept part)");
            Params sp = item.validated(split_schema(), "split");
            if (shape.empty() || shape[0] < 2)
                throw ConfigError(item.where() + ": split needs at least 2 channels, the input here is " + shape_str(shape));
            std::int64_t keep = sp.get_int("keep") > 0 ? sp.get_int("keep") : shape[0] / 2;
            if (keep >= shape[0])
                throw ConfigError(sp.where("keep") + ": keep " + std::to_string(keep) + " must be below the " +
                                  std::to_string(shape[0]) + " channels of the input " + shape_str(shape));
            Shape in = shape, kept = shape;
            kept[0] = keep;
            std::unique_ptr<Conditioner> prior;
            if (sp.has("prior")) {
                Shape pout = shape;
                pout[0] = 2 * (shape[0] - keep);
                prior = registry.make_conditioner(sp.get_object("prior"), ConditionerSpec{kept, pout, context_shape, true}, rng);
            }
            std::vector<std::unique_ptr<Bijector>> rest;
            std::vector<LayerInfo> rest_info;
            Shape rest_shape = kept;
            build_list(items, i + 1, false, rest_shape, context_shape, registry, rng, rest, rest_info);
            auto split = std::make_unique<SplitBijector>(in, keep, std::move(rest), std::move(prior));
            split->set_type_name("split");
            Shape out = split->output_shape(in);
            std::int64_t own = split->num_parameters();
            for (const auto& ri : rest_info) own -= ri.num_parameters;
            info.push_back({item.pointer(), "split", in, out, own});
            info.insert(info.end(), rest_info.begin(), rest_info.end());
            shape = out;
            layers.push_back(std::move(split));
            return;
        }
        BuildContext ctx{shape, context_shape, &rng, &registry};
        std::unique_ptr<Bijector> layer;
        try {
            layer = registry.make_bijector(item, ctx);
        } catch (const ConfigError&) {
            throw;
        } catch (const Error& e) {
            throw ConfigError(item.where() + ": cannot build layer '" + j["type"].get<std::string>() + "': " + e.what());
        }
        Shape out = layer->output_shape(shape);
        info.push_back({item.pointer(), layer->type_name(), shape, out, layer->num_parameters()});
        shape = out;
        layers.push_back(std::move(layer));
    }
}

// `owner`'s object `key`, or, when the config leaves it out (null), the default a loaded plugin
// provides for `slot` - located at the same pointer, so that errors still point into the file.
Params object_or_default(const Params& owner, const std::string& key, const char* slot, const Registry& registry,
                         const char* what) {
    if (owner.has(key)) return owner.get_object(key);
    const DefaultEntry* d = registry.default_for(slot);
    if (!d)
        throw ConfigError(owner.where(key) + ": no " + what + " given, and no loaded plugin provides a default " +
                          "(flowlab list shows the registered types); give one, e.g. {\"type\": ...}");
    json value = parse_json_strict(d->value, "default of " + std::string(slot) + " from " + d->origin);
    return make_params(std::move(value), owner.file(), owner.pointer() + "/" + json_pointer_token(key));
}

}  // namespace

std::unique_ptr<Flow> build_flow(const Params& model_in, const Shape& event_shape, const Shape& context_shape,
                                 const Registry& registry, Rng& rng) {
    Params model = model_in.validated(model_schema(), "model");
    std::vector<std::unique_ptr<Bijector>> layers;
    std::vector<LayerInfo> info;
    Shape shape = event_shape;
    build_layers(model, "layers", false, shape, context_shape, registry, rng, layers, info);
    BuildContext base_ctx{shape, context_shape, &rng, &registry};
    auto base = registry.make_distribution(object_or_default(model, "base", kDefaultBase, registry, "base distribution"),
                                           base_ctx);
    std::unique_ptr<Dequantizer> deq;
    if (model.has("dequantizer")) {
        BuildContext dctx{event_shape, context_shape, &rng, &registry};
        deq = registry.make_dequantizer(model.get_object("dequantizer"), dctx);
    }
    return std::make_unique<Flow>(std::move(layers), std::move(info), std::move(base), std::move(deq), event_shape,
                                  context_shape);
}

Params resolve_defaults(const Params& config, const Registry& registry) {
    json resolved = params_json(config);
    Params model = config.get_object("model"), train = config.get_object("train");
    resolved["model"]["base"] = params_json(object_or_default(model, "base", kDefaultBase, registry, "base distribution"));
    resolved["train"]["optimizer"] =
        params_json(object_or_default(train, "optimizer", kDefaultOptimizer, registry, "optimizer"));
    resolved["train"]["schedule"] =
        params_json(object_or_default(train, "schedule", kDefaultSchedule, registry, "learning-rate schedule"));
    return make_params(std::move(resolved), config.file(), config.pointer());
}

Experiment build_experiment(const Params& config_in, const Registry& registry) {
    Experiment exp;
    const Params config = resolve_defaults(config_in, registry);
    exp.config = config;
    auto seed = static_cast<std::uint64_t>(config.get_int("seed"));
    exp.data = registry.make_dataset(config.get_object("data"), seed);
    if (exp.data.train.size() == 0)
        throw ConfigError(config.where("data") + ": the dataset has no training examples");
    Rng init_rng(seed, 0);
    {
        // Training holds every parameter about four times (value, gradient, two optimizer
        // moments), so the parameters may take a quarter of the free memory at most.
        const std::uint64_t avail = available_memory_bytes();
        AllocationBudget budget(avail > 0 ? static_cast<std::size_t>(avail / 4) : SIZE_MAX,
                                "the model's parameters (training needs about 4x their size; a quarter of the " +
                                    gigabytes(static_cast<double>(avail)) + " available)");
        exp.flow = build_flow(config.get_object("model"), exp.data.event_shape, exp.data.context_shape, registry,
                              init_rng);
    }
    if (exp.flow->named_parameters().empty())
        throw ConfigError(config.where("model") + ": the model has no trainable parameters (model.layers is empty "
                          "or has only fixed layers, and the base is fixed); add a layer with parameters");
    Params train = config.get_object("train");
    // More threads than hardware threads only fight over the cores (20 steps took two orders of
    // magnitude longer at 10,000 threads).
    const std::int64_t threads = train.get_int("threads");
    const unsigned hw = std::thread::hardware_concurrency();
    if (hw > 0 && threads > static_cast<std::int64_t>(hw))
        throw ConfigError(train.where("threads") + ": " + std::to_string(threads) + " threads on a machine with " +
                          std::to_string(hw) + " hardware threads would oversubscribe the cores and run slower; " +
                          "use at most " + std::to_string(hw) + ", or 0 for all of them");
    exp.optimizer = registry.make_optimizer(train.get_object("optimizer"), exp.flow->named_parameters());
    exp.schedule = registry.make_schedule(train.get_object("schedule"));
    return exp;
}

}  // namespace flowlab
