// flowlab validate CONFIG: build the flow without training; print layers, shapes, parameters.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "../command.hpp"
#include "../session.hpp"

namespace flowlab::cli {
namespace {

void declare(po::options_description& o) {
    add_set_option(o);
    add_plugin_options(o);
    add_quiet_option(o);
    o.add_options()("emit-graph", po::bool_switch(), "print the config with its model in the canonical graph form (JSON) instead of "
                                  "the summary; it builds the same model")  //
        ("dot", value_named("FILE"), "also write the built flow as a Graphviz DOT graph to FILE: nodes with their "
                                     "parameters, tensor shapes on the edges, conditioners");
}

// The DOT picture of the built flow to `file`; IoError naming the file when it cannot be written.
void write_dot(const std::string& file, const Params& cfg, const Flow& flow) {
    const std::string text = flow_dot(cfg, flow);
    errno = 0;
    std::ofstream f(file, std::ios::binary | std::ios::trunc);
    if (f) f << text << std::flush;
    if (!f) throw IoError(file + ": cannot write the DOT file: " + (errno ? std::strerror(errno) : "write failed"));
}

int run(const Args& a) {
    if (a.positional().size() != 1) throw UsageError("validate takes one CONFIG");
    const std::string& path = a.positional()[0];
    Session s = Session::from_config(path, session_options(a));
    const Params& cfg = s.config();
    Experiment& exp = s.experiment();
    const std::string dot = a.text("dot");
    if (!dot.empty()) write_dot(dot, cfg, *exp.flow);
    const std::string wrote = "wrote the flow's graph to " + dot + " (render it: dot -Tsvg " + dot + " -o flow.svg)\n";
    if (a.flag("emit-graph")) {
        std::printf("%s\n", config_in_graph_form(cfg).c_str());
        if (!dot.empty()) std::fputs(wrote.c_str(), stderr);  // stdout is the JSON
        return kOk;
    }
    std::printf("%s: valid\n", path.c_str());
    std::printf("data: %s, event shape %s, %lld train / %lld test examples\n",
                cfg.get_object("data").get_string("type").c_str(), shape_str(exp.data.event_shape).c_str(),
                static_cast<long long>(exp.data.train.size()), static_cast<long long>(exp.data.test.size()));
    std::printf("%-4s %-28s %-20s %-22s %-14s %-14s %12s\n", "#", "config", "node", "type", "in", "out", "parameters");
    const auto& info = exp.flow->layer_info();
    for (std::size_t i = 0; i < info.size(); ++i)
        std::printf("%-4zu %-28s %-20s %-22s %-14s %-14s %12lld\n", i, info[i].pointer.c_str(), info[i].name.c_str(),
                    info[i].type.c_str(),
                    shape_str(info[i].in_shape).c_str(), shape_str(info[i].out_shape).c_str(),
                    static_cast<long long>(info[i].num_parameters));
    const Params model = cfg.get_object("model");
    std::printf("base: %s, %lld parameters\n",
                model.has("base") ? model.get_object("base").get_string("type").c_str() : "one per output",
                static_cast<long long>(exp.flow->base_num_parameters()));
    std::printf("total parameters: %lld\n", static_cast<long long>(exp.flow->num_parameters()));
    if (!dot.empty()) std::fputs(wrote.c_str(), stdout);
    return kOk;
}

}  // namespace

extern const Command kValidateCommand = {
    "validate",
    "build the flow without training: layers, shapes, parameter counts",
    "CONFIG [--emit-graph] [--dot FILE] [options]",
    "Checks an experiment file against the registered types' schemas, builds its data and flow, and\n"
    "prints every layer with its input and output shapes and parameter count. Nothing is trained;\n"
    "errors name the file, the JSON pointer and a hint (exit code 3). --emit-graph prints the\n"
    "config with its model as a graph of named nodes (a layer list expanded), which loads back into the\n"
    "same model. --dot FILE writes the built flow as a Graphviz graph (dot -Tsvg FILE renders it).",
    declare,
    run,
};

}  // namespace flowlab::cli
