// The standard plugin: every layer, distribution, dequantizer, optimizer, schedule, conditioner,
// network op and dataset that flowlab ships. Each file registers its own types; this is the one
// entry point.
#include <flowlab/plugin.hpp>

#include "standard.hpp"

FLOWLAB_PLUGIN("standard", "0.1.0",
               "flowlab's standard layers, conditioners, network ops, distributions, optimizers, schedules and "
               "toy datasets") {
    using namespace flowlab::standard;
    register_couplings(reg);
    register_permutations(reg);
    register_conditioners(reg);
    register_graph_conditioner(reg);
    register_ops(reg);
    register_distributions(reg);
    register_dequantizers(reg);
    register_optimizers(reg);
    register_schedules(reg);
    register_datasets(reg);
    // What an experiment gets when it leaves these out.
    reg.set_default(flowlab::kDefaultBase, R"({"type": "standard_normal"})");
    reg.set_default(flowlab::kDefaultOptimizer, R"({"type": "adam", "lr": 0.001})");
    reg.set_default(flowlab::kDefaultSchedule, R"({"type": "constant"})");
}
