#include "flowlab/run_dir.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "flowlab/checkpoint.hpp"
#include "flowlab/version.hpp"
#include "graph/graph_spec.hpp"
#include "graph/json_internal.hpp"

namespace flowlab {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// nlohmann writes NaN and Inf as null already; saying so here keeps the intent visible.
json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

}  // namespace

void write_run_config(const std::string& run_dir, const Params& config, const std::vector<PluginRecord>& plugins,
                      const ModelInput& input, int ranks) {
    json loaded = json::array();
    for (const auto& p : plugins) loaded.push_back({{"name", p.name}, {"version", p.version}, {"path", p.path}});
    const json model_input = {{"event_shape", input.event_shape},
                              {"context_shape", input.context_shape},
                              {"dtype", dtype_name(input.dtype)}};
    // The model in the graph form: what was built, node by node, whichever form the file used.
    json doc = {{"config", graph::config_in_graph_form(config)},
                {"flowlab_version", FLOWLAB_VERSION_STRING},
                {"loaded_plugins", loaded},
                {"model_input", model_input},
                {"ranks", ranks}};
    write_file_atomic(run_dir + "/config.json", doc.dump(2) + "\n");
}

std::optional<ModelInput> read_model_input(const std::string& run_dir) {
    std::ifstream f(fs::path(run_dir) / "config.json");
    if (!f) return std::nullopt;
    std::stringstream ss;
    ss << f.rdbuf();
    // Anything unexpected means "not recorded": the model is then built from its dataset, as
    // for a run written before the record existed.
    try {
        const json doc = json::parse(ss.str());
        const json& m = doc.at("model_input");
        ModelInput in;
        in.event_shape = m.at("event_shape").get<Shape>();
        in.context_shape = m.at("context_shape").get<Shape>();
        const std::string dt = m.at("dtype").get<std::string>();
        if (dt != dtype_name(DType::f32) && dt != dtype_name(DType::f64)) return std::nullopt;
        in.dtype = dt == dtype_name(DType::f64) ? DType::f64 : DType::f32;
        for (std::int64_t d : in.event_shape)
            if (d <= 0) return std::nullopt;
        return in;
    } catch (const json::exception&) {
        return std::nullopt;
    }
}

void write_run_summary(const std::string& run_dir, const std::string& name, const TrainSummary& s) {
    json doc = {{"name", name},
                {"steps", s.steps},
                {"final_train_loss", number_or_null(s.final_train_loss)},
                {"test_nll", number_or_null(s.test_nll)},
                {"test_bpd", number_or_null(s.test_bpd)},
                {"samples_per_s", number_or_null(s.samples_per_s)},
                {"start_step", s.start_step},  // train_seconds and samples_per_s cover the steps from here
                {"train_seconds", number_or_null(s.train_seconds)},
                {"total_train_seconds", number_or_null(s.total_train_seconds)},  // null: unknown
                {"layer_check_seconds", number_or_null(s.layer_check_seconds)},
                {"skipped_steps", s.skipped_steps},
                {"early_stopped", s.early_stopped}};
    if (s.ranks > 1) {
        doc["ranks"] = s.ranks;
        doc["gradient_buckets"] = s.gradient_buckets;
        doc["comm_ms_per_step"] = number_or_null(s.comm_seconds_per_step * 1e3);
        doc["comm_wait_ms_per_step"] = number_or_null(s.comm_wait_seconds_per_step * 1e3);
    }
    write_file_atomic(run_dir + "/summary.json", doc.dump(2) + "\n");
}

std::vector<std::string> run_checkpoints(const std::string& run_dir) {
    fs::path dir = fs::path(run_dir) / "checkpoints";
    std::vector<std::string> files;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return files;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        std::string fn = e.path().filename().string();
        if (fn.rfind("step-", 0) == 0 && e.path().extension() == ".safetensors") files.push_back(e.path().string());
    }
    std::sort(files.rbegin(), files.rend());  // zero-padded step numbers: newest first
    std::ifstream latest(dir / "latest");
    std::string name;
    if (latest && std::getline(latest, name)) {
        std::string p = (dir / name).string();
        auto it = std::find(files.begin(), files.end(), p);
        if (it != files.end()) std::rotate(files.begin(), it, it + 1);
    }
    return files;
}

}  // namespace flowlab
