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
#include "flowlab/network.hpp"
#include "graph/graph_build.hpp"
#include "graph/graph_spec.hpp"
#include "graph/json_internal.hpp"
#include "graph/schemas.hpp"
#include "model/flow_graph.hpp"

namespace flowlab {

using nlohmann::json;
using namespace graph;

namespace {

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
    const GraphSpec spec = model_graph(model);
    std::unique_ptr<NetworkLibrary> networks;
    if (model.has("networks")) networks = std::make_unique<NetworkLibrary>(model.get_object("networks"));
    BuiltGraph built = build_graph(spec, model, event_shape, context_shape, registry, rng, networks.get());
    if (!built.graph->shared.empty()) {
        BuildContext base_ctx{built.graph->shared_shape, context_shape, &rng, &registry};
        base_ctx.networks = networks.get();
        built.graph->shared_base = registry.make_distribution(
            object_or_default(model, "base", kDefaultBase, registry, "base distribution"), base_ctx);
    }
    std::unique_ptr<Dequantizer> deq;
    if (model.has("dequantizer")) {
        BuildContext dctx{event_shape, context_shape, &rng, &registry};
        dctx.networks = networks.get();
        deq = registry.make_dequantizer(model.get_object("dequantizer"), dctx);
    }
    return std::make_unique<Flow>(std::move(built.graph), std::move(built.info), std::move(deq), event_shape,
                                  context_shape);
}

Params resolve_defaults(const Params& config, const Registry& registry) {
    json resolved = params_json(config);
    Params model = config.get_object("model"), train = config.get_object("train");
    // A graph whose outputs all have their own base needs no model.base.
    if (model.has("base") || needs_shared_base(model_graph(model)))
        resolved["model"]["base"] =
            params_json(object_or_default(model, "base", kDefaultBase, registry, "base distribution"));
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
    // Replicas share the process's threads, one at least each.
    const std::int64_t replicas = train.get_int("replicas");
    const std::int64_t budget = threads > 0 ? threads : static_cast<std::int64_t>(hw);
    if (budget > 0 && replicas > budget)
        throw ConfigError(train.where("replicas") + ": " + std::to_string(replicas) + " replicas need a thread each, " +
                          "and " + (threads > 0 ? "train.threads is " + std::to_string(threads)
                                                : "this machine has " + std::to_string(hw) + " hardware threads") +
                          "; more threads than cores would oversubscribe them and run slower: use at most " +
                          std::to_string(budget) + " replicas");
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

namespace {

// `j` with the keys a reader looks for first (what a node is and reads) leading, the rest in
// alphabetical order.
nlohmann::ordered_json reader_order(const json& j) {
    if (j.is_array()) {
        nlohmann::ordered_json a = nlohmann::ordered_json::array();
        for (const auto& v : j) a.push_back(reader_order(v));
        return a;
    }
    if (!j.is_object()) return nlohmann::ordered_json(j);
    static const char* first[] = {"flowlab", "name", "type", "input", "inputs", "context", "tensor", "seed", "plugins",
                                  "data", "model", "train", "eval", "output"};
    nlohmann::ordered_json o = nlohmann::ordered_json::object();
    for (const char* k : first)
        if (j.contains(k)) o[k] = reader_order(j[k]);
    for (auto it = j.begin(); it != j.end(); ++it)
        if (!o.contains(it.key())) o[it.key()] = reader_order(it.value());
    return o;
}

}  // namespace

std::string config_in_graph_form(const Params& config, int indent) {
    return reader_order(graph::config_in_graph_form(config)).dump(indent);
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
