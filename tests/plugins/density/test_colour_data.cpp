// The density plugin's colour image datasets (datasets_images.cpp): cifar10, image_folder and
// npy_images, on small files each test writes into a temporary folder of its own, and the PNG
// level reader they use (core/src/train/image_io.cpp).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <unistd.h>

#include <flowlab/errors.hpp>
#include <flowlab/image_io.hpp>
#include <flowlab/ops.hpp>
#include <flowlab/registry.hpp>

#include "../../../plugins/density/data_readers.hpp"
#include "colour_files.hpp"
#include "test_support.hpp"

using namespace flowlab;
using namespace flowlab::test;
using namespace flowlab::test::colour;
namespace fs = std::filesystem;

namespace {

const Registry& registry() {
    static Registry* reg = registry_of({"standard", "density"});
    return *reg;
}

Dataset load(const std::string& json, std::uint64_t seed = 0) {
    return registry().make_dataset(Params::parse(json, "test"), seed);
}

fs::path temp_dir(const std::string& name) {
    fs::path d = fs::temp_directory_path() / ("flowlab_colour_test_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

std::string any_error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

// Mismatches between split image `row` ([C, H, W] or flat) and the expected levels.
template <class Fn>
int mismatches(const Tensor& x, std::int64_t row, std::int64_t c, std::int64_t h, std::int64_t w, Fn expected) {
    int bad = 0;
    for (std::int64_t ch = 0; ch < c; ++ch)
        for (std::int64_t y = 0; y < h; ++y)
            for (std::int64_t xx = 0; xx < w; ++xx)
                if (x.item(((row * c + ch) * h + y) * w + xx) != static_cast<double>(expected(ch, y, xx))) ++bad;
    return bad;
}

// The class of split row i from its one-hot context (-1 when it is not one-hot).
int label_of(const Tensor& ctx, std::int64_t i) {
    int label = -1, ones = 0;
    for (std::int64_t k = 0; k < ctx.size(1); ++k) {
        const double v = ctx.item(i * ctx.size(1) + k);
        if (v == 1.0) label = static_cast<int>(k), ++ones;
        else if (v != 0.0) return -1;
    }
    return ones == 1 ? label : -1;
}

}  // namespace

// ------------------------------------------------------------------------------------ cifar10

TEST_CASE("cifar10 reads every pixel and label as written, planes R, G, B, with fashion_mnist's splits",
          "[density][data][colour]") {
    const fs::path dir = temp_dir("cifar");
    write_cifar_folder(dir, 3, 2);
    Dataset d = load(R"({"type": "cifar10", "path": ")" + dir.string() + R"(", "valid": 2, "context": "label"})");
    CHECK(d.event_shape == Shape{3, 32, 32});
    CHECK(d.context_shape == Shape{10});
    CHECK(d.discrete);
    CHECK(d.bits == 8);
    CHECK(d.train.x.dtype() == DType::f32);
    REQUIRE(d.train.size() == 13);  // 5 x 3 training records, the last 2 held out
    REQUIRE(d.valid.size() == 2);
    REQUIRE(d.test.size() == 2);
    CHECK(d.train.x.shape() == Shape{13, 3, 32, 32});
    // Training image g is record g mod 3 of data_batch_(g / 3 + 1).
    for (int g = 0; g < 13; ++g) {
        const int f = g / 3 + 1, r = g % 3;
        CHECK(mismatches(d.train.x, g, 3, 32, 32, [&](auto c, auto y, auto x) {
                  return cifar_pixel(f, r, static_cast<int>(c), static_cast<int>(y), static_cast<int>(x));
              }) == 0);
        CHECK(label_of(d.train.context, g) == cifar_label(f, r));
    }
    // The planes in the order R, G, B: pixel (0, 0) of the first record is 41, 121, 201.
    CHECK(d.train.x.item(0) == 41.0);
    CHECK(d.train.x.item(1024) == 121.0);
    CHECK(d.train.x.item(2048) == 201.0);
    CHECK(d.train.x.item(1024 + 32 * 2 + 3) == 121.0 + 2 * 5 + 3);  // G at (y 2, x 3)
    // The validation split is the last two training records, of data_batch_5.bin.
    for (int v = 0; v < 2; ++v) {
        CHECK(mismatches(d.valid.x, v, 3, 32, 32, [&](auto c, auto y, auto x) {
                  return cifar_pixel(5, v + 1, static_cast<int>(c), static_cast<int>(y), static_cast<int>(x));
              }) == 0);
        CHECK(label_of(d.valid.context, v) == cifar_label(5, v + 1));
    }
    for (int t = 0; t < 2; ++t) {
        CHECK(mismatches(d.test.x, t, 3, 32, 32, [&](auto c, auto y, auto x) {
                  return cifar_pixel(6, t, static_cast<int>(c), static_cast<int>(y), static_cast<int>(x));
              }) == 0);
        CHECK(label_of(d.test.context, t) == cifar_label(6, t));
    }

    Dataset flat = load(R"({"type": "cifar10", "path": ")" + dir.string() +
                        R"(", "flatten": true, "train_limit": 4, "test_limit": 1})");
    CHECK(flat.event_shape == Shape{3072});
    CHECK(flat.train.x.shape() == Shape{4, 3072});
    CHECK(flat.test.size() == 1);
    CHECK_FALSE(flat.train.context.defined());
    CHECK(flat.context_shape.empty());
    CHECK(flat.train.x.item(3 * 3072 + 2048) == cifar_pixel(2, 0, 2, 0, 0));  // image 3: data_batch_2, record 0
    fs::remove_all(dir);
}

