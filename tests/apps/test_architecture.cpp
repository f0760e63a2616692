// The flow's picture from the command line: `validate --dot FILE`, and the run directory's
// architecture.dot (architecture.svg with Graphviz) with the report's Architecture section.
#include <catch2/catch.hpp>

#include "cli_support.hpp"

#include <filesystem>
#include <string>

#include <flowlab/architecture.hpp>

namespace fs = std::filesystem;
using namespace flowlab::test;

TEST_CASE("validate --dot writes the flow as a DOT digraph and says so", "[cli][dot]") {
    const fs::path dir = fresh_temp_dir("validate-dot");
    const fs::path file = dir / "flow.dot";
    CliResult r = run_cli("validate " + std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json --dot " +
                          file.string());
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(contains(r.out, "tiny_moons.json: valid"));  // the summary is still printed
    CHECK(contains(r.out, "wrote the flow's graph to " + file.string()));
    const std::string dot = read_text(file);
    CHECK(dot.rfind("digraph", 0) == 0);
    CHECK(contains(dot, R"("x" -> "layers.0" [label="[2]")"));
    CHECK(contains(dot, R"(label="mlp hidden [16]\n)"));
    // With --emit-graph, stdout stays the JSON alone.
    CliResult g = run_cli("validate " + std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json --emit-graph --dot " +
                              (dir / "g.dot").string(),
                          true);
    CHECK(g.code == 0);
    CHECK(g.out.rfind("{", 0) == 0);
    CHECK_FALSE(contains(g.out, "wrote the flow's graph"));
    CHECK(contains(g.err, "wrote the flow's graph"));
    CHECK(fs::exists(dir / "g.dot"));
    fs::remove_all(dir);
}

TEST_CASE("validate --dot to a file that cannot be written is an i/o error naming the path", "[cli][dot]") {
    CliResult r = run_cli("validate " + std::string(FLOWLAB_SOURCE_DIR) +
                          "/tests/configs/tiny_moons.json --dot /nonexistent/dir/flow.dot");
    INFO(r.out);
    CHECK(r.code == 5);
    CHECK(contains(r.out, "/nonexistent/dir/flow.dot: cannot write the DOT file"));
}

TEST_CASE("a run writes architecture.dot and the report's Architecture section, with or without Graphviz", "[cli][dot]") {
    const fs::path out = fresh_temp_dir("architecture");
    CliResult r = run_cli("run " + std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json --quiet " +
                          "--set train.steps=5 --set train.threads=1 --output " + out.string());
    INFO(r.out);
    REQUIRE(r.code == 0);
    REQUIRE(fs::exists(out / "architecture.dot"));
    const std::string dot = read_text(out / "architecture.dot");
    CHECK(dot.rfind("digraph \"tiny-moons\" {", 0) == 0);
    CHECK(contains(dot, R"("layers.3" -> "output:0" [label="[2]")"));
    const std::string report = read_text(out / "report.html");
    CHECK(contains(report, "<h2>Architecture</h2>"));
    // Which case holds is the machine's: the test finds out the way the run does.
    if (flowlab::find_on_path("dot").empty()) {
        CHECK_FALSE(fs::exists(out / "architecture.svg"));
        CHECK(contains(report, "Graphviz is not installed"));
        CHECK(contains(report, "apt-get install graphviz"));
        CHECK(contains(report, "architecture.dot is in the run directory"));
        CHECK_FALSE(contains(r.out, "architecture.svg not rendered"));  // a missing tool is no warning
    } else {
        REQUIRE(fs::exists(out / "architecture.svg"));
        CHECK(contains(report, "<div class='arch'><svg"));
        CHECK(contains(report, "layers.3"));  // the picture's text, inline
        CHECK_FALSE(contains(report, "<?xml"));  // Graphviz's prolog is left out of the HTML
    }
    // No temporary file of the rendering is left behind.
    for (const auto& e : fs::directory_iterator(out)) CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
    fs::remove_all(out);
}
