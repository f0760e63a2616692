#include "flowlab/model.hpp"

#include <filesystem>
#include <optional>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "flowlab/autodiff.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/experiment.hpp"
#include "flowlab/plugin.hpp"
#include "flowlab/run_dir.hpp"
#include "graph/json_internal.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace flowlab {

struct Model::Impl {
    // Declared first, destroyed last: the flow's types came from these plugins.
    std::unique_ptr<Registry> registry = std::make_unique<Registry>();
    Experiment exp;
    std::string run_dir, checkpoint;
    DType dtype = DType::f32;
    // A run that records its model's input shapes is loaded without its dataset; the dataset is
    // read the first time something asks for it (data(), experiment()).
    bool data_loaded = true;

    void ensure_data() {
        if (data_loaded) return;
        Dataset d = load_dataset(exp.config, *registry);
        if (d.event_shape != exp.data.event_shape || d.context_shape != exp.data.context_shape)
            throw ConfigError(run_dir + "/config.json: the model was trained on samples of shape " +
                              shape_str(exp.data.event_shape) + " (context " + shape_str(exp.data.context_shape) +
                              "), but the run's dataset now gives " + shape_str(d.event_shape) + " (context " +
                              shape_str(d.context_shape) + "); point data at the files it was trained on");
        exp.data = std::move(d);
        data_loaded = true;
    }
};

namespace {

// [batch, event...] (or [batch, latent...] for forward), converted to the model's dtype.
Tensor checked_batch(const Tensor& x, const Shape& event, DType dt, const char* what) {
    if (!x.defined()) throw ShapeError(std::string("Model::") + what + ": the input tensor is empty (undefined)");
    bool ok = x.dim() == static_cast<std::int64_t>(event.size()) + 1;
    for (std::size_t i = 0; ok && i < event.size(); ++i) ok = x.shape()[i + 1] == event[i];
    if (!ok)
        throw ShapeError(std::string("Model::") + what + ": input of shape " + shape_str(x.shape()) +
                         ", expected [batch, " + shape_str(event).substr(1));
    return x.to(dt);
}

Var context_var(const Tensor& context, const Shape& context_shape, std::int64_t batch, DType dt, const char* what) {
    if (context_shape.empty()) {
        if (context.defined())
            throw ShapeError(std::string("Model::") + what + ": this model takes no context, but one was given");
        return Var();
    }
    if (!context.defined())
        throw ShapeError(std::string("Model::") + what + ": this model is conditional: give a context of shape [batch, " +
                         shape_str(context_shape).substr(1));
    Tensor c = checked_batch(context, context_shape, dt, what);
    if (batch >= 0 && c.size(0) != batch)
        throw ShapeError(std::string("Model::") + what + ": " + std::to_string(c.size(0)) + " contexts for a batch of " +
                         std::to_string(batch));
    return Var(c);
}

}  // namespace

RunCheckpoint find_run_checkpoint(const std::string& target) {
    fs::path p(target);
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return {p.parent_path().parent_path().string(), p.string()};
    if (!fs::is_directory(p, ec)) throw IoError(target + ": no such run directory or checkpoint");
    auto cks = run_checkpoints(target);
    if (cks.empty()) throw IoError(target + ": no checkpoints in this run directory (" + target + "/checkpoints)");
    return {target, cks.front()};
}

