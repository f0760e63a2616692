// The run directory's config.json and summary.json: valid JSON through the JSON library whatever
// the names and numbers, and config.json reads back as the same experiment.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include <flowlab/builder.hpp>
#include <flowlab/config.hpp>
#include <flowlab/errors.hpp>
#include <flowlab/run_dir.hpp>

#include "cli_support.hpp"

using namespace flowlab;

TEST_CASE("summary.json is valid JSON with null for non-finite figures and any name", "[run_dir]") {
    const auto dir = flowlab::test::fresh_temp_dir("summary");
    TrainSummary s;
    s.steps = 7;
    s.final_train_loss = std::nan("");
    s.test_nll = INFINITY;
    s.test_bpd = 1.25;
    const std::string name = "quote \" backslash \\ newline \n end";
    write_run_summary(dir.string(), name, s);
    const auto j = nlohmann::json::parse(flowlab::test::read_text(dir / "summary.json"));
    CHECK(j["name"] == name);
    CHECK(j["steps"] == 7);
    CHECK(j["final_train_loss"].is_null());
    CHECK(j["test_nll"].is_null());
    CHECK(j["test_bpd"] == 1.25);
    std::filesystem::remove_all(dir);
}

TEST_CASE("config.json records the experiment and its plugins and reads back as the same experiment", "[run_dir]") {
    const auto dir = flowlab::test::fresh_temp_dir("config");
    Params cfg = load_experiment(std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json",
                                 {"train.steps=3", "name=\"a \\\"quoted\\\" name\""});
    write_run_config(dir.string(), cfg, {PluginRecord{"p", "1.0", "d", "/x/\"odd\" path/libp.so", {}}},
                     ModelInput{{1, 28, 28}, {3}, DType::f64});
    const auto j = nlohmann::json::parse(flowlab::test::read_text(dir / "config.json"));
    CHECK(j["loaded_plugins"][0]["path"] == "/x/\"odd\" path/libp.so");
    const std::optional<ModelInput> in = read_model_input(dir.string());
    REQUIRE(in);
    CHECK(in->event_shape == Shape{1, 28, 28});
    CHECK(in->context_shape == Shape{3});
    CHECK(in->dtype == DType::f64);
    Params back = load_run_config(dir.string());
    CHECK(back.get_string("name") == "a \"quoted\" name");
    CHECK(back.get_object("train").get_int("steps") == 3);
    // The model is recorded in the graph form (the list expanded); the rest as it was.
    std::ofstream(dir / "graph_form.json") << config_in_graph_form(cfg);
    CHECK(back.dump() == load_experiment((dir / "graph_form.json").string()).dump());
    CHECK(back.get_object("model").has("graph"));
    CHECK_FALSE(back.get_object("model").has("layers"));
    // Errors in a recorded config point into config.json, under /config; a run written before
    // model_input was recorded has none (its model is then built from its data).
    std::ofstream(dir / "config.json") << R"({"config": {"flowlab": 1, "data": {"type": "moons"}, "model": {"layers": []}, "bogus": 1}})";
    CHECK_FALSE(read_model_input(dir.string()));
    try {
        load_run_config(dir.string());
        FAIL("no error");
    } catch (const ConfigError& e) {
        CHECK(std::string(e.what()).find("config.json:/config/bogus") != std::string::npos);
    }
    std::filesystem::remove_all(dir);
}
