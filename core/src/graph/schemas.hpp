// The experiment format's own schemas (top level, model, train and train.distributed, eval, split): shared by the
// loader (config.cpp), the builder (builder.cpp) and the JSON Schema export (json_schema.cpp).
#pragma once

#include "flowlab/params.hpp"

namespace flowlab::graph {

Schema experiment_schema();
Schema model_schema();
Schema train_schema();
Schema distributed_schema();  // train.distributed
Schema eval_schema();
Schema split_schema();

}  // namespace flowlab::graph