TEST_CASE("a missing, cut or corrupt CIFAR-10 batch is an IoError naming the file", "[density][data][colour]") {
    const fs::path dir = temp_dir("cifar_bad");
    const std::string p = R"({"type": "cifar10", "path": ")" + dir.string() + "\"}";
    auto fresh = [&] {
        fs::remove_all(dir);
        write_cifar_folder(dir, 2, 2);
    };

    SECTION("no folder: where to get the data") {
        const std::string msg = any_error_of([&] { load(R"({"type": "cifar10", "path": ")" + dir.string() + "/nowhere\"}"); });
        CHECK(msg.find(dir.string() + "/nowhere") != std::string::npos);
        CHECK(msg.find("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz") != std::string::npos);
        CHECK(msg.find("cifar-10-batches-bin") != std::string::npos);
        CHECK_THROWS_AS(load(R"({"type": "cifar10", "path": ")" + dir.string() + "/nowhere\"}"), IoError);
    }
    SECTION("a missing batch file") {
        fresh();
        fs::remove(dir / "data_batch_3.bin");
        CHECK_THROWS_AS(load(p), IoError);
        const std::string msg = any_error_of([&] { load(p); });
        CHECK(msg.find((dir / "data_batch_3.bin").string() + ": no such file") != std::string::npos);
        CHECK(msg.find("cifar-10-binary.tar.gz") != std::string::npos);
    }
    SECTION("a size that is not a whole number of 3073-byte records") {
        fresh();
        std::vector<std::uint8_t> cut = cifar_batch(2, 2);
        cut.resize(cut.size() - 5);
        write_bytes((dir / "data_batch_2.bin").string(), cut);
        CHECK_THROWS_AS(load(p), IoError);
        const std::string msg = any_error_of([&] { load(p); });
        CHECK(msg.find((dir / "data_batch_2.bin").string() + ": 6141 bytes is not a whole number of 3073-byte records") !=
              std::string::npos);
        CHECK(msg.find("1 records and 3068 bytes more") != std::string::npos);
    }
    SECTION("a label above 9") {
        fresh();
        std::vector<std::uint8_t> bad = cifar_batch(6, 2);
        bad[3073] = 10;  // record 1's label
        write_bytes((dir / "test_batch.bin").string(), bad);
        CHECK_THROWS_AS(load(p), IoError);
        const std::string msg = any_error_of([&] { load(p); });
        CHECK(msg.find((dir / "test_batch.bin").string() + ": record 1 (byte 3073): label 10 is not a class 0..9") !=
              std::string::npos);
    }
    SECTION("an empty file") {
        fresh();
        write_bytes((dir / "data_batch_4.bin").string(), {});
        const std::string msg = any_error_of([&] { load(p); });
        CHECK(msg.find((dir / "data_batch_4.bin").string() + ": empty file") != std::string::npos);
    }
    SECTION("a batch file that is a folder") {
        fresh();
        fs::remove(dir / "data_batch_1.bin");
        fs::create_directories(dir / "data_batch_1.bin");
        CHECK_THROWS_AS(load(p), IoError);
        CHECK(any_error_of([&] { load(p); }).find("data_batch_1.bin: is a directory") != std::string::npos);
    }
    SECTION("a validation split as large as the training set is a config error") {
        fresh();
        CHECK_THROWS_AS(load(R"({"type": "cifar10", "path": ")" + dir.string() + R"(", "valid": 10})"), ConfigError);
    }
    SECTION("the parser on bytes") {
        std::vector<std::uint8_t> two = cifar_batch(1, 2);
        const density::CifarBatch b = density::parse_cifar_batch(two, "x.bin");
        CHECK(b.n == 2);
        CHECK(b.labels == std::vector<std::uint8_t>{cifar_label(1, 0), cifar_label(1, 1)});
        CHECK(b.pixels[3072 + 1024 * 2 + 32 + 1] == cifar_pixel(1, 1, 2, 1, 1));
        two.push_back(0);
        CHECK_THROWS_WITH(density::parse_cifar_batch(two, "x.bin"), Catch::StartsWith("x.bin: 6147 bytes"));
    }
    fs::remove_all(dir);
}

