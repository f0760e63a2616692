// The run directory's architecture files and the report's Architecture section: rendering with
// a `dot` found on PATH (fake ones here, so that success, failure and a hang are all exercised
// whether or not Graphviz is installed), and the report's two cases.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <sys/stat.h>
#include <unistd.h>

#include <flowlab/architecture.hpp>
#include <flowlab/builder.hpp>
#include <flowlab/report.hpp>

#include "test_support.hpp"

using namespace flowlab;
namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

fs::path scratch(const std::string& name) {
    fs::path d = fs::temp_directory_path() / ("flowlab-arch-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d / "bin");
    return d;
}

// PATH set to `dirs` for the scope: the renderer and the report look `dot` up there.
class PathScope {
public:
    explicit PathScope(const std::string& dirs) {
        const char* old = std::getenv("PATH");
        had_ = old != nullptr;
        if (had_) old_ = old;
        ::setenv("PATH", dirs.c_str(), 1);
    }
    ~PathScope() {
        if (had_)
            ::setenv("PATH", old_.c_str(), 1);
        else
            ::unsetenv("PATH");
    }

private:
    bool had_ = false;
    std::string old_;
};

// A fake `dot` in dir/bin running `script` (sh; "$3" is the -o file, "$4" the input).
void fake_dot(const fs::path& dir, const std::string& script) {
    const fs::path p = dir / "bin" / "dot";
    std::ofstream(p) << "#!/bin/sh\n" << script << "\n";
    ::chmod(p.c_str(), 0755);
}

}  // namespace

TEST_CASE("find_on_path finds executables on PATH only", "[architecture]") {
    const fs::path d = scratch("find");
    fake_dot(d, "exit 0");
    std::ofstream(d / "bin" / "notexec") << "x";
    PathScope path("/nonexistent:" + (d / "bin").string());
    CHECK(find_on_path("dot") == (d / "bin" / "dot").string());
    CHECK(find_on_path("notexec").empty());
    CHECK(find_on_path("no-such-program-here").empty());
    fs::remove_all(d);
}

TEST_CASE("rendering: success moves the SVG in place, and a failure or a hang is a note, never a throw", "[architecture]") {
    const fs::path d = scratch("render");
    std::ofstream(d / "a.dot") << "digraph g { a -> b; }\n";
    const std::string dot = (d / "a.dot").string(), svg = (d / "a.svg").string();
    PathScope path((d / "bin").string());
    SECTION("no dot on PATH") {
        const std::string why = render_dot_to_svg(dot, svg, 5);
        CHECK(why.find("Graphviz is not installed") != std::string::npos);
        CHECK(why.find("apt-get install graphviz") != std::string::npos);
    }
    SECTION("dot succeeds") {
        fake_dot(d, R"(test "$1" = -Tsvg && test "$2" = -o && printf '<svg>%s</svg>' "$4" > "$3")");
        CHECK(render_dot_to_svg(dot, svg, 5) == "");
        CHECK(read_file(svg) == "<svg>" + dot + "</svg>");
    }
    SECTION("dot fails: its exit code and first line of error, and no SVG") {
        fake_dot(d, "echo 'Error: syntax error in line 1' >&2; echo partial > \"$3\"; exit 3");
        const std::string why = render_dot_to_svg(dot, svg, 5);
        CHECK(why.find("exited with code 3: Error: syntax error in line 1") != std::string::npos);
        CHECK_FALSE(fs::exists(svg));
    }
    SECTION("dot hangs: stopped at the deadline") {
        fake_dot(d, "exec /bin/sleep 30");  // PATH holds only the fake bin
        const auto t0 = std::chrono::steady_clock::now();
        const std::string why = render_dot_to_svg(dot, svg, 0.3);
        CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));
        CHECK(why.find("took longer than") != std::string::npos);
        CHECK_FALSE(fs::exists(svg));
    }
    // Temporary files (the SVG being written, dot's stderr) never stay behind.
    for (const auto& e : fs::directory_iterator(d)) CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
    fs::remove_all(d);
}

TEST_CASE("write_run_architecture writes architecture.dot and renders it when it can", "[architecture]") {
    const fs::path d = scratch("write");
    const Params config = Params::parse(R"({"name": "w", "model": {"base": {"type": "standard_normal"},
        "layers": [{"type": "reverse"}]}})");
    Rng rng(1);
    auto flow = build_flow(config.get_object("model"), {2}, {}, test::shipped_plugins_registry(), rng);
    {
        PathScope path((d / "bin").string());
        const ArchitectureFiles a = write_run_architecture(d.string(), config, *flow);
        CHECK(a.dot_path == (d / "architecture.dot").string());
        CHECK(read_file(a.dot_path) == flow_dot(config, *flow));
        CHECK(a.svg_path.empty());
        CHECK_FALSE(a.graphviz);
        CHECK(a.note.find("Graphviz is not installed") != std::string::npos);
    }
    fake_dot(d, R"(echo '<svg/>' > "$3")");
    PathScope path((d / "bin").string());
    const ArchitectureFiles a = write_run_architecture(d.string(), config, *flow);
    CHECK(a.graphviz);
    CHECK(a.note.empty());
    CHECK(a.svg_path == (d / "architecture.svg").string());
    CHECK(fs::exists(d / "architecture.svg"));
    fs::remove_all(d);
}

TEST_CASE("the report's Architecture section inlines the SVG, or says how to get one", "[architecture][report]") {
    const fs::path d = scratch("report");
    std::ofstream(d / "metrics.jsonl") << R"({"step": 1, "loss": 1.5})" << "\n";
    PathScope path((d / "bin").string());
    SECTION("no architecture files: the section says so") {
        const std::string html = read_file(write_report(d.string()));
        CHECK(html.find("<h2>Architecture</h2>") != std::string::npos);
        CHECK(html.find("No architecture.dot") != std::string::npos);
    }
    SECTION("the DOT file without Graphviz: how to install it, and where the DOT file is") {
        std::ofstream(d / "architecture.dot") << "digraph g {}\n";
        const std::string html = read_file(write_report(d.string()));
        CHECK(html.find("Graphviz is not installed") != std::string::npos);
        CHECK(html.find("apt-get install graphviz") != std::string::npos);
        CHECK(html.find("architecture.dot is in the run directory") != std::string::npos);
    }
    SECTION("Graphviz present but no SVG: rendering failed, and the section says so") {
        std::ofstream(d / "architecture.dot") << "digraph g {}\n";
        fake_dot(d, "exit 1");
        const std::string html = read_file(write_report(d.string()));
        CHECK(html.find("did not render") != std::string::npos);
    }
    SECTION("the SVG inline, without its XML prolog") {
        std::ofstream(d / "architecture.dot") << "digraph g {}\n";
        std::ofstream(d / "architecture.svg")
            << "<?xml version=\"1.0\"?>\n<!DOCTYPE svg PUBLIC \"-//W3C//DTD SVG 1.1//EN\" \"x.dtd\">\n"
               "<svg width=\"8pt\"><text>layers.0</text></svg>\n";
        const std::string html = read_file(write_report(d.string()));
        CHECK(html.find("<div class='arch'><svg width=\"8pt\"><text>layers.0</text></svg>") != std::string::npos);
        CHECK(html.find("<?xml") == std::string::npos);
        CHECK(html.find("<!DOCTYPE svg") == std::string::npos);
        CHECK(html.find("Graphviz is not installed") == std::string::npos);
    }
    fs::remove_all(d);
}