std::vector<std::string> run_plugin_dirs(const std::string& run_dir, const std::vector<std::string>& first) {
    std::vector<std::string> dirs = first;
    for (auto& d : default_plugin_dirs()) dirs.push_back(d);
    std::ifstream f(fs::path(run_dir) / "config.json");
    if (!f) return dirs;
    std::stringstream ss;
    ss << f.rdbuf();
    json doc;
    try {
        doc = parse_json_strict(ss.str(), run_dir + "/config.json");
    } catch (const Error&) {
        return dirs;  // load_run_config reports what is wrong with the file
    }
    if (!doc.is_object() || !doc.contains("loaded_plugins") || !doc["loaded_plugins"].is_array()) return dirs;
    for (const auto& rec : doc["loaded_plugins"]) {
        if (!rec.is_object() || !rec.contains("path") || !rec["path"].is_string()) continue;
        std::error_code ec;
        const fs::path parent = fs::path(rec["path"].get<std::string>()).parent_path();
        if (!parent.empty() && fs::is_directory(parent, ec)) dirs.push_back(parent.string());
    }
    return dirs;
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& target, const ModelOptions& options) {
    auto impl = std::make_unique<Impl>();
    const RunCheckpoint rc = find_run_checkpoint(target);
    impl->run_dir = rc.run_dir;
    impl->checkpoint = rc.checkpoint;
    const Params cfg = load_run_config(rc.run_dir, options.overrides);
    const auto dirs = run_plugin_dirs(rc.run_dir, options.plugin_dirs);
    load_plugins(*impl->registry, experiment_plugins(cfg), dirs);
    load_plugins(*impl->registry, options.plugins, dirs);
    if (const std::optional<ModelInput> input = read_model_input(rc.run_dir)) {
        impl->exp = build_model(cfg, *impl->registry, input->event_shape, input->context_shape, dirs);
        impl->dtype = input->dtype;
        impl->data_loaded = false;
    } else {  // a run written before config.json recorded the shapes: they come from the data
        impl->exp = build_experiment(cfg, *impl->registry, dirs);
        impl->dtype = model_input_of(impl->exp.data).dtype;
    }
    load_weights(impl->exp, rc.checkpoint, options.prefer_ema);
    // Nothing trains a loaded model: the optimizer's state would only hold memory.
    impl->exp.optimizer.reset();
    impl->exp.schedule.reset();
    impl->exp.flow->set_training(false);
    return Model(std::move(impl));
}

Tensor Model::log_prob(const Tensor& x, const Tensor& context) {
    Tensor xb = checked_batch(x, event_shape(), dtype(), "log_prob");
    NoGradGuard guard;
    impl_->exp.flow->set_training(false);
    return impl_->exp.flow->log_prob(Var(xb), context_var(context, context_shape(), xb.size(0), dtype(), "log_prob"))
        .value();
}

Tensor Model::sample(std::int64_t n, Rng& rng, double temperature, const Tensor& context) {
    if (n < 0) throw ShapeError("Model::sample: n = " + std::to_string(n) + " samples; give n >= 0");
    NoGradGuard guard;
    impl_->exp.flow->set_training(false);
    Var c = context_var(context, context_shape(), n, dtype(), "sample");
    return impl_->exp.flow->sample(n, rng, temperature, c.defined() ? c.value() : Tensor());
}

Transformed Model::inverse(const Tensor& x, const Tensor& context) {
    Tensor xb = checked_batch(x, event_shape(), dtype(), "inverse");
    NoGradGuard guard;
    impl_->exp.flow->set_training(false);
    FlowResult r = impl_->exp.flow->inverse(Var(xb), context_var(context, context_shape(), xb.size(0), dtype(), "inverse"));
    return {r.out.value(), r.log_det.value()};
}

Transformed Model::forward(const Tensor& z, const Tensor& context) {
    if (!z.defined() || z.dim() < 1) throw ShapeError("Model::forward: give z as [batch, ...], as inverse() returns it");
    NoGradGuard guard;
    impl_->exp.flow->set_training(false);
    FlowResult r = impl_->exp.flow->forward(Var(z.to(dtype())), context_var(context, context_shape(), z.size(0), dtype(), "forward"));
    return {r.out.value(), r.log_det.value()};
}

const Shape& Model::event_shape() const { return impl_->exp.data.event_shape; }
const Shape& Model::context_shape() const { return impl_->exp.data.context_shape; }
DType Model::dtype() const { return impl_->dtype; }
std::int64_t Model::num_parameters() const { return impl_->exp.flow->num_parameters(); }
const Params& Model::config() const { return impl_->exp.config; }
const std::string& Model::run_dir() const { return impl_->run_dir; }
const std::string& Model::checkpoint() const { return impl_->checkpoint; }
const std::vector<PluginRecord>& Model::plugins() const { return impl_->registry->plugins; }
const Dataset& Model::data() const {
    impl_->ensure_data();
    return impl_->exp.data;
}
Flow& Model::flow() { return *impl_->exp.flow; }
Experiment& Model::experiment() {
    impl_->ensure_data();
    return impl_->exp;
}

}  // namespace flowlab
