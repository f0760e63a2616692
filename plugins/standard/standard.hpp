// Private to the standard plugin: the register functions that plugin.cpp calls, one per file,
// and small helpers shared between the files.
#pragma once

#include <cstdint>
#include <utility>

#include <flowlab/errors.hpp>
#include <flowlab/kernels.hpp>
#include <flowlab/registry.hpp>
#include <flowlab/tensor.hpp>

namespace flowlab::standard {

void register_couplings(Registry& reg);          // coupling.cpp
void register_permutations(Registry& reg);       // permutation.cpp
void register_conditioners(Registry& reg);       // mlp.cpp
void register_graph_conditioner(Registry& reg);  // graph.cpp
void register_ops(Registry& reg);                // ops.cpp: the ops of network graphs
void register_distributions(Registry& reg);      // distribution.cpp
void register_dequantizers(Registry& reg);       // dequantizer.cpp
void register_optimizers(Registry& reg);         // optimizer.cpp
void register_schedules(Registry& reg);          // schedule.cpp
void register_datasets(Registry& reg);           // dataset.cpp

}  // namespace flowlab::standard
