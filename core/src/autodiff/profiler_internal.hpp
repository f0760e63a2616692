// What the graph code (autodiff.cpp) records into the installed op profile (profiler.cpp).
#pragma once

#include <chrono>

#include "flowlab/profiler.hpp"

namespace flowlab::profile_detail {

// An op's forward: the time since the last op or mark, which then moves to now.
void add_forward(OpProfile& p, const char* op);
// An op's backward rule, run since `start`.
void add_backward(OpProfile& p, const char* op, std::chrono::steady_clock::time_point start);

}  // namespace flowlab::profile_detail
