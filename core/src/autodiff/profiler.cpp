#include "flowlab/profiler.hpp"

#include "autodiff/profiler_internal.hpp"

namespace flowlab {

namespace {
using Clock = std::chrono::steady_clock;
OpProfile* g_profile = nullptr;  // one graph-building thread: see profiler.hpp
Clock::time_point g_mark;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

void set_op_profile(OpProfile* p) {
    g_profile = p;
    g_mark = Clock::now();
}

OpProfile* op_profile() { return g_profile; }

void op_profile_mark() {
    if (g_profile) g_mark = Clock::now();
}

ProfilePhase::ProfilePhase(const char* name) : name_(name), start_(g_profile ? Clock::now() : Clock::time_point{}) {}

ProfilePhase::~ProfilePhase() {
    if (!g_profile) return;
    g_profile->phases[name_] += seconds_since(start_);
    g_mark = Clock::now();
}

namespace profile_detail {

void add_forward(OpProfile& p, const char* op) {
    const auto now = Clock::now();
    OpTimes& t = p.ops[op];
    ++t.calls;
    t.forward_s += std::chrono::duration<double>(now - g_mark).count();
    g_mark = now;
}

void add_backward(OpProfile& p, const char* op, Clock::time_point start) { p.ops[op].backward_s += seconds_since(start); }

}  // namespace profile_detail

}  // namespace flowlab
