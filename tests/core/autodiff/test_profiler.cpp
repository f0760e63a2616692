// The op profiler (flowlab bench --profile): every op's forward and backward is counted and
// timed while a profile is installed, phases add up their scopes, and nothing is recorded
// without one.
#include <catch2/catch.hpp>

#include <flowlab/autodiff.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/profiler.hpp>

using namespace flowlab;

TEST_CASE("the op profiler counts and times every op in both directions", "[autodiff][profiler]") {
    Var x(Tensor::full({64, 32}, 0.5), true);
    Var w(Tensor::full({32, 16}, 0.1), true);
    OpProfile prof;
    set_op_profile(&prof);
    for (int i = 0; i < 3; ++i) {
        Var loss = mean_all(tanh(linear(x, w)));
        {
            ProfilePhase phase("backward pass");
            loss.backward();
        }
    }
    set_op_profile(nullptr);
    mean_all(tanh(linear(x, w)));  // not recorded: no profile installed

    REQUIRE(prof.ops.count("linear") == 1);
    REQUIRE(prof.ops.count("tanh") == 1);
    CHECK(prof.ops["linear"].calls == 3);
    CHECK(prof.ops["tanh"].calls == 3);
    CHECK(prof.ops["mean_all"].calls == 3);
    CHECK(prof.ops["linear"].forward_s >= 0.0);
    CHECK(prof.ops["linear"].backward_s > 0.0);
    REQUIRE(prof.phases.count("backward pass") == 1);
    // The phase encloses every backward rule it ran.
    double rules = 0.0;
    for (const auto& [name, t] : prof.ops) rules += t.backward_s;
    CHECK(prof.phases["backward pass"] >= rules);
    CHECK(op_profile() == nullptr);
}
