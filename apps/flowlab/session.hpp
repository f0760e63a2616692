// Session: what a command works on, loaded once the same way everywhere - a config file, a run
// directory to continue, or a trained run (directory or checkpoint) - with its plugins and its
// built experiment (flow, data, optimizer), and for a trained run its weights.
//
//   config  load_experiment(CONFIG, --set) -> its plugins, then --plugin ones (looked up in
//           --plugin-dir, $FLOWLAB_PLUGIN_PATH, flowlab's own) -> build_experiment
//   resume  load_run_config(RUN_DIR, --set) -> the same, also looking in the directories the
//           run's config.json recorded for its plugins -> build_experiment
//   trained flowlab::Model::load(RUN_DIR|CKPT) (the same as resume, then the newest or given
//           checkpoint's weights, the EMA copy preferred)
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "flowlab/experiment.hpp"
#include "flowlab/model.hpp"
#include "flowlab/registry.hpp"

namespace flowlab::cli {

class Args;

// The command-line options that decide how a session loads.
struct SessionOptions {
    std::vector<std::string> plugin_dirs;  // --plugin-dir
    std::vector<std::string> plugins;      // --plugin
    std::vector<std::string> sets;         // --set
    bool quiet = false;                    // --quiet
};
SessionOptions session_options(const Args& args);

class Session {
public:
    static Session from_config(const std::string& config_path, const SessionOptions& o);
    static Session from_run(const std::string& run_dir, const SessionOptions& o);
    // Prints "flowlab: loaded CKPT" to stderr unless o.quiet.
    static Session trained(const std::string& run_dir_or_checkpoint, const SessionOptions& o);

    Session(Session&&) noexcept;
    Session& operator=(Session&&) noexcept;
    ~Session();

    // The experiment as built: the validated config with every default resolved.
    const Params& config() const { return exp_->config; }
    Experiment& experiment() { return *exp_; }
    Flow& flow() { return *exp_->flow; }
    // Another copy of a config or resume session's experiment, for a replica on another thread
    // (train.replicas): the same config and plugins, a flow and optimizer of its own, the data
    // shared, not copied.
    Experiment replica() const;
    // The plugins loaded, in order, with their paths (what run records in config.json).
    const std::vector<PluginRecord>& plugins() const;

private:
    Session() = default;
    void build(const Params& cfg, const SessionOptions& o, const std::vector<std::string>& dirs);
    std::unique_ptr<Registry> registry_;  // before owned_: the flow's types come from its plugins
    std::unique_ptr<Experiment> owned_;   // config and resume sessions
    std::unique_ptr<Model> model_;        // trained sessions
    Experiment* exp_ = nullptr;           // owned_ or the model's
};

// The default plugin directories after --plugin-dir (config files and plugin commands).
std::vector<std::string> plugin_search_dirs(const SessionOptions& o);
// Every flowlab plugin in the search path (libflowlab_*.so, each file once), then --plugin ones:
// what `list` and `schema` show.
void load_all_plugins(Registry& reg, const SessionOptions& o);

}  // namespace flowlab::cli