// ------------------------------------------------------------------------------- PNG levels

TEST_CASE("PNG levels are read exactly: palettes and opaque alpha converted, 16-bit and transparency refused",
          "[density][data][colour][png]") {
    const fs::path dir = temp_dir("png_levels");
    const std::string f = (dir / "x.png").string();
    SECTION("8-bit RGB and grey as stored") {
        std::vector<std::uint8_t> chw;
        for (int i = 0; i < 3 * 2 * 5; ++i) chw.push_back(static_cast<std::uint8_t>(i * 8 + 1));
        write_png_levels(f, 3, 2, 5, chw);
        PngLevels im = read_png_levels(f);
        CHECK(im.channels == 3);
        CHECK(im.height == 2);
        CHECK(im.width == 5);
        CHECK(im.levels == chw);
        write_png_levels(f, 1, 3, 2, {0, 1, 127, 128, 254, 255});
        im = read_png_levels(f);
        CHECK(im.channels == 1);
        CHECK(im.levels == std::vector<std::uint8_t>{0, 1, 127, 128, 254, 255});
    }
    SECTION("a palette becomes RGB") {
        PngSpec s{3, 1, 8, kPalette, {2, 0, 1}, {10, 20, 30, 40, 50, 60, 70, 80, 90}, {}};
        write_png(f, s);
        const PngLevels im = read_png_levels(f);
        REQUIRE(im.channels == 3);
        CHECK(im.levels == std::vector<std::uint8_t>{70, 10, 40, 80, 20, 50, 90, 30, 60});
    }
    SECTION("an opaque alpha channel is dropped") {
        write_png(f, PngSpec{2, 1, 8, kRgba, {1, 2, 3, 255, 4, 5, 6, 255}, {}, {}});
        PngLevels im = read_png_levels(f);
        REQUIRE(im.channels == 3);
        CHECK(im.levels == std::vector<std::uint8_t>{1, 4, 2, 5, 3, 6});
        write_png(f, PngSpec{2, 1, 8, kGreyAlpha, {7, 255, 9, 255}, {}, {}});
        im = read_png_levels(f);
        REQUIRE(im.channels == 1);
        CHECK(im.levels == std::vector<std::uint8_t>{7, 9});
    }
    SECTION("1-bit grey is scaled to 0 and 255") {
        write_png(f, PngSpec{3, 1, 1, kGrey, {0b10100000}, {}, {}});
        const PngLevels im = read_png_levels(f);
        CHECK(im.levels == std::vector<std::uint8_t>{255, 0, 255});
    }
    SECTION("a transparent pixel is refused, naming the file and the pixel") {
        write_png(f, PngSpec{2, 1, 8, kRgba, {1, 2, 3, 255, 4, 5, 6, 128}, {}, {}});
        CHECK_THROWS_AS(read_png_levels(f), IoError);
        CHECK_THROWS_WITH(read_png_levels(f), Catch::StartsWith(f + ": pixel (1, 0) is transparent (alpha 128)"));
        // Transparency of a palette entry (tRNS) counts too.
        write_png(f, PngSpec{2, 1, 8, kPalette, {0, 1}, {10, 20, 30, 40, 50, 60}, {255, 0}});
        CHECK_THROWS_WITH(read_png_levels(f), Catch::StartsWith(f + ": pixel (1, 0) is transparent"));
    }
    SECTION("16 bits are refused") {
        write_png(f, PngSpec{1, 1, 16, kRgb, {1, 2, 3, 4, 5, 6}, {}, {}});
        CHECK_THROWS_AS(read_png_levels(f), IoError);
        CHECK_THROWS_WITH(read_png_levels(f), Catch::StartsWith(f + ": a 16-bit PNG"));
    }
    SECTION("a header announcing more pixels than memory holds is refused before decoding") {
        write_png_claiming(f, 1000000, 1000000);  // 3 TB of RGB in a file of a few kB
        CHECK_THROWS_AS(read_png_levels(f), IoError);
        CHECK_THROWS_WITH(read_png_levels(f), Catch::StartsWith(f + ": a 1000000 x 1000000 image needs"));
        CHECK_THROWS_WITH(read_png(f), Catch::StartsWith(f + ": a 1000000 x 1000000 image needs"));
    }
    SECTION("not a PNG") {
        write_bytes(f, {1, 2, 3});
        CHECK_THROWS_WITH(read_png_levels(f), Catch::StartsWith(f + ": not a PNG file"));
    }
    fs::remove_all(dir);
}

