// PNG sample grids (core/src/image_io.cpp): written, read back, and the failures.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "flowlab/errors.hpp"
#include "flowlab/image_io.hpp"

using namespace flowlab;
namespace fs = std::filesystem;

namespace {
fs::path temp_dir() {
    fs::path d = fs::temp_directory_path() / ("flowlab_png_test_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
}
}  // namespace

TEST_CASE("a grey PNG grid reads back with every pixel and border where it was written", "[image][png]") {
    // 5 images of 3x4 in rows of 2: a 3 x 2 grid with 1-pixel borders.
    Tensor imgs = Tensor::empty({5, 1, 3, 4});
    for (std::int64_t i = 0; i < imgs.numel(); ++i) imgs.set_item(i, static_cast<double>((i * 37) % 256) / 255.0);
    const fs::path p = temp_dir() / "grid.png";
    write_png_grid(p.string(), imgs, 2, 1);
    Tensor back = read_png(p.string());
    REQUIRE(back.shape() == Shape{1, 3 * 4 + 1, 2 * 5 + 1});
    const std::int64_t W = 11;
    for (std::int64_t k = 0; k < 5; ++k)
        for (std::int64_t y = 0; y < 3; ++y)
            for (std::int64_t x = 0; x < 4; ++x) {
                const std::int64_t gy = 1 + (k / 2) * 4 + y, gx = 1 + (k % 2) * 5 + x;
                CHECK(back.item(gy * W + gx) == Approx(imgs.item((k * 3 + y) * 4 + x)).margin(1e-6));
            }
    CHECK(back.item(0) == 0.0);             // border
    CHECK(back.item(12 * W + 10) == 0.0);   // the empty sixth cell
    fs::remove_all(p.parent_path());
}

TEST_CASE("an RGB grid keeps its channels and clamps values outside 0..1", "[image][png]") {
    Tensor imgs = Tensor::zeros({1, 3, 2, 2});
    imgs.set_item(0, 1.0);         // red (0, 0)
    imgs.set_item(4 + 1, 0.5);     // green (0, 1)
    imgs.set_item(8 + 3, 7.0);     // blue (1, 1), clamped to 1
    imgs.set_item(2, -3.0);        // red (1, 0), clamped to 0
    imgs.set_item(4 + 2, std::nan(""));  // NaN is written as 0
    const fs::path p = temp_dir() / "rgb.png";
    write_png_grid(p.string(), imgs, 8, 0);
    Tensor back = read_png(p.string());
    REQUIRE(back.shape() == Shape{3, 2, 2});
    CHECK(back.item(0) == 1.0);
    CHECK(back.item(4 + 1) == Approx(128.0 / 255.0));
    CHECK(back.item(8 + 3) == 1.0);
    CHECK(back.item(2) == 0.0);
    CHECK(back.item(4 + 2) == 0.0);
    fs::remove_all(p.parent_path());
}

TEST_CASE("PNG errors name the path and the problem", "[image][png]") {
    Tensor imgs = Tensor::zeros({2, 1, 4, 4});
    CHECK_THROWS_AS(write_png_grid("/nonexistent-dir/x.png", imgs), IoError);
    CHECK_THROWS_WITH(write_png_grid("/nonexistent-dir/x.png", imgs), Catch::Contains("/nonexistent-dir/x.png"));
    CHECK_THROWS_AS(write_png_grid("x.png", Tensor::zeros({2, 2, 4, 4})), ShapeError);
    CHECK_THROWS_AS(write_png_grid("x.png", Tensor::zeros({4, 4})), ShapeError);
    CHECK_THROWS_AS(read_png("/nonexistent-dir/x.png"), IoError);
    const fs::path bad = temp_dir() / "not.png";
    std::ofstream(bad) << "not a png at all";
    CHECK_THROWS_WITH(read_png(bad.string()), Catch::Contains("not a PNG"));
    // A PNG cut short is corrupt, not a crash.
    const fs::path good = temp_dir() / "cut.png";
    write_png_grid(good.string(), imgs, 2, 1);
    fs::resize_file(good, fs::file_size(good) / 2);
    CHECK_THROWS_AS(read_png(good.string()), IoError);
    fs::remove_all(bad.parent_path());
}
