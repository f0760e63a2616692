#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <functional>

#include <flowlab/errors.hpp>
#include <flowlab/experiment.hpp>
#include <flowlab/registry.hpp>

using namespace flowlab;
using namespace flowlab::test;

namespace {

// Built, never run: the registry only constructs it.
class Dummy : public Bijector {
protected:
    FlowResult do_inverse(const Var& x, const Var&) override { return {x, Var()}; }
    FlowResult do_forward(const Var& z, const Var&) override { return {z, Var()}; }
};

class DummySchedule : public Schedule {
public:
    double factor(std::int64_t, std::int64_t) const override { return 1.0; }
};

class DummyOptimizer : public Optimizer {
public:
    using Optimizer::Optimizer;

protected:
    void do_step(double) override {}
};

BijectorEntry dummy(const std::string& name, Schema schema = {}) {
    return {name, "a dummy", std::move(schema),
            [](const Params&, const BuildContext&) { return std::make_unique<Dummy>(); }};
}


Params layer(const std::string& json) {
    return Params::parse(R"({"layers": [)" + json + "]}", "moons.json").get_object_list("layers")[0];
}

}  // namespace

TEST_CASE("a duplicate name is refused, naming both origins", "[registry]") {
    Registry reg;
    reg.set_origin("/plugins/a.so");
    reg.add_bijector(dummy("affine_coupling"));
    reg.set_origin("/plugins/b.so");
    CHECK(error_of<PluginError>([&] { reg.add_bijector(dummy("affine_coupling")); }) ==
          "duplicate bijector 'affine_coupling': registered by /plugins/a.so and by /plugins/b.so");
    CHECK(reg.bijectors.get("affine_coupling", "").origin == "/plugins/a.so");
}

TEST_CASE("entries without a name or a factory, or with a broken default, are refused", "[registry]") {
    Registry reg;
    CHECK_THROWS_AS(reg.add_bijector(dummy("")), PluginError);
    CHECK_THROWS_AS(reg.add_bijector({"no_factory", "d", {}, nullptr}), PluginError);
    ParamSpec bad = param_int("n", 1, "d");
    bad.default_json = "{not json";
    CHECK(error_of<PluginError>([&] { reg.add_bijector(dummy("bad_default", {bad})); }) ==
          "bijector 'bad_default': the default of parameter 'n' is not valid JSON: {not json");
    CHECK(reg.bijectors.names().empty());
}

TEST_CASE("an unknown type suggests the closest registered name and lists the known ones", "[registry]") {
    Registry reg;
    reg.add_bijector(dummy("affine_coupling"));
    reg.add_bijector(dummy("reverse"));
    BuildContext ctx{{2}, {}, nullptr, &reg};
    CHECK(error_of<ConfigError>([&] { reg.make_bijector(layer(R"({"type": "afine_coupling"})"), ctx); }) ==
          "moons.json:/layers/0/type: unknown bijector 'afine_coupling'; did you mean 'affine_coupling'? "
          "(known: affine_coupling, reverse)");
    CHECK(error_of<ConfigError>([&] { reg.make_bijector(layer(R"({"type": "glow"})"), ctx); }) ==
          "moons.json:/layers/0/type: unknown bijector 'glow' (known: affine_coupling, reverse)");
    CHECK(error_of<ConfigError>([&] { reg.make_bijector(layer(R"({"mask": "alternate"})"), ctx); }) ==
          "moons.json:/layers/0: missing \"type\": which bijector to build (known: affine_coupling, reverse)");
}

TEST_CASE("an empty table says that no plugin provides the kind", "[registry]") {
    Registry reg;
    CHECK(error_of<ConfigError>([&] { reg.make_dataset(Params::parse(R"({"type": "moons"})", "c.json"), 1); }) ==
          "c.json:/type: unknown dataset 'moons' (no dataset is registered; is the plugin that provides it loaded?)");
    CHECK(error_of<ConfigError>([&] { reg.schedules.get("cosine", ""); }) ==
          "unknown schedule 'cosine' (no schedule is registered; is the plugin that provides it loaded?)");
}

TEST_CASE("make_bijector validates against the schema and names the layer and event shape", "[registry]") {
    Registry reg;
    Params seen;
    reg.add_bijector({"affine_coupling", "d", {param_int("hidden", 64, "width").min(1)},
                      [&](const Params& p, const BuildContext&) {
                          seen = p;
                          return std::make_unique<Dummy>();
                      }});
    BuildContext ctx{{3}, {}, nullptr, &reg};
    auto b = reg.make_bijector(layer(R"({"type": "affine_coupling"})"), ctx);
    CHECK(b->type_name() == "affine_coupling");
    CHECK(b->event_shape() == Shape{3});
    CHECK(seen.get_int("hidden") == 64);
    CHECK(seen.where("hidden") == "moons.json:/layers/0/hidden");
    CHECK(error_of<ConfigError>([&] { reg.make_bijector(layer(R"({"type": "affine_coupling", "hiden": 3})"), ctx); }) ==
          "moons.json:/layers/0/hiden: unknown parameter 'hiden' for bijector 'affine_coupling'; "
          "did you mean 'hidden'? (known: hidden)");
}

