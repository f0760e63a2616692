// Colour (and grey) image datasets: `cifar10` (the binary batches), `image_folder` (PNG files,
// optionally one sub-folder per class) and `npy_images` (a uint8 .npy array of images).
//
// Like fashion_mnist, images are f32 pixel levels 0..255 (discrete, 8 bits: a dequantizer
// turns them continuous), [C, H, W] or flattened, with "context": "label" giving the class as a
// one-hot context. Unlike it, `flatten` defaults to false: these datasets exist for image flows.
// Sizes a folder or file announces are checked against the available memory before the f32
// tensors are allocated; every fault of a file is an IoError naming it.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <flowlab/image_io.hpp>

#include "data_readers.hpp"
#include "density.hpp"

namespace flowlab::density {
namespace {

namespace fs = std::filesystem;

// A split of `count` images [C, H, W] (or flattened), with a one-hot [classes] context when
// classes > 0.
DataSplit empty_split(std::int64_t count, const Shape& chw, bool flatten, std::int64_t classes) {
    DataSplit s;
    s.x = flatten ? Tensor::empty({count, numel(chw)}) : Tensor::empty(with_batch(count, chw));
    if (classes > 0) s.context = Tensor::zeros({count, classes});
    return s;
}

// Row `row` of split s: the bytes of one image [C, H, W] as levels, and its class.
void put_image(DataSplit& s, std::int64_t row, const std::uint8_t* px, std::int64_t size, int label) {
    float* out = s.x.f32() + row * size;
    for (std::int64_t i = 0; i < size; ++i) out[i] = static_cast<float>(px[i]);
    if (s.context.defined()) s.context.f32()[row * s.context.size(1) + label] = 1.0f;
}

std::string image_kind(std::int64_t c) { return c == 1 ? "grey" : c == 3 ? "RGB" : std::to_string(c) + "-channel"; }

void finish(Dataset& d, const Shape& chw, bool flatten, std::int64_t classes) {
    d.event_shape = flatten ? Shape{numel(chw)} : chw;
    if (classes > 0) d.context_shape = {classes};
    d.discrete = true;  // 8-bit levels, as fashion_mnist
    d.bits = 8;
}

std::string counts_text(const Dataset& d) {
    return std::to_string(d.train.size()) + " train, " + std::to_string(d.valid.size()) + " valid, " +
           std::to_string(d.test.size()) + " test";
}

// The parameters every image dataset shares with fashion_mnist (flatten and context aside).
Schema limits_schema() {
    return {
        param_int("train_limit", 0, "use at most this many training images (0 = all)").min(0),
        param_int("test_limit", 0, "use at most this many test images (0 = all)").min(0),
    };
}

ParamSpec flatten_param(const std::string& shape) {
    return param_bool("flatten", false, "true: flat vectors (for vector flows); false: " + shape + " images");
}

// ------------------------------------------------------------------------------------ cifar10

constexpr const char* kCifarHint =
    "CIFAR-10 is not packaged for Debian: download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, "
    "unpack it (tar xzf) and set data.path to its cifar-10-batches-bin folder";

Dataset load_cifar10(const Params& p) {
    const std::string dir = p.get_string("path");
    const bool flatten = p.get_bool("flatten");
    const std::int64_t classes = p.get_string("context") == "label" ? 10 : 0;
    const std::int64_t valid = p.get_int("valid"), train_limit = p.get_int("train_limit"),
                       test_limit = p.get_int("test_limit");
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) throw IoError(dir + ": no such folder; " + kCifarHint);
    std::vector<std::string> files;
    for (int i = 1; i <= 5; ++i) files.push_back((fs::path(dir) / ("data_batch_" + std::to_string(i) + ".bin")).string());
    files.push_back((fs::path(dir) / "test_batch.bin").string());
    // Every file's record count from its size, before reading any: a missing or cut file fails
    // fast, and the tensors are allocated once at their final size.
    std::vector<std::int64_t> records;
    std::int64_t total_train = 0;
    for (std::size_t i = 0; i < files.size(); ++i) {
        records.push_back(cifar_batch_records(files[i], kCifarHint));
        if (i < 5) total_train += records.back();
    }
    if (valid >= total_train)
        throw ConfigError(p.where("valid") + ": " + std::to_string(valid) + " validation images leave no training images (of " +
                          std::to_string(total_train) + ")");
    // As fashion_mnist: the validation split is the last `valid` training images.
    std::int64_t n_train = total_train - valid;
    if (train_limit > 0) n_train = std::min(n_train, train_limit);
    const std::int64_t n_test = test_limit > 0 ? std::min(records[5], test_limit) : records[5];
    check_memory(p.where("path"), n_train + valid + n_test, kCifarPixels * 4 + classes * 4, "CIFAR-10 images",
                 "set train_limit and test_limit to use fewer");
    const Shape chw{3, 32, 32};
    Dataset d;
    d.train = empty_split(n_train, chw, flatten, classes);
    d.valid = empty_split(valid, chw, flatten, classes);
    d.test = empty_split(n_test, chw, flatten, classes);
    const std::int64_t valid_from = total_train - valid;
    std::int64_t first = 0;  // global training index of the file's first record
    for (std::size_t i = 0; i < files.size(); ++i) {
        const bool test = i == 5;
        const std::int64_t n = records[i];
        if (test) first = 0;
        // Only files holding a record some split uses are read.
        const bool used = test ? n_test > 0 : (first < n_train || first + n > valid_from);
        if (used) {
            const CifarBatch b = read_cifar_batch(files[i], kCifarHint);
            if (b.n != n)
                throw IoError(files[i] + ": changed while loading (" + std::to_string(n) + " records, then " +
                              std::to_string(b.n) + ")");
            for (std::int64_t r = 0; r < n; ++r) {
                const std::int64_t g = first + r;
                const std::uint8_t* px = b.pixels.data() + r * kCifarPixels;
                const int label = b.labels[static_cast<std::size_t>(r)];
                if (test) {
                    if (g < n_test) put_image(d.test, g, px, kCifarPixels, label);
                } else if (g < n_train) {
                    put_image(d.train, g, px, kCifarPixels, label);
                } else if (g >= valid_from) {
                    put_image(d.valid, g - valid_from, px, kCifarPixels, label);
                }
            }
        }
        first += n;
    }
    finish(d, chw, flatten, classes);
    d.description = "cifar10 (" + counts_text(d) + " images of 32x32 RGB, pixel levels 0..255)";
    return d;
}

Schema cifar10_schema() {
    Schema s = {
        param_string("path", "/usr/share/datasets/cifar-10-batches-bin",
                     "folder holding data_batch_1.bin ... data_batch_5.bin and test_batch.bin (CIFAR-10's binary version)"),
        flatten_param("[3, 32, 32]"),
        param_int("valid", 0, "training images held out (the last ones) as the validation split").min(0),
    };
    for (auto& l : limits_schema()) s.push_back(l);
    s.push_back(param_string("context", "none", "none, or label: the class as a one-hot [10] context (conditional flows)")
                    .choices({"none", "label"}));
    return s;
}

// ------------------------------------------------------------------- seeded train/test splits

// Which split each image of n goes to, from a seeded permutation: the first floor(tf n)
// positions are the test split, the next floor(vf n) the validation split, the rest training
// (as the table datasets split their rows); the limits keep the first images of a split.
struct SplitPlan {
    std::vector<std::int64_t> order;  // order[pos] = the image at position pos
    std::int64_t n_test = 0, n_valid = 0, n_train = 0;           // sizes before the limits
    std::int64_t use_test = 0, use_train = 0;                    // after them
    // The split and row of position pos, or nullptr when the image is not used.
    DataSplit* where(Dataset& d, std::int64_t pos, std::int64_t* row) const {
        if (pos < n_test) {
            *row = pos;
            return pos < use_test ? &d.test : nullptr;
        }
        if (pos < n_test + n_valid) {
            *row = pos - n_test;
            return &d.valid;
        }
        *row = pos - n_test - n_valid;
        return *row < use_train ? &d.train : nullptr;
    }
    std::int64_t used() const { return use_test + n_valid + use_train; }
};

SplitPlan plan_split(std::int64_t n, const Params& p, std::uint64_t seed, const std::string& what) {
    const double tf = p.get_number("test_fraction"), vf = p.get_number("valid_fraction");
    if (tf + vf >= 1.0) throw ConfigError(p.where("test_fraction") + ": test_fraction + valid_fraction must stay below 1");
    SplitPlan s;
    Rng rng(Rng::bits(seed, 4000));
    s.order = rng.permutation(n);
    s.n_test = static_cast<std::int64_t>(std::floor(tf * static_cast<double>(n)));
    s.n_valid = static_cast<std::int64_t>(std::floor(vf * static_cast<double>(n)));
    s.n_train = n - s.n_test - s.n_valid;
    if (s.n_train < 1) throw ConfigError(p.where() + ": " + what + " holds " + std::to_string(n) + " images, none left for training");
    const std::int64_t tl = p.get_int("train_limit"), sl = p.get_int("test_limit");
    s.use_train = tl > 0 ? std::min(s.n_train, tl) : s.n_train;
    s.use_test = sl > 0 ? std::min(s.n_test, sl) : s.n_test;
    return s;
}

Schema split_schema() {
    Schema s = {
        param_number("test_fraction", 0.1, "fraction of the images held out for testing (a seeded random split)")
            .range(0.0, 0.99),
        param_number("valid_fraction", 0.0, "fraction of the images held out for validation").range(0.0, 0.99),
    };
    for (auto& l : limits_schema()) s.push_back(l);
    return s;
}

// ------------------------------------------------------------------------------- image_folder

bool is_png_name(const fs::path& p) {
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return ext == ".png";
}

struct FolderListing {
    std::vector<std::string> files;    // sorted within each class, classes in name order
    std::vector<int> labels;           // per file: the class index, or 0 without classes
    std::vector<std::string> classes;  // empty: no class sub-folders
};

// The PNG files directly in `dir` (sorted byte-wise, so the order is the locale's neither) and
// its sub-folders, hidden entries (".name") skipped.
void scan(const fs::path& dir, std::vector<std::string>* pngs, std::vector<std::string>* subdirs) {
    try {
        for (const auto& e : fs::directory_iterator(dir)) {
            const std::string name = e.path().filename().string();
            if (name.empty() || name[0] == '.') continue;
            if (subdirs && e.is_directory()) subdirs->push_back(name);
            else if (e.is_regular_file() && is_png_name(e.path())) pngs->push_back(e.path().string());
        }
    } catch (const fs::filesystem_error& e) {
        throw IoError(dir.string() + ": cannot list the folder (" + e.code().message() + ")");
    }
    std::sort(pngs->begin(), pngs->end());
    if (subdirs) std::sort(subdirs->begin(), subdirs->end());
}

FolderListing list_image_folder(const std::string& dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        throw IoError(dir + ": no such folder; set data.path to a folder of PNG files, or of one sub-folder of PNG files "
                      "per class");
    FolderListing l;
    std::vector<std::string> top, subdirs;
    scan(dir, &top, &subdirs);
    if (subdirs.empty()) {
        l.files = std::move(top);
        l.labels.assign(l.files.size(), 0);
    } else {
        if (!top.empty())
            throw IoError(dir + ": holds both PNG files (" + fs::path(top[0]).filename().string() + ") and sub-folders (" +
                          subdirs[0] + "); put every image in a class sub-folder, or none");
        for (const std::string& c : subdirs) {
            std::vector<std::string> files;
            scan(fs::path(dir) / c, &files, nullptr);
            if (files.empty())
                throw IoError((fs::path(dir) / c).string() + ": a class sub-folder without PNG files; remove it, or put its "
                              "images in it");
            for (auto& f : files) {
                l.files.push_back(std::move(f));
                l.labels.push_back(static_cast<int>(l.classes.size()));
            }
            l.classes.push_back(c);
        }
    }
    if (l.files.empty()) throw IoError(dir + ": no PNG files (*.png) in the folder");
    return l;
}

std::string png_text(const PngLevels& im) {
    return image_kind(im.channels) + " [" + std::to_string(im.channels) + ", " + std::to_string(im.height) + ", " +
           std::to_string(im.width) + "]";
}

Dataset load_image_folder(const Params& p, std::uint64_t seed) {
    const std::string dir = p.get_string("path");
    const bool flatten = p.get_bool("flatten");
    const FolderListing l = list_image_folder(dir);
    const bool with_labels = p.get_string("context") == "label";
    if (with_labels && l.classes.empty())
        throw ConfigError(p.where("context") + ": \"label\" needs one sub-folder of images per class, and " + dir +
                          " has none; use \"none\"");
    const std::int64_t classes = with_labels ? static_cast<std::int64_t>(l.classes.size()) : 0;
    const auto n = static_cast<std::int64_t>(l.files.size());
    const SplitPlan plan = plan_split(n, p, seed, dir);
    // The first file (in sorted order) sets the size every other image must have.
    const PngLevels ref = read_png_levels(l.files[0]);
    const Shape chw{ref.channels, ref.height, ref.width};
    const std::int64_t size = numel(chw);
    check_memory(p.where("path"), plan.used(), size * 4 + classes * 4, "images of " + shape_str(chw),
                 "set train_limit and test_limit to use fewer, or use smaller images");
    Dataset d;
    d.train = empty_split(plan.use_train, chw, flatten, classes);
    d.valid = empty_split(plan.n_valid, chw, flatten, classes);
    d.test = empty_split(plan.use_test, chw, flatten, classes);
    for (std::int64_t pos = 0; pos < n; ++pos) {
        std::int64_t row = 0;
        DataSplit* s = plan.where(d, pos, &row);
        if (!s) continue;
        const auto i = static_cast<std::size_t>(plan.order[static_cast<std::size_t>(pos)]);
        const PngLevels im = i == 0 ? ref : read_png_levels(l.files[i]);
        if (im.channels != ref.channels || im.height != ref.height || im.width != ref.width)
            throw IoError(l.files[i] + ": " + png_text(im) + ", but " + l.files[0] + " (the first image) is " + png_text(ref) +
                          "; the images of an image_folder must all have one size and one channel count (resize or "
                          "convert them first)");
        put_image(*s, row, im.levels.data(), size, l.labels[i]);
    }
    finish(d, chw, flatten, classes);
    d.description = "image_folder " + dir + " (" + counts_text(d) + " images of " + image_kind(ref.channels) + " " +
                    std::to_string(ref.height) + "x" + std::to_string(ref.width) + ", pixel levels 0..255" +
                    (l.classes.empty() ? "" : ", " + std::to_string(l.classes.size()) + " classes") + ")";
    return d;
}

Schema image_folder_schema() {
    Schema s = {
        param_required("path", ParamType::string,
                       "folder of PNG files of one size, grey or RGB; or of one sub-folder of them per class"),
        flatten_param("[C, H, W]"),
    };
    for (auto& x : split_schema()) s.push_back(x);
    s.push_back(param_string("context", "none",
                             "none, or label: the class sub-folder (in name order) as a one-hot context (conditional flows)")
                    .choices({"none", "label"}));
    return s;
}

// -------------------------------------------------------------------------------- npy_images

// An array's images as [N, C, H, W], and whether they are stored channels-last.
struct NpyImageShape {
    Shape nchw;
    bool channels_last = false;
};

// From the array's shape and the layout: IoError when it is no array of grey or RGB images,
// ConfigError when "auto" cannot tell the layout.
NpyImageShape npy_image_shape(const U8Array& a, const std::string& layout, const std::string& path, const Params& p) {
    const auto& s = a.shape;
    std::string shape = "(";
    for (std::size_t i = 0; i < s.size(); ++i) shape += (i ? ", " : "") + std::to_string(s[i]);
    shape += ")";
    if (s.size() == 3) return {{s[0], 1, s[1], s[2]}, false};  // [N, H, W]: grey whatever the layout
    if (s.size() != 4)
        throw IoError(path + ": shape " + shape + " is not an array of images [N, H, W], [N, H, W, C] or [N, C, H, W]");
    const bool nchw_ok = s[1] == 1 || s[1] == 3, nhwc_ok = s[3] == 1 || s[3] == 3;
    bool last = layout == "nhwc";
    if (layout == "auto") {
        if (nchw_ok && nhwc_ok)
            throw ConfigError(p.where("layout") + ": " + path + " has shape " + shape +
                              ", which reads as [N, C, H, W] and as [N, H, W, C]; set \"layout\" to \"nchw\" or \"nhwc\"");
        if (!nchw_ok && !nhwc_ok)
            throw IoError(path + ": shape " + shape +
                          " has 1 or 3 channels neither in dimension 1 ([N, C, H, W]) nor in dimension 3 ([N, H, W, C]); "
                          "images are grey or RGB");
        last = nhwc_ok;
    }
    const std::int64_t c = last ? s[3] : s[1];
    if (c != 1 && c != 3)
        throw IoError(path + ": shape " + shape + " read as " + (last ? "[N, H, W, C]" : "[N, C, H, W]") + " has " +
                      std::to_string(c) + " channels; images are grey (1) or RGB (3): check \"layout\"");
    return {last ? Shape{s[0], s[3], s[1], s[2]} : Shape{s[0], s[1], s[2], s[3]}, last};
}

Dataset load_npy_images(const Params& p, std::uint64_t seed) {
    const std::string path = p.get_string("path");
    const bool flatten = p.get_bool("flatten");
    const U8Array a = read_npy_u8(path);
    const NpyImageShape is = npy_image_shape(a, p.get_string("layout"), path, p);
    const Shape& nchw = is.nchw;
    const bool channels_last = is.channels_last;
    const std::int64_t n = nchw[0], c = nchw[1], h = nchw[2], w = nchw[3];
    const Shape chw{c, h, w};
    const std::int64_t size = c * h * w;
    const SplitPlan plan = plan_split(n, p, seed, path);
    check_memory(p.where("path"), plan.used(), size * 4, "images of " + shape_str(chw),
                 "set train_limit and test_limit to use fewer");
    Dataset d;
    d.train = empty_split(plan.use_train, chw, flatten, 0);
    d.valid = empty_split(plan.n_valid, chw, flatten, 0);
    d.test = empty_split(plan.use_test, chw, flatten, 0);
    std::vector<std::uint8_t> img(static_cast<std::size_t>(size));
    for (std::int64_t pos = 0; pos < n; ++pos) {
        std::int64_t row = 0;
        DataSplit* s = plan.where(d, pos, &row);
        if (!s) continue;
        const std::uint8_t* src = a.v.data() + plan.order[static_cast<std::size_t>(pos)] * size;
        if (channels_last) {  // [H, W, C] -> [C, H, W]
            for (std::int64_t ch = 0; ch < c; ++ch)
                for (std::int64_t k = 0; k < h * w; ++k) img[static_cast<std::size_t>(ch * h * w + k)] = src[k * c + ch];
            src = img.data();
        }
        put_image(*s, row, src, size, 0);
    }
    finish(d, chw, flatten, 0);
    d.description = "npy_images " + path + " (" + counts_text(d) + " images of " + image_kind(c) + " " + std::to_string(h) +
                    "x" + std::to_string(w) + ", pixel levels 0..255)";
    return d;
}

Schema npy_images_schema() {
    Schema s = {
        param_required("path", ParamType::string, "a uint8 .npy array of images: [N, H, W], [N, H, W, C] or [N, C, H, W]"),
        param_string("layout", "auto",
                     "nhwc or nchw for a 4-D array; auto: whichever puts 1 or 3 channels where it expects them "
                     "(an error when both or neither do)")
            .choices({"auto", "nhwc", "nchw"}),
        flatten_param("[C, H, W]"),
    };
    for (auto& x : split_schema()) s.push_back(x);
    return s;
}

}  // namespace

void register_image_datasets(Registry& reg) {
    reg.add_dataset({"cifar10",
                     "CIFAR-10 (50,000 train / 10,000 test 32x32 RGB images, 10 classes) from its binary batch files",
                     cifar10_schema(), [](const Params& p, std::uint64_t) {
                         return loading(p.get_string("path"), [&] { return load_cifar10(p); });
                     }});
    reg.add_dataset({"image_folder",
                     "a folder of PNG images of one size (grey or RGB), optionally one sub-folder per class; a seeded split",
                     image_folder_schema(), [](const Params& p, std::uint64_t seed) {
                         return loading(p.get_string("path"), [&] { return load_image_folder(p, seed); });
                     }});
    reg.add_dataset({"npy_images",
                     "a uint8 .npy array of images [N, H, W, C] or [N, C, H, W] (grey or RGB); a seeded split",
                     npy_images_schema(), [](const Params& p, std::uint64_t seed) {
                         return loading(p.get_string("path"), [&] { return load_npy_images(p, seed); });
                     }});
}

}  // namespace flowlab::density
