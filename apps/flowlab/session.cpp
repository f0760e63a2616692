#include "session.hpp"

#include <cstdio>

#include "command.hpp"
#include "flowlab/plugin.hpp"

namespace flowlab::cli {

SessionOptions session_options(const Args& args) {
    return {args.list("plugin-dir"), args.list("plugin"), args.list("set"), args.flag("quiet")};
}

std::vector<std::string> plugin_search_dirs(const SessionOptions& o) {
    std::vector<std::string> dirs = o.plugin_dirs;
    for (auto& d : default_plugin_dirs()) dirs.push_back(d);
    return dirs;
}

// The config's plugins, then --plugin ones, then the experiment built from them.
void Session::build(const Params& cfg, const SessionOptions& o, const std::vector<std::string>& dirs) {
    registry_ = std::make_unique<Registry>();
    load_plugins(*registry_, experiment_plugins(cfg), dirs);
    load_plugins(*registry_, o.plugins, dirs);
    owned_ = std::make_unique<Experiment>(build_experiment(cfg, *registry_, dirs));
    exp_ = owned_.get();
}

Session Session::from_config(const std::string& config_path, const SessionOptions& o) {
    Session s;
    s.build(load_experiment(config_path, o.sets), o, plugin_search_dirs(o));
    return s;
}

Session Session::from_run(const std::string& run_dir, const SessionOptions& o) {
    Session s;
    s.build(load_run_config(run_dir, o.sets), o, run_plugin_dirs(run_dir, o.plugin_dirs));
    return s;
}

Session Session::trained(const std::string& target, const SessionOptions& o) {
    Session s;
    ModelOptions mo;
    mo.plugin_dirs = o.plugin_dirs;
    mo.plugins = o.plugins;
    mo.overrides = o.sets;
    s.model_ = std::make_unique<Model>(Model::load(target, mo));
    s.exp_ = &s.model_->experiment();
    if (!o.quiet) std::fprintf(stderr, "flowlab: loaded %s\n", s.model_->checkpoint().c_str());
    return s;
}

Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;
Session::~Session() = default;

Experiment Session::replica() const {
    if (!owned_) throw Error("a trained model's session has no replicas");
    Experiment e = build_model(owned_->config, *registry_, owned_->data.event_shape, owned_->data.context_shape);
    e.data = owned_->data;  // tensors share their storage
    return e;
}

const std::vector<PluginRecord>& Session::plugins() const {
    return model_ ? model_->plugins() : registry_->plugins;
}

void load_all_plugins(Registry& reg, const SessionOptions& o) {
    const std::vector<std::string> dirs = plugin_search_dirs(o);
    for (const auto& f : plugin_files(dirs)) load_plugin(reg, f);
    load_plugins(reg, o.plugins, dirs);
}

}  // namespace flowlab::cli
