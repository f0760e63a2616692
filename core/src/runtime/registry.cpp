// Registry tables, the make_* entry points that validate a config object against the
// registered schema before calling a factory, and the all-or-nothing merge the plugin loader
// commits with.
#include "flowlab/registry.hpp"

#include <utility>

#include "flowlab/errors.hpp"
#include "graph/json_internal.hpp"

namespace flowlab {

namespace {

std::string join_names(const std::vector<std::string>& v) {
    std::string out;
    for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
    return out;
}

// A schema whose default is not JSON is a bug in the plugin; say so when it registers, not
// when a user's config happens to rely on the default.
void check_schema(const std::string& kind, const std::string& name, const Schema& schema) {
    for (std::size_t i = 0; i < schema.size(); ++i) {
        const ParamSpec& s = schema[i];
        if (s.name.empty()) throw PluginError(kind + " '" + name + "': parameter " + std::to_string(i) + " has no name");
        for (std::size_t j = 0; j < i; ++j)
            if (schema[j].name == s.name)
                throw PluginError(kind + " '" + name + "': parameter '" + s.name + "' is declared twice");
        if (!s.required() && !nlohmann::json::accept(s.default_json))
            throw PluginError(kind + " '" + name + "': the default of parameter '" + s.name +
                              "' is not valid JSON: " + s.default_json);
    }
}

}  // namespace

template <class Factory>
void Table<Factory>::add(Entry<Factory> e, const std::string& origin) {
    if (e.name.empty()) throw PluginError("a " + kind_ + " registered by " + origin + " has an empty name");
    if (!e.factory) throw PluginError(kind_ + " '" + e.name + "' registered by " + origin + " has no factory");
    check_schema(kind_, e.name, e.schema);
    auto it = entries_.find(e.name);
    if (it != entries_.end())
        throw PluginError("duplicate " + kind_ + " '" + e.name + "': registered by " + it->second.origin +
                          " and by " + origin);
    e.origin = origin;
    std::string name = e.name;
    entries_.emplace(std::move(name), std::move(e));
}

template <class Factory>
const Entry<Factory>& Table<Factory>::get(const std::string& name, const std::string& where) const {
    if (const Entry<Factory>* e = find(name)) return *e;
    std::string msg = (where.empty() ? "" : where + ": ") + "unknown " + kind_ + " '" + name + "'";
    std::vector<std::string> known = names();
    std::string dym = did_you_mean(name, known);
    if (!dym.empty()) msg += "; did you mean '" + dym + "'?";
    if (known.empty()) msg += " (no " + kind_ + " is registered; is the plugin that provides it loaded?)";
    else msg += " (known: " + join_names(known) + ")";
    throw UnknownTypeError(msg, kind_, name);
}

template <class Factory>
const Entry<Factory>* Table<Factory>::find(const std::string& name) const {
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
}

template <class Factory>
std::vector<std::string> Table<Factory>::names() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& kv : entries_) out.push_back(kv.first);
    return out;
}

template class Table<BijectorFactory>;
template class Table<DistributionFactory>;
template class Table<DequantizerFactory>;
template class Table<OptimizerFactory>;
template class Table<ScheduleFactory>;
template class Table<ConditionerFactory>;
template class Table<DatasetFactory>;
template class Table<OpFactory>;

Registry::Registry() = default;

namespace {

template <class Factory>
const Entry<Factory>& lookup(const Table<Factory>& t, const Params& p) {
    if (!p.has("type")) {
        std::vector<std::string> known = t.names();
        throw ConfigError(p.where() + ": missing \"type\": which " + t.kind() + " to build" +
                          (known.empty() ? std::string() : " (known: " + join_names(known) + ")"));
    }
    return t.get(p.get_string("type"), p.where("type"));
}

template <class Factory>
std::string what_of(const Table<Factory>& t, const Entry<Factory>& e) {
    return t.kind() + " '" + e.name + "'";
}

// Our own errors already say where and what; anything else thrown by a factory (a
// std::invalid_argument from a plugin, say) is given the config location.
template <class Fn>
auto call_factory(const Params& p, const std::string& what, Fn&& fn) {
    try {
        return fn();
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        throw ConfigError(p.where() + ": cannot build " + what + ": " + e.what());
    }
}

template <class Ptr>
Ptr non_null(Ptr ptr, const Params& p, const std::string& what, const std::string& origin) {
    if (!ptr) throw PluginError(p.where() + ": the factory of " + what + " (" + origin + ") returned nothing");
    return ptr;
}

// Builds the type `p` names: validates `p` against the type's schema and calls its factory with
// the validated parameters and `args`. A factory that returns nothing is the plugin's fault.
template <class Factory, class... Args>
auto build(const Table<Factory>& t, const Params& p, Args&&... args) {
    const auto& e = lookup(t, p);
    const std::string what = what_of(t, e);
    Params v = p.validated(e.schema, what);
    return non_null(call_factory(p, what, [&] { return e.factory(v, std::forward<Args>(args)...); }), p, what,
                    e.origin);
}

}  // namespace

std::unique_ptr<Bijector> Registry::make_bijector(const Params& p, const BuildContext& c) const {
    auto b = build(bijectors, p, c);
    b->set_type_name(p.get_string("type"));  // the name it is registered under
    if (!c.event_shape.empty()) b->set_event_shape(c.event_shape);
    return b;
}

