// The conformance suite every registered bijector passes (tests run it over the whole
// registry; `flowlab check-plugin LIB.so` runs it over one plugin's types):
//   round trip inverse->forward and forward->inverse; log-dets cancel; log-det against a
//   numerical Jacobian (f64); parameter and input gradients against finite differences (f64);
//   batch independence; finite outputs on edge inputs.
// Zero-initialised layers are the identity, which would hide bugs, so parameters are
// perturbed (seeded) before checking.
#pragma once

#include <string>
#include <vector>

#include "flowlab/registry.hpp"

namespace flowlab {

struct ConformanceCheck {
    std::string type;    // registered name
    std::string shape;   // event shape tested, e.g. "[5]"
    std::string check;   // "round_trip_inverse_forward", ...
    bool passed = false;
    double worst = 0.0;  // worst error seen
    double tolerance = 0.0;
    std::string detail;  // message when failed (or an exception text)
};

struct ConformanceOptions {
    std::uint64_t seed = 1234;
    std::int64_t batch = 4;
    double perturb = 0.3;  // stddev of the perturbation added to every parameter
};

// Runs every check on one registered bijector, for each event shape in its hints.
std::vector<ConformanceCheck> check_bijector(const Registry& registry, const std::string& name,
                                             const ConformanceOptions& opt = {});

}  // namespace flowlab
