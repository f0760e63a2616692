// The graph builder: a validated experiment becomes data, flow, optimizer and schedule.
#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "flowlab/errors.hpp"
#include "flowlab/builder.hpp"
#include "flowlab/plugin.hpp"
#include "graph/json_internal.hpp"
#include "graph/schemas.hpp"
#include "model/split.hpp"

namespace flowlab {

using nlohmann::json;
using namespace graph;

namespace {

void build_list(const std::vector<Params>& items, std::size_t first, bool in_repeat, Shape& shape,
                const Shape& context_shape, const Registry& registry, Rng& rng,
                std::vector<std::unique_ptr<Bijector>>& layers, std::vector<LayerInfo>& info);

// The plugin that registered bijector `type`, for messages about the layer (its name and file).
void origin_of(const Registry& registry, const std::string& type, LayerInfo& info) {
    const BijectorEntry* e = registry.bijectors.find(type);
    if (!e) return;
    info.plugin_path = e->origin;
    for (const auto& rec : registry.plugins)
        if (rec.path == e->origin) info.plugin = rec.name;
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
                          std::to_string(params_per_rep) + " parameters each needs at least " + format_gigabytes(bytes) +
                          " to train (parameters, gradients, optimizer state), more than the " +
                          format_gigabytes(static_cast<double>(memory)) + " available; lower the repeat count or the layer sizes");
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
            info.push_back({item.pointer(), "split", in, out, own, "", ""});
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
        info.push_back({item.pointer(), layer->type_name(), shape, out, layer->num_parameters(), "", ""});
        origin_of(registry, layer->type_name(), info.back());
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

namespace {

// Runs build(); an unknown type also names the plugins in `plugin_dirs` that provide it.
template <class Build>
Experiment with_provider_hint(const Registry& registry, const std::vector<std::string>& plugin_dirs, Build build) {
    try {
        return build();
    } catch (const UnknownTypeError& e) {
        const std::vector<PluginRecord> found = plugins_providing(e.kind(), e.name(), plugin_dirs, registry);
        if (found.empty()) throw;
        std::string hint = found.size() == 1 ? "; plugin " : "; plugins ";
        for (std::size_t i = 0; i < found.size(); ++i)
            hint += (i ? ", '" : "'") + found[i].name + "' (" + found[i].path + ")";
        hint += found.size() == 1 ? " provides it: add \"" + found[0].name + "\" to the config's \"plugins\""
                                  : " provide it: add one of them to the config's \"plugins\"";
        throw UnknownTypeError(e.what() + hint, e.kind(), e.name());
    }
}

// Flow, optimizer and schedule of a config whose defaults are resolved, for data of these shapes.
void build_model_parts(Experiment& exp, const Registry& registry, const Shape& event_shape,
                       const Shape& context_shape) {
    const Params& config = exp.config;
    Rng init_rng(static_cast<std::uint64_t>(config.get_int("seed")), 0);
    {
        // Training holds every parameter about four times (value, gradient, two optimizer
        // moments), so the parameters may take a quarter of the free memory at most.
        const std::uint64_t avail = available_memory_bytes();
        AllocationBudget budget(avail > 0 ? static_cast<std::size_t>(avail / 4) : SIZE_MAX,
                                "the model's parameters (training needs about 4x their size; a quarter of the " +
                                    format_gigabytes(static_cast<double>(avail)) + " available)");
        exp.flow = build_flow(config.get_object("model"), event_shape, context_shape, registry, init_rng);
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
}

}  // namespace

Experiment build_experiment(const Params& config, const Registry& registry, const std::vector<std::string>& plugin_dirs) {
    return with_provider_hint(registry, plugin_dirs, [&] { return build_experiment(config, registry); });
}

Experiment build_experiment(const Params& config_in, const Registry& registry) {
    Experiment exp;
    exp.config = resolve_defaults(config_in, registry);
    exp.data = load_dataset(exp.config, registry);
    build_model_parts(exp, registry, exp.data.event_shape, exp.data.context_shape);
    return exp;
}

Dataset load_dataset(const Params& config, const Registry& registry) {
    Dataset data = registry.make_dataset(config.get_object("data"), static_cast<std::uint64_t>(config.get_int("seed")));
    if (data.train.size() == 0) throw ConfigError(config.where("data") + ": the dataset has no training examples");
    return data;
}

Experiment build_model(const Params& config, const Registry& registry, const Shape& event_shape,
                       const Shape& context_shape, const std::vector<std::string>& plugin_dirs) {
    return with_provider_hint(registry, plugin_dirs, [&] {
        Experiment exp;
        exp.config = resolve_defaults(config, registry);
        exp.data.event_shape = event_shape;
        exp.data.context_shape = context_shape;
        build_model_parts(exp, registry, event_shape, context_shape);
        return exp;
    });
}

}  // namespace flowlab
