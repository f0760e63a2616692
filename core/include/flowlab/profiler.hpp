// Op-level timing of training steps, for `flowlab bench --profile` and for anyone who wants to
// know where a step's time goes. While a profile is installed, every op is timed: its forward
// from the end of the previous op (or the last mark) to its make_op (the kernels of an op run
// just before make_op records it), and its backward rule around the call. Steps' other parts
// (data, optimizer) are timed as named phases. One thread builds the graph, so one profile is
// installed for the process; the cost when none is installed is one branch per op.
//
//   OpProfile prof;
//   set_op_profile(&prof);
//   ... train some steps ...
//   set_op_profile(nullptr);
//   for (const auto& [op, t] : prof.ops) std::printf("%s %.3f s\n", op.c_str(), t.forward_s + t.backward_s);
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

namespace flowlab {

struct OpTimes {
    std::int64_t calls = 0;
    double forward_s = 0.0, backward_s = 0.0;
};

struct OpProfile {
    std::map<std::string, OpTimes> ops;      // by op name
    std::map<std::string, double> phases;    // seconds by phase name (data, optimizer...)
};

// Installs `p` (nullptr removes it) and starts the forward clock.
void set_op_profile(OpProfile* p);
OpProfile* op_profile();
// Restarts the forward clock: the time since the last op is not any op's (e.g. before a
// step's forward pass, after its data was gathered).
void op_profile_mark();

// Adds the lifetime of the scope to a phase of the installed profile (none: nothing).
class ProfilePhase {
public:
    explicit ProfilePhase(const char* name);
    ~ProfilePhase();
    ProfilePhase(const ProfilePhase&) = delete;
    ProfilePhase& operator=(const ProfilePhase&) = delete;

private:
    const char* name_;
    std::chrono::steady_clock::time_point start_;
};

}  // namespace flowlab
