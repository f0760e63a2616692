// Registry: one table per kind of registered type. Each entry has a name, a one-line doc, a
// parameter schema and a factory, and records its origin (the plugin file). The registry is an
// object, not a global: the plugin loader stages a plugin's registrations in a fresh Registry
// and merges it into the live one only if the whole registration succeeded.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "flowlab/bijector.hpp"
#include "flowlab/conditioner.hpp"
#include "flowlab/dataset.hpp"
#include "flowlab/dequantizer.hpp"
#include "flowlab/distribution.hpp"
#include "flowlab/op.hpp"
#include "flowlab/optimizer.hpp"
#include "flowlab/params.hpp"
#include "flowlab/rng.hpp"

namespace flowlab {

class Registry;
class NetworkLibrary;

// What a factory gets besides its validated parameters.
struct BuildContext {
    Shape event_shape;    // the per-sample input shape of this layer / distribution
    Shape context_shape;  // empty when the flow is unconditional
    Rng* rng = nullptr;   // for initialisation; deterministic per seed
    const Registry* registry = nullptr;  // to build nested types (e.g. a conditioner)
    // The model's named networks ("model.networks"), for the conditioners a layer builds: pass it
    // on in ConditionerSpec::networks. Null when the model defines none.
    NetworkLibrary* networks = nullptr;
};

// How the conformance suite exercises a bijector (the defaults suit most layers).
struct ConformanceHints {
    std::vector<Shape> shapes = {{5}};   // event shapes to test
    std::string params_json = "{}";       // parameters to build with (schema defaults fill the rest)
    double input_scale = 1.0;             // inputs ~ N(0, scale^2) (or uniform in (0,1) if unit_interval)
    bool unit_interval = false;           // inputs must lie in (0, 1) (e.g. logit)
    bool positive = false;                // inputs must be > 0
};

using BijectorFactory = std::function<std::unique_ptr<Bijector>(const Params&, const BuildContext&)>;
using DistributionFactory = std::function<std::unique_ptr<BaseDistribution>(const Params&, const BuildContext&)>;
using DequantizerFactory = std::function<std::unique_ptr<Dequantizer>(const Params&, const BuildContext&)>;
using OptimizerFactory = std::function<std::unique_ptr<Optimizer>(const Params&, std::vector<NamedVar>)>;
using ScheduleFactory = std::function<std::unique_ptr<Schedule>(const Params&)>;
using ConditionerFactory = std::function<std::unique_ptr<Conditioner>(const Params&, const ConditionerSpec&, Rng&)>;
using DatasetFactory = std::function<Dataset(const Params&, std::uint64_t seed)>;
using OpFactory = std::function<std::unique_ptr<Op>(const Params&, const OpSpec&, Rng&)>;

// The factory of a type built from its event shape alone (it takes no parameters), e.g.
//   reg.add_bijector({"squeeze", "space-to-depth 2x2", {}, from_event_shape<Bijector, Squeeze>()});
template <class Base, class T>
auto from_event_shape() {
    return [](const Params&, const BuildContext& c) -> std::unique_ptr<Base> { return std::make_unique<T>(c.event_shape); };
}

template <class Factory>
struct Entry {
    std::string name;
    std::string doc;
    Schema schema;
    Factory factory;
    ConformanceHints hints = {};  // used for bijectors only
    std::string origin = {};      // set by the registry: the plugin file, or "<builtin>"
};

using BijectorEntry = Entry<BijectorFactory>;
using DistributionEntry = Entry<DistributionFactory>;
using DequantizerEntry = Entry<DequantizerFactory>;
using OptimizerEntry = Entry<OptimizerFactory>;
using ScheduleEntry = Entry<ScheduleFactory>;
using ConditionerEntry = Entry<ConditionerFactory>;
using DatasetEntry = Entry<DatasetFactory>;
using OpEntry = Entry<OpFactory>;

template <class Factory>
class Table {
public:
    explicit Table(std::string kind) : kind_(std::move(kind)) {}
    const std::string& kind() const { return kind_; }
    // Throws PluginError on a duplicate name, naming both origins.
    void add(Entry<Factory> e, const std::string& origin);
    bool contains(const std::string& name) const { return entries_.count(name) != 0; }
    // Throws ConfigError "unknown <kind> 'x'; did you mean 'y'? (known: ...)" at `where`.
    const Entry<Factory>& get(const std::string& name, const std::string& where) const;
    const Entry<Factory>* find(const std::string& name) const;
    std::vector<std::string> names() const;
    const std::map<std::string, Entry<Factory>>& entries() const { return entries_; }

private:
    std::string kind_;
    std::map<std::string, Entry<Factory>> entries_;
};

// What a plugin knows of itself, recorded by the loader.
struct PluginRecord {
    std::string name, version, description, path;
    std::vector<std::string> required;  // plugins it builds types of by name (require_plugin)
};

// A default a plugin provides for a slot of the experiment that the config may leave out
// (set_default); `value` is the JSON object that fills it.
struct DefaultEntry {
    std::string value;
    std::string origin;
};

// The slots of an experiment whose default comes from the loaded plugins, not from the core.
inline constexpr const char* kDefaultBase = "model.base";
inline constexpr const char* kDefaultOptimizer = "train.optimizer";
inline constexpr const char* kDefaultSchedule = "train.schedule";

class Registry {
public:
    Registry();

