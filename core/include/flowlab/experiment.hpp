// Experiment: one JSON file describes one experiment - data, model graph, training, output.
// This header gathers the four steps; each has its own header and source:
//   config.hpp       load_experiment(): parse and validate the file       (graph/config.cpp)
//   builder.hpp      build_experiment(): data, flow, optimizer, schedule  (graph/builder.cpp)
//   trainer.hpp      train(): the MLE loop, checkpoints and resume        (train/trainer.cpp)
//   evaluate.hpp     evaluate(): NLL and bits/dim (trainer.hpp has it)    (train/evaluate.cpp)
//   json_schema.hpp  experiment_json_schema(): the format for editors     (graph/json_schema.cpp)
#pragma once

#include "flowlab/builder.hpp"
#include "flowlab/config.hpp"
#include "flowlab/json_schema.hpp"
#include "flowlab/trainer.hpp"
