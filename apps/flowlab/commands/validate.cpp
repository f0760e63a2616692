// flowlab validate CONFIG: build the flow without training; print layers, shapes, parameters.
#include <cstdio>

#include "../command.hpp"
#include "../session.hpp"

namespace flowlab::cli {
namespace {

void declare(po::options_description& o) {
    add_set_option(o);
    add_plugin_options(o);
    add_quiet_option(o);
}

int run(const Args& a) {
    if (a.positional().size() != 1) throw UsageError("validate takes one CONFIG");
    const std::string& path = a.positional()[0];
    Session s = Session::from_config(path, session_options(a));
    const Params& cfg = s.config();
    Experiment& exp = s.experiment();
    std::printf("%s: valid\n", path.c_str());
    std::printf("data: %s, event shape %s, %lld train / %lld test examples\n",
                cfg.get_object("data").get_string("type").c_str(), shape_str(exp.data.event_shape).c_str(),
                static_cast<long long>(exp.data.train.size()), static_cast<long long>(exp.data.test.size()));
    std::printf("%-4s %-28s %-22s %-14s %-14s %12s\n", "#", "node", "type", "in", "out", "parameters");
    const auto& info = exp.flow->layer_info();
    for (std::size_t i = 0; i < info.size(); ++i)
        std::printf("%-4zu %-28s %-22s %-14s %-14s %12lld\n", i, info[i].pointer.c_str(), info[i].type.c_str(),
                    shape_str(info[i].in_shape).c_str(), shape_str(info[i].out_shape).c_str(),
                    static_cast<long long>(info[i].num_parameters));
    std::printf("base: %s, %lld parameters\n", cfg.get_object("model").get_object("base").get_string("type").c_str(),
                static_cast<long long>(exp.flow->base().num_parameters()));
    std::printf("total parameters: %lld\n", static_cast<long long>(exp.flow->num_parameters()));
    return kOk;
}

}  // namespace

extern const Command kValidateCommand = {
    "validate",
    "build the flow without training: layers, shapes, parameter counts",
    "CONFIG [options]",
    "Checks an experiment file against the registered types' schemas, builds its data and flow, and\n"
    "prints every layer with its input and output shapes and parameter count. Nothing is trained or\n"
    "written; errors name the file, the JSON pointer and a hint (exit code 3).",
    declare,
    run,
};

}  // namespace flowlab::cli