std::unique_ptr<BaseDistribution> Registry::make_distribution(const Params& p, const BuildContext& c) const {
    auto d = build(distributions, p, c);
    if (!c.event_shape.empty()) d->set_event_shape(c.event_shape);
    return d;
}

std::unique_ptr<Dequantizer> Registry::make_dequantizer(const Params& p, const BuildContext& c) const {
    return build(dequantizers, p, c);
}

std::unique_ptr<Optimizer> Registry::make_optimizer(const Params& p, std::vector<NamedVar> params) const {
    const auto& e = lookup(optimizers, p);
    const std::string what = what_of(optimizers, e);
    Params v = p.validated(e.schema, what);
    auto o = non_null(call_factory(p, what, [&] { return e.factory(v, std::move(params)); }), p, what, e.origin);
    // Every optimizer's learning rate is "lr"; setting it here keeps the trainer's schedule
    // correct even when a factory forgets to.
    if (v.has("lr") && params_json(v)["lr"].is_number()) o->set_base_lr(v.get_number("lr"));
    return o;
}

std::unique_ptr<Schedule> Registry::make_schedule(const Params& p) const { return build(schedules, p); }

std::unique_ptr<Conditioner> Registry::make_conditioner(const Params& p, const ConditionerSpec& s, Rng& rng) const {
    if (s.registry) return build(conditioners, p, s, rng);
    ConditionerSpec with_registry = s;  // a conditioner that builds ops needs a registry: this one
    with_registry.registry = this;
    return build(conditioners, p, with_registry, rng);
}

namespace {
// The keys of a graph node that belong to the graph, not to its op.
const char* const kNodeKeys[] = {"name", "inputs"};
}  // namespace

void Registry::add_op(OpEntry e) {
    for (const char* key : kNodeKeys)
        for (const ParamSpec& spec : e.schema)
            if (spec.name == key)
                throw PluginError("op '" + e.name + "' registered by " + origin_ + ": its schema declares '" + key +
                                  "', which every node of a network has (the node's " +
                                  (std::string(key) == "name" ? "name" : "input list") + "); rename the parameter");
    ops.add(std::move(e), origin_);
}

std::unique_ptr<Op> Registry::make_op(const Params& p, const OpSpec& s, Rng& rng) const {
    const auto& e = lookup(ops, p);
    const std::string what = what_of(ops, e);
    Schema schema = e.schema;
    schema.push_back(param_required("name", ParamType::string, "the node's name, unique in its network"));
    schema.push_back(param_required("inputs", ParamType::string_list, "the nodes or network inputs it reads"));
    Params v = p.validated(schema, what);
    return non_null(call_factory(p, what, [&] { return e.factory(v, s, rng); }), p, what, e.origin);
}

Dataset Registry::make_dataset(const Params& p, std::uint64_t seed) const {
    const auto& e = lookup(datasets, p);
    const std::string what = what_of(datasets, e);
    Params v = p.validated(e.schema, what);
    return call_factory(p, what, [&] { return e.factory(v, seed); });
}

namespace {

template <class Factory>
void check_no_clash(const Table<Factory>& live, const Table<Factory>& staged) {
    for (const auto& kv : staged.entries())
        if (const auto* old = live.find(kv.first))
            throw PluginError("duplicate " + live.kind() + " '" + kv.first + "': registered by " + old->origin +
                              " and by " + kv.second.origin);
}

template <class Factory>
void move_all(Table<Factory>& live, const Table<Factory>& staged) {
    for (const auto& kv : staged.entries()) live.add(kv.second, kv.second.origin);
}

}  // namespace

void Registry::merge(Registry&& staged) {
    // Every clash is found before anything is committed, so a failed merge changes nothing.
    check_no_clash(bijectors, staged.bijectors);
    check_no_clash(distributions, staged.distributions);
    check_no_clash(dequantizers, staged.dequantizers);
    check_no_clash(optimizers, staged.optimizers);
    check_no_clash(schedules, staged.schedules);
    check_no_clash(conditioners, staged.conditioners);
    check_no_clash(datasets, staged.datasets);
    check_no_clash(ops, staged.ops);
    move_all(bijectors, staged.bijectors);
    move_all(distributions, staged.distributions);
    move_all(dequantizers, staged.dequantizers);
    move_all(optimizers, staged.optimizers);
    move_all(schedules, staged.schedules);
    move_all(conditioners, staged.conditioners);
    move_all(datasets, staged.datasets);
    move_all(ops, staged.ops);
    for (auto& [slot, d] : staged.defaults_) defaults_.emplace(slot, std::move(d));  // an earlier plugin's stays
    staged.defaults_.clear();
    for (auto& rec : staged.plugins) plugins.push_back(std::move(rec));
    staged.plugins.clear();
}

void Registry::set_default(const std::string& slot, std::string json_object) {
    if (slot != kDefaultBase && slot != kDefaultOptimizer && slot != kDefaultSchedule)
        throw PluginError("set_default: unknown slot '" + slot + "' (known: " + kDefaultBase + ", " +
                          kDefaultOptimizer + ", " + kDefaultSchedule + ")");
    defaults_.emplace(slot, DefaultEntry{std::move(json_object), origin_});
}

const DefaultEntry* Registry::default_for(const std::string& slot) const {
    auto it = defaults_.find(slot);
    return it == defaults_.end() ? nullptr : &it->second;
}

}  // namespace flowlab
