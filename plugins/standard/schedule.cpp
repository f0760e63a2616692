// Learning-rate schedules: the factor on the base learning rate at step t (0 = the first step)
// of `total` steps.
//   constant       1
//   linear_warmup  min(1, (t+1)/warmup_steps)
//   cosine         linear warm-up, then min_factor + (1-min_factor) * (1 + cos(pi*p))/2 with
//                  p = (t - warmup_steps) / (total - warmup_steps), clamped to [0, 1]
//   step           gamma^floor(t / step_size)
#include <algorithm>
#include <cmath>
#include <memory>
#include <numbers>

#include "standard.hpp"

namespace flowlab::standard {
namespace {

double warmup_factor(std::int64_t t, std::int64_t warmup) {
    if (warmup <= 0) return 1.0;
    return std::min(1.0, static_cast<double>(t + 1) / static_cast<double>(warmup));
}

class Constant final : public Schedule {
public:
    double factor(std::int64_t, std::int64_t) const override { return 1.0; }
};

class LinearWarmup final : public Schedule {
public:
    explicit LinearWarmup(std::int64_t warmup) : warmup_(warmup) {}
    double factor(std::int64_t t, std::int64_t) const override { return warmup_factor(t, warmup_); }

private:
    std::int64_t warmup_;
};

class Cosine final : public Schedule {
public:
    Cosine(std::int64_t warmup, double min_factor) : warmup_(warmup), min_(min_factor) {}
    double factor(std::int64_t t, std::int64_t total) const override {
        if (t < warmup_) return warmup_factor(t, warmup_);
        const double span = static_cast<double>(std::max<std::int64_t>(1, total - warmup_));
        const double p = std::clamp(static_cast<double>(t - warmup_) / span, 0.0, 1.0);
        return min_ + (1.0 - min_) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
    }

private:
    std::int64_t warmup_;
    double min_;
};

class StepDecay final : public Schedule {
public:
    StepDecay(std::int64_t step_size, double gamma) : step_size_(step_size), gamma_(gamma) {}
    double factor(std::int64_t t, std::int64_t) const override {
        return std::pow(gamma_, static_cast<double>(std::max<std::int64_t>(0, t) / step_size_));
    }

private:
    std::int64_t step_size_;
    double gamma_;
};

}  // namespace

void register_schedules(Registry& reg) {
    reg.add_schedule({"constant", "the base learning rate at every step", {},
                      [](const Params&) -> std::unique_ptr<Schedule> { return std::make_unique<Constant>(); }});
    reg.add_schedule({"linear_warmup", "linear warm-up: factor min(1, (t+1)/warmup_steps), t = 0 at the first step",
                      {param_int("warmup_steps", 1000, "steps to reach the base learning rate").min(0)},
                      [](const Params& p) -> std::unique_ptr<Schedule> {
                          return std::make_unique<LinearWarmup>(p.get_int("warmup_steps"));
                      }});
    reg.add_schedule({"cosine", "linear warm-up, then cosine decay from 1 to min_factor (reached at step total)",
                      {param_int("warmup_steps", 0, "linear warm-up steps before the decay").min(0),
                       param_number("min_factor", 0.0, "factor the decay ends at").range(0.0, 1.0)},
                      [](const Params& p) -> std::unique_ptr<Schedule> {
                          return std::make_unique<Cosine>(p.get_int("warmup_steps"), p.get_number("min_factor"));
                      }});
    reg.add_schedule({"step", "step decay: factor gamma^floor(t/step_size)",
                      {param_int("step_size", 1000, "steps between decays").min(1),
                       param_number("gamma", 0.1, "multiplier applied at each decay").range(0.0, 1.0)},
                      [](const Params& p) -> std::unique_ptr<Schedule> {
                          return std::make_unique<StepDecay>(p.get_int("step_size"), p.get_number("gamma"));
                      }});
}

}  // namespace flowlab::standard