// ------------------------------------------------------------------------------- image_folder

TEST_CASE("image_folder reads grey PNGs in a seeded split that holds every image once", "[density][data][colour]") {
    const fs::path dir = temp_dir("folder_grey");
    // Image k (5 high, 4 wide): pixel (y, x) = 20 k + 4 y + x.
    for (int k = 0; k < 10; ++k) {
        std::vector<std::uint8_t> px;
        for (int i = 0; i < 20; ++i) px.push_back(static_cast<std::uint8_t>(20 * k + i));
        write_png_levels((dir / ("img_" + std::to_string(k) + ".png")).string(), 1, 5, 4, px);
    }
    colour::write_bytes((dir / "README.txt").string(), {'h', 'i'});  // not a PNG: ignored
    const std::string p = R"({"type": "image_folder", "path": ")" + dir.string() + R"(", "test_fraction": 0.2})";
    Dataset d = load(p, 3);
    CHECK(d.event_shape == Shape{1, 5, 4});
    CHECK(d.discrete);
    CHECK(d.bits == 8);
    CHECK(d.context_shape.empty());
    CHECK_FALSE(d.train.context.defined());
    REQUIRE(d.train.size() == 8);
    REQUIRE(d.test.size() == 2);
    CHECK(d.valid.size() == 0);
    std::multiset<int> seen;
    std::vector<int> test_ids;
    for (const DataSplit* s : {&d.train, &d.test})
        for (std::int64_t i = 0; i < s->size(); ++i) {
            const int k = static_cast<int>(s->x.item(i * 20)) / 20;
            seen.insert(k);
            if (s == &d.test) test_ids.push_back(k);
            CHECK(mismatches(s->x, i, 1, 5, 4, [&](auto, auto y, auto x) { return 20 * k + 4 * y + x; }) == 0);
        }
    CHECK(seen == std::multiset<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
    // The split depends on the seed only: the same seed, the same test images.
    Dataset again = load(p, 3);
    for (std::int64_t i = 0; i < 2; ++i) CHECK(static_cast<int>(again.test.x.item(i * 20)) / 20 == test_ids[i]);
    // Limits keep the first images of each split; flatten gives vectors.
    Dataset small = load(R"({"type": "image_folder", "path": ")" + dir.string() +
                             R"(", "test_fraction": 0.2, "valid_fraction": 0.1, "train_limit": 3, "test_limit": 1, "flatten": true})",
                         3);
    CHECK(small.event_shape == Shape{20});
    CHECK(small.train.size() == 3);
    CHECK(small.valid.size() == 1);
    CHECK(small.test.size() == 1);
    // "label" needs class sub-folders.
    CHECK_THROWS_AS(load(R"({"type": "image_folder", "path": ")" + dir.string() + R"(", "context": "label"})"), ConfigError);
    fs::remove_all(dir);
}

