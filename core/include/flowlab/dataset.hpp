// Dataset: what a data plugin produces, fully materialised (the pipeline then batches it).
//
//   reg.add_dataset({"line", "points on a noisy line", {param_int("train", 1000, "size")},
//       [](const flowlab::Params& p, std::uint64_t seed) {
//           flowlab::Dataset d;
//           d.event_shape = {2};
//           d.train.x = ...;  // [n, 2]
//           d.test.x = ...;
//           return d;
//       }});
#pragma once

#include <cstdint>
#include <string>

#include "flowlab/tensor.hpp"

namespace flowlab {

struct DataSplit {
    Tensor x;        // [n, event...] f32
    Tensor context;  // [n, ...] or undefined
    std::int64_t size() const { return x.defined() ? x.size(0) : 0; }
};

struct Dataset {
    Shape event_shape;
    Shape context_shape;       // empty when the data carry no context
    DataSplit train, valid, test;
    bool discrete = false;     // integer-valued (pixels): needs a dequantizer
    int bits = 8;              // levels = 2^bits for discrete data (bits/dim bookkeeping)
    std::string description;
};

}  // namespace flowlab