TEST_CASE("a factory's own exception is reported at the config location", "[registry]") {
    Registry reg;
    reg.add_bijector({"picky", "d", {}, [](const Params&, const BuildContext&) -> std::unique_ptr<Bijector> {
                          throw std::invalid_argument("needs an even number of features");
                      }});
    BuildContext ctx{{3}, {}, nullptr, &reg};
    CHECK(error_of<ConfigError>([&] { reg.make_bijector(layer(R"({"type": "picky"})"), ctx); }) ==
          "moons.json:/layers/0: cannot build bijector 'picky': needs an even number of features");
}

TEST_CASE("make_optimizer passes the learning rate on to the optimizer", "[registry]") {
    Registry reg;
    reg.add_optimizer({"sgd", "d", {param_number("lr", 0.1, "rate").min(0)},
                       [](const Params&, std::vector<NamedVar> params) {
                           return std::make_unique<DummyOptimizer>(std::move(params));
                       }});
    auto opt = reg.make_optimizer(Params::parse(R"({"type": "sgd", "lr": 0.25})"), {});
    CHECK(opt->base_lr() == 0.25);
}

TEST_CASE("merge commits every entry of the staged registry, with its origin", "[registry]") {
    Registry live;
    live.set_origin("live.so");
    live.add_bijector(dummy("a"));
    Registry staged;
    staged.set_origin("new.so");
    staged.add_bijector(dummy("b"));
    staged.add_schedule({"s", "d", {}, [](const Params&) { return std::make_unique<DummySchedule>(); }});
    staged.plugins.push_back({"new", "1.0", "d", "new.so"});
    live.merge(std::move(staged));
    CHECK(live.bijectors.names() == std::vector<std::string>{"a", "b"});
    CHECK(live.bijectors.get("b", "").origin == "new.so");
    CHECK(live.bijectors.get("a", "").origin == "live.so");
    CHECK(live.schedules.contains("s"));
    REQUIRE(live.plugins.size() == 1);
    CHECK(live.plugins[0].name == "new");
}

TEST_CASE("merge is all or nothing: a clash in one table commits nothing of any table", "[registry]") {
    Registry live;
    live.set_origin("live.so");
    live.add_bijector(dummy("a"));
    Registry staged;
    staged.set_origin("new.so");
    // The schedule would be merged first if the merge were not checked up front.
    staged.add_schedule({"s", "d", {}, [](const Params&) { return std::make_unique<DummySchedule>(); }});
    staged.add_bijector(dummy("z"));
    staged.add_bijector(dummy("a"));
    staged.plugins.push_back({"new", "1.0", "d", "new.so"});
    CHECK(error_of<PluginError>([&] { live.merge(std::move(staged)); }) ==
          "duplicate bijector 'a': registered by live.so and by new.so");
    CHECK(live.bijectors.names() == std::vector<std::string>{"a"});
    CHECK_FALSE(live.schedules.contains("s"));
    CHECK(live.plugins.empty());
}

TEST_CASE("a slot left out that no loaded plugin provides a default for is a config error at its pointer", "[registry]") {
    Registry empty;
    Params cfg = Params::parse(R"({"model": {"layers": []}, "train": {}})", "x.json");
    const std::string msg = error_of<ConfigError>([&] { resolve_defaults(cfg, empty); });
    CHECK(msg.rfind("x.json:/model/base: no base distribution given, and no loaded plugin provides a default", 0) == 0);
}

TEST_CASE("the first plugin that sets a default provides it, and the config's own choice wins", "[registry]") {
    Registry reg, staged;
    reg.set_origin("first.so");
    reg.set_default(kDefaultSchedule, R"({"type": "first"})");
    staged.set_origin("second.so");
    staged.set_default(kDefaultSchedule, R"({"type": "second"})");
    reg.merge(std::move(staged));
    CHECK(reg.default_for(kDefaultSchedule)->value == R"({"type": "first"})");
    CHECK(reg.default_for(kDefaultSchedule)->origin == "first.so");
    reg.set_default(kDefaultBase, R"({"type": "b"})");
    reg.set_default(kDefaultOptimizer, R"({"type": "o"})");
    Params cfg = Params::parse(R"({"model": {"layers": []}, "train": {"schedule": {"type": "mine"}}})", "x.json");
    Params r = resolve_defaults(cfg, reg);
    CHECK(r.get_object("train").get_object("schedule").get_string("type") == "mine");
    CHECK(r.get_object("model").get_object("base").get_string("type") == "b");
    CHECK_THROWS_AS(reg.set_default("model.layers", "{}"), PluginError);
}