TEST_CASE("image_folder with one sub-folder per class gives RGB images and their class as context",
          "[density][data][colour]") {
    const fs::path dir = temp_dir("folder_rgb");
    // Five 3x2 RGB images; image id: R = 10 id, G = 100 + y, B = 200 + x. Classes in name order:
    // "a_dog" (ids 3, 4) is class 0, "b_cat" (ids 0, 1, 2) class 1.
    std::map<int, int> class_of;
    auto image = [&](const std::string& cls, int id, int label) {
        fs::create_directories(dir / cls);
        std::vector<std::uint8_t> chw(18);
        for (int y = 0; y < 3; ++y)
            for (int x = 0; x < 2; ++x) {
                chw[static_cast<std::size_t>(y * 2 + x)] = static_cast<std::uint8_t>(10 * id);
                chw[static_cast<std::size_t>(6 + y * 2 + x)] = static_cast<std::uint8_t>(100 + y);
                chw[static_cast<std::size_t>(12 + y * 2 + x)] = static_cast<std::uint8_t>(200 + x);
            }
        write_png_levels((dir / cls / ("i" + std::to_string(id) + ".png")).string(), 3, 3, 2, chw);
        class_of[id] = label;
    };
    for (int id = 0; id < 3; ++id) image("b_cat", id, 1);
    for (int id = 3; id < 5; ++id) image("a_dog", id, 0);
    fs::create_directories(dir / ".hidden");  // skipped, like hidden files
    Dataset d = load(R"({"type": "image_folder", "path": ")" + dir.string() +
                     R"(", "test_fraction": 0.0, "context": "label"})");
    CHECK(d.event_shape == Shape{3, 3, 2});
    CHECK(d.context_shape == Shape{2});
    REQUIRE(d.train.size() == 5);
    std::set<int> ids;
    for (std::int64_t i = 0; i < 5; ++i) {
        const int id = static_cast<int>(d.train.x.item(i * 18)) / 10;
        ids.insert(id);
        CHECK(mismatches(d.train.x, i, 3, 3, 2, [&](auto c, auto y, auto x) {
                  return c == 0 ? 10 * id : c == 1 ? 100 + y : 200 + x;
              }) == 0);
        CHECK(label_of(d.train.context, i) == class_of[id]);
    }
    CHECK(ids == std::set<int>{0, 1, 2, 3, 4});
    // Without "label" the classes are not a context.
    Dataset plain = load(R"({"type": "image_folder", "path": ")" + dir.string() + R"(", "test_fraction": 0.0})");
    CHECK(plain.context_shape.empty());
    CHECK(plain.description.find("2 classes") != std::string::npos);

    // PNG files beside class folders, an empty class folder, an empty folder: IoErrors naming them.
    write_png_levels((dir / "stray.png").string(), 3, 3, 2, std::vector<std::uint8_t>(18, 0));
    CHECK_THROWS_AS(load(R"({"type": "image_folder", "path": ")" + dir.string() + "\"}"), IoError);
    CHECK(any_error_of([&] { load(R"({"type": "image_folder", "path": ")" + dir.string() + "\"}"); }).find("stray.png") !=
          std::string::npos);
    fs::remove(dir / "stray.png");
    fs::create_directories(dir / "c_empty");
    CHECK(any_error_of([&] { load(R"({"type": "image_folder", "path": ")" + dir.string() + "\"}"); })
              .find((dir / "c_empty").string() + ": a class sub-folder without PNG files") != std::string::npos);
    const fs::path empty = temp_dir("folder_empty");
    CHECK_THROWS_WITH(load(R"({"type": "image_folder", "path": ")" + empty.string() + "\"}"),
                      Catch::Contains(empty.string() + ": no PNG files"));
    CHECK_THROWS_AS(load(R"({"type": "image_folder", "path": ")" + empty.string() + "/nowhere\"}"), IoError);
    fs::remove_all(empty);
    fs::remove_all(dir);
}

