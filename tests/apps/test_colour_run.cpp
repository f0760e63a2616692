// Colour images end to end: a tiny three-channel Glow trained by `flowlab run` on a CIFAR-10
// folder the test writes itself, its samples a colour PNG, its bits/dim finite over 3 * 32 * 32
// dimensions; and the shipped cifar10_glow config validating on such a folder.
#include <catch2/catch.hpp>

#include "cli_support.hpp"
#include "plugins/density/colour_files.hpp"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <flowlab/image_io.hpp>

namespace fs = std::filesystem;
using namespace flowlab::test;

namespace {

// A number that follows `key` in a small JSON file ("key": number); NaN for null or absent.
double json_number(const std::string& text, const std::string& key) {
    auto pos = text.find("\"" + key + "\"");
    if (pos == std::string::npos) return std::nan("");
    pos = text.find(':', pos);
    try {
        return std::stod(text.substr(pos + 1));
    } catch (const std::exception&) {
        return std::nan("");
    }
}

struct PngHeader {
    std::uint32_t width = 0, height = 0;
    int depth = 0, color = -1;
};

// The IHDR fields of a PNG file (the first chunk, right after the 8-byte signature).
PngHeader png_header(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::vector<unsigned char> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    REQUIRE(b.size() >= 33);
    REQUIRE(std::string(b.begin() + 12, b.begin() + 16) == "IHDR");
    auto be32 = [&](std::size_t o) {
        return (std::uint32_t{b[o]} << 24) | (std::uint32_t{b[o + 1]} << 16) | (std::uint32_t{b[o + 2]} << 8) | b[o + 3];
    };
    return {be32(16), be32(20), b[24], b[25]};
}

const char* kTinyGlow = R"({
  "flowlab": 1, "name": "tiny_cifar_glow", "seed": 0,
  "plugins": ["standard", "density", "image"],
  "data": {"type": "cifar10", "path": "@DATA@", "train_limit": 64, "test_limit": 16},
  "model": {
    "dequantizer": {"type": "uniform", "bits": 8},
    "layers": [
      {"type": "shift", "offset": -0.5},
      {"type": "squeeze"},
      {"type": "actnorm2d"}, {"type": "invconv1x1"},
      {"type": "conv_affine_coupling", "conditioner": {"type": "cnn", "hidden": 8}},
      {"type": "split", "keep": 6},
      {"type": "squeeze"},
      {"type": "actnorm2d"}, {"type": "invconv1x1"},
      {"type": "conv_additive_coupling", "conditioner": {"type": "cnn", "hidden": 8}}
    ],
    "base": {"type": "standard_normal"}
  },
  "train": {"batch_size": 16, "steps": 6, "log_every": 2, "eval_every": 3, "threads": 1},
  "eval": {"batch_size": 16, "samples": 9}
})";

}  // namespace

TEST_CASE("a tiny Glow trains on a CIFAR-10 folder end to end: RGB samples and finite bits/dim over 3072 dims",
          "[cli][colour]") {
    const fs::path dir = fresh_temp_dir("colour-run");
    colour::write_cifar_folder(dir / "cifar", 16, 16);
    std::string cfg = kTinyGlow;
    cfg.replace(cfg.find("@DATA@"), 6, (dir / "cifar").string());
    {
        std::ofstream(dir / "tiny.json") << cfg;
    }
    const fs::path out = dir / "run";
    CliResult r = run_cli("run " + (dir / "tiny.json").string() + " --quiet --output " + out.string());
    INFO(r.out);
    REQUIRE(r.code == 0);

    // The sample grid is an 8-bit RGB PNG (IHDR colour type 2): 9 samples, 3 per row, 32x32 with
    // 2-pixel borders.
    REQUIRE(fs::exists(out / "samples.png"));
    const PngHeader h = png_header(out / "samples.png");
    CHECK(h.color == 2);
    CHECK(h.depth == 8);
    CHECK(h.width == 3 * (32 + 2) + 2);
    CHECK(h.height == 3 * (32 + 2) + 2);
    CHECK(flowlab::read_png((out / "samples.png").string()).size(0) == 3);

    // bits/dim are the NLL over D = 3 * 32 * 32 dimensions, and finite.
    const std::string summary = read_text(out / "summary.json");
    const double nll = json_number(summary, "test_nll"), bpd = json_number(summary, "test_bpd");
    CHECK(std::isfinite(nll));
    CHECK(std::isfinite(bpd));
    CHECK(bpd == Approx(nll / (3072 * std::log(2.0))).epsilon(1e-6));
    CHECK(bpd > 0.0);
    CHECK(bpd < 16.0);

    // The report embeds the colour grid; `sample` writes one too.
    CHECK(contains(read_text(out / "report.html"), "alt='samples.png'"));
    CliResult s = run_cli("sample " + out.string() + " -n 4 --out " + (dir / "four.png").string());
    INFO(s.out);
    REQUIRE(s.code == 0);
    CHECK(png_header(dir / "four.png").color == 2);
    fs::remove_all(dir);
}

TEST_CASE("configs/cifar10_glow.json validates on a generated CIFAR-10 folder: three levels over [3, 32, 32]",
          "[cli][colour]") {
    const fs::path dir = fresh_temp_dir("colour-validate");
    colour::write_cifar_folder(dir, 2, 2);
    CliResult r = run_cli("validate " + std::string(FLOWLAB_SOURCE_DIR) + "/configs/cifar10_glow.json --set 'data.path=\"" +
                          dir.string() + "\"'");
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(contains(r.out, "[3, 32, 32]"));
    CHECK(contains(r.out, "[48, 4, 4]"));  // the third level, after three squeezes and two splits
    CHECK(contains(r.out, "total parameters:"));
    // Without the data: an i/o error that says where to get it.
    CliResult missing = run_cli("validate " + std::string(FLOWLAB_SOURCE_DIR) + "/configs/cifar10_glow.json --set 'data.path=\"" +
                                (dir / "nowhere").string() + "\"'");
    CHECK(missing.code == 5);
    CHECK(contains(missing.out, "cifar-10-binary.tar.gz"));
    fs::remove_all(dir);
}