    // The origin stamped on entries added from now on (the loader sets the plugin's path).
    void set_origin(std::string origin) { origin_ = std::move(origin); }
    const std::string& origin() const { return origin_; }

    void add_bijector(BijectorEntry e) { bijectors.add(std::move(e), origin_); }
    void add_distribution(DistributionEntry e) { distributions.add(std::move(e), origin_); }
    void add_dequantizer(DequantizerEntry e) { dequantizers.add(std::move(e), origin_); }
    void add_optimizer(OptimizerEntry e) { optimizers.add(std::move(e), origin_); }
    void add_schedule(ScheduleEntry e) { schedules.add(std::move(e), origin_); }
    void add_conditioner(ConditionerEntry e) { conditioners.add(std::move(e), origin_); }
    void add_dataset(DatasetEntry e) { datasets.add(std::move(e), origin_); }
    // An op of network graphs (op.hpp). Its schema may not declare "name" or "inputs", the keys
    // every node of a graph has besides the op's parameters.
    void add_op(OpEntry e);

    // Called by a plugin while it registers, e.g.
    //   reg.require_plugin("my_nets");                            // we build its "resnet" by name
    //   reg.set_default(kDefaultBase, R"({"type": "my_gaussian"})");
    // - require_plugin: its types build another plugin's types by name, so the loader loads that
    //   plugin too, or says it is missing (docs/WRITING_A_PLUGIN.md, "Requirements");
    // - set_default: what an experiment that leaves the slot out gets. The first loaded plugin
    //   that sets a slot provides it.
    void require_plugin(std::string name) { required_.push_back(std::move(name)); }
    void set_default(const std::string& slot, std::string json_object);
    // The default of `slot`, or nullptr when no loaded plugin provides one.
    const DefaultEntry* default_for(const std::string& slot) const;
    const std::map<std::string, DefaultEntry>& defaults() const { return defaults_; }
    // What require_plugin recorded (the loader moves it into the plugin's record).
    std::vector<std::string> take_required() { return std::move(required_); }

    // Builds a nested type from a {"type": ..., ...} object: looks it up, validates the
    // parameters against its schema (errors point into the config) and calls its factory.
    std::unique_ptr<Bijector> make_bijector(const Params& p, const BuildContext& c) const;
    std::unique_ptr<BaseDistribution> make_distribution(const Params& p, const BuildContext& c) const;
    std::unique_ptr<Dequantizer> make_dequantizer(const Params& p, const BuildContext& c) const;
    std::unique_ptr<Optimizer> make_optimizer(const Params& p, std::vector<NamedVar> params) const;
    std::unique_ptr<Schedule> make_schedule(const Params& p) const;
    std::unique_ptr<Conditioner> make_conditioner(const Params& p, const ConditionerSpec& s, Rng& rng) const;
    Dataset make_dataset(const Params& p, std::uint64_t seed) const;
    // A node of a network graph {"name": ..., "type": OP, "inputs": [...], parameters...}: the
    // parameters are validated against the op's schema (plus "name" and "inputs"). Network
    // (network.hpp) calls it; an op's own errors are the op's.
    std::unique_ptr<Op> make_op(const Params& p, const OpSpec& s, Rng& rng) const;

    // Moves every entry of `staged` into this registry; all or nothing (a duplicate name
    // throws PluginError before anything is committed).
    void merge(Registry&& staged);

    // Calls fn on each table in the order `flowlab list` shows them (bijectors first). fn takes
    // `const auto&` (the tables differ in type); given other registries, it gets their table of
    // the same kind too: reg.for_each_table([](const auto& mine, const auto& theirs) {...}, other).
    template <class Fn, class... Others>
    void for_each_table(Fn&& fn, const Others&... others) const {
        fn(bijectors, others.bijectors...);
        fn(distributions, others.distributions...);
        fn(dequantizers, others.dequantizers...);
        fn(conditioners, others.conditioners...);
        fn(ops, others.ops...);
        fn(optimizers, others.optimizers...);
        fn(schedules, others.schedules...);
        fn(datasets, others.datasets...);
    }

    std::vector<PluginRecord> plugins;  // loaded plugins, in load order

    Table<BijectorFactory> bijectors{"bijector"};
    Table<DistributionFactory> distributions{"base distribution"};
    Table<DequantizerFactory> dequantizers{"dequantizer"};
    Table<OptimizerFactory> optimizers{"optimizer"};
    Table<ScheduleFactory> schedules{"schedule"};
    Table<ConditionerFactory> conditioners{"conditioner"};
    Table<DatasetFactory> datasets{"dataset"};
    Table<OpFactory> ops{"op"};

private:
    std::string origin_ = "<builtin>";
    std::map<std::string, DefaultEntry> defaults_;
    std::vector<std::string> required_;
};

}  // namespace flowlab