TEST_CASE("image_folder images of different sizes or channels are an IoError naming the file and both sizes",
          "[density][data][colour]") {
    const fs::path dir = temp_dir("folder_mixed");
    const std::string p = R"({"type": "image_folder", "path": ")" + dir.string() + "\"}";
    write_png_levels((dir / "a.png").string(), 1, 4, 4, std::vector<std::uint8_t>(16, 1));
    write_png_levels((dir / "b.png").string(), 1, 4, 4, std::vector<std::uint8_t>(16, 2));
    SECTION("size") {
        write_png_levels((dir / "c.png").string(), 1, 4, 5, std::vector<std::uint8_t>(20, 3));
        CHECK_THROWS_AS(load(p), IoError);
        const std::string msg = any_error_of([&] { load(p); });
        CHECK(msg.find((dir / "c.png").string() + ": grey [1, 4, 5], but " + (dir / "a.png").string() +
                       " (the first image) is grey [1, 4, 4]") != std::string::npos);
    }
    SECTION("channels") {
        write_png_levels((dir / "c.png").string(), 3, 4, 4, std::vector<std::uint8_t>(48, 3));
        const std::string msg = any_error_of([&] { load(p); });
        CHECK(msg.find((dir / "c.png").string() + ": RGB [3, 4, 4], but " + (dir / "a.png").string() +
                       " (the first image) is grey [1, 4, 4]") != std::string::npos);
    }
    SECTION("a file that is no PNG") {
        write_bytes((dir / "c.png").string(), {'n', 'o'});
        CHECK_THROWS_WITH(load(p), Catch::Contains((dir / "c.png").string() + ": not a PNG file"));
    }
    fs::remove_all(dir);
}

// -------------------------------------------------------------------------------- npy_images

TEST_CASE("npy_images in NHWC, NCHW and Fortran order give the same tensor", "[density][data][colour]") {
    const fs::path dir = temp_dir("npy_images");
    const int N = 4, C = 3, H = 2, W = 5;
    auto value = [](int n, int c, int h, int w) { return static_cast<std::uint8_t>(n * 40 + c * 13 + h * 5 + w); };
    std::vector<std::uint8_t> nchw, nhwc, fortran(static_cast<std::size_t>(N * C * H * W));
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c)
            for (int h = 0; h < H; ++h)
                for (int w = 0; w < W; ++w) {
                    nchw.push_back(value(n, c, h, w));
                    fortran[static_cast<std::size_t>(n + N * (c + C * (h + H * w)))] = value(n, c, h, w);
                }
    for (int n = 0; n < N; ++n)
        for (int h = 0; h < H; ++h)
            for (int w = 0; w < W; ++w)
                for (int c = 0; c < C; ++c) nhwc.push_back(value(n, c, h, w));
    write_npy_u8((dir / "nchw.npy").string(), {N, C, H, W}, nchw);
    write_npy_u8((dir / "nhwc.npy").string(), {N, H, W, C}, nhwc);
    write_npy_u8((dir / "fortran.npy").string(), {N, C, H, W}, fortran, true);
    auto p = [&](const std::string& file, const std::string& extra = "") {
        return R"({"type": "npy_images", "path": ")" + (dir / file).string() + R"(", "test_fraction": 0.25)" + extra + "}";
    };
    const Dataset a = load(p("nchw.npy"), 5);
    CHECK(a.event_shape == Shape{3, 2, 5});
    CHECK(a.discrete);
    CHECK(a.bits == 8);
    REQUIRE(a.train.size() == 3);
    REQUIRE(a.test.size() == 1);
    for (const Dataset& b : {load(p("nhwc.npy"), 5), load(p("nhwc.npy", R"(, "layout": "nhwc")"), 5),
                             load(p("fortran.npy"), 5), load(p("nchw.npy", R"(, "layout": "nchw")"), 5)}) {
        REQUIRE(b.train.x.shape() == a.train.x.shape());
        REQUIRE(b.test.x.shape() == a.test.x.shape());
        CHECK(max_abs(kern::sub(b.train.x, a.train.x)) == 0.0);
        CHECK(max_abs(kern::sub(b.test.x, a.test.x)) == 0.0);
    }
    // And the values are the array's: image n's first level is 40 n.
    for (std::int64_t i = 0; i < 3; ++i) {
        const int n = static_cast<int>(a.train.x.item(i * 30)) / 40;
        CHECK(mismatches(a.train.x, i, C, H, W, [&](auto c, auto h, auto w) {
                  return value(n, static_cast<int>(c), static_cast<int>(h), static_cast<int>(w));
              }) == 0);
    }
    // [N, H, W] is grey.
    write_npy_u8((dir / "grey.npy").string(), {N, H, W}, std::vector<std::uint8_t>(N * H * W, 9));
    CHECK(load(p("grey.npy")).event_shape == Shape{1, 2, 5});
    // A shape both layouts read needs "layout"; one neither reads, a wrong layout, a wrong dtype
    // or rank are IoErrors naming the file.
    write_npy_u8((dir / "both.npy").string(), {N, 3, 2, 3}, std::vector<std::uint8_t>(N * 18, 1));
    CHECK_THROWS_AS(load(p("both.npy")), ConfigError);
    CHECK_THROWS_WITH(load(p("both.npy")), Catch::Contains("/layout") && Catch::Contains("both.npy"));
    CHECK(load(p("both.npy", R"(, "layout": "nhwc")")).event_shape == Shape{3, 3, 2});
    write_npy_u8((dir / "neither.npy").string(), {N, 2, 2, 4}, std::vector<std::uint8_t>(N * 16, 1));
    CHECK_THROWS_AS(load(p("neither.npy")), IoError);
    CHECK_THROWS_WITH(load(p("nchw.npy", R"(, "layout": "nhwc")")),
                      Catch::Contains("nchw.npy: shape (4, 3, 2, 5) read as [N, H, W, C] has 5 channels"));
    write_npy_u8((dir / "f4.npy").string(), {2, 1, 1, 1}, std::vector<std::uint8_t>(8, 0), false, "<f4");
    CHECK_THROWS_AS(load(p("f4.npy")), IoError);
    CHECK_THROWS_WITH(load(p("f4.npy")), Catch::Contains("f4.npy: header: dtype '<f4'") && Catch::Contains("uint8"));
    write_npy_u8((dir / "rank2.npy").string(), {4, 6}, std::vector<std::uint8_t>(24, 0));
    CHECK_THROWS_WITH(load(p("rank2.npy")), Catch::Contains("rank2.npy: shape (4, 6) is not an array of images"));
    // The parser itself: a cut file.
    std::vector<std::uint8_t> bytes;
    {
        std::ifstream in(dir / "nchw.npy", std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    bytes.pop_back();
    CHECK_THROWS_WITH(density::parse_npy_u8(bytes, "cut.npy"), Catch::StartsWith("cut.npy: truncated .npy file"));
    fs::remove_all(dir);
}
