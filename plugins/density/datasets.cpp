// Datasets: `fashion_mnist` and `mnist` (gzip'd IDX files), `npy` and `csv` tables, and
// `labeled_moons` (a 2-D toy whose context is the moon a point belongs to). The colour image
// datasets (cifar10, image_folder, npy_images) are in datasets_images.cpp.
//
// Images are f32 pixel levels 0..255 (discrete, 8 bits: a dequantizer turns them continuous),
// [784] flattened or [1, 28, 28]. With "context": "label" every image carries its class as a
// one-hot [10] context, for class-conditional flows. A missing file is an IoError naming the
// file and how to get it; a corrupt or truncated one is an IoError naming the file, never a
// crash or a silently short dataset. The file parsers live in data_readers.cpp.
#include <cmath>
#include <filesystem>
#include <new>
#include <numbers>
#include <string>
#include <vector>

#include "data_readers.hpp"
#include "density.hpp"

namespace flowlab::density {
namespace {

// ------------------------------------------------------------------------------------ IDX

// Images [first, first + count) as f32 levels, [count, rows*cols] or [count, 1, rows, cols].
DataSplit image_split(const IdxImages& im, const std::vector<std::uint8_t>* labels, std::int64_t first,
                      std::int64_t count, bool flatten) {
    DataSplit s;
    const std::int64_t px = im.rows * im.cols;  // the reader checked n * rows * cols
    s.x = flatten ? Tensor::empty({count, px}) : Tensor::empty({count, 1, im.rows, im.cols});
    float* out = s.x.f32();
    const std::uint8_t* src = im.pixels.data() + first * px;
    for (std::int64_t i = 0; i < count * px; ++i) out[i] = static_cast<float>(src[i]);
    if (labels) {
        s.context = Tensor::zeros({count, 10});
        float* c = s.context.f32();
        for (std::int64_t i = 0; i < count; ++i) c[i * 10 + (*labels)[static_cast<std::size_t>(first + i)]] = 1.0f;
    }
    return s;
}

Dataset load_idx_dataset(const Params& p, const char* name, const std::string& hint) {
    const std::string dir = p.get_string("path");
    const bool flatten = p.get_bool("flatten");
    const bool with_labels = p.get_string("context") == "label";
    const std::int64_t valid = p.get_int("valid"), train_limit = p.get_int("train_limit"),
                       test_limit = p.get_int("test_limit");
    const std::string files_hint = hint + " (or set \"path\" to a directory with train-images-idx3-ubyte.gz, "
                                          "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)";
    auto file = [&](const char* f) { return (std::filesystem::path(dir) / f).string(); };
    const IdxImages train = read_idx_images(file("train-images-idx3-ubyte.gz"), files_hint);
    const IdxImages test = read_idx_images(file("t10k-images-idx3-ubyte.gz"), files_hint);
    if (train.rows != test.rows || train.cols != test.cols)
        throw IoError(dir + ": train images are " + std::to_string(train.rows) + "x" + std::to_string(train.cols) +
                      ", test images " + std::to_string(test.rows) + "x" + std::to_string(test.cols));
    std::vector<std::uint8_t> train_labels, test_labels;
    if (with_labels) {
        train_labels = read_idx_labels(file("train-labels-idx1-ubyte.gz"), train.n, files_hint);
        test_labels = read_idx_labels(file("t10k-labels-idx1-ubyte.gz"), test.n, files_hint);
    }
    if (valid >= train.n)
        throw ConfigError(p.where("valid") + ": " + std::to_string(valid) + " validation images leave no training images (of " +
                          std::to_string(train.n) + ")");
    // The validation split is the last `valid` training images (deterministic).
    std::int64_t n_train = train.n - valid;
    if (train_limit > 0) n_train = std::min(n_train, train_limit);
    const std::int64_t n_test = test_limit > 0 ? std::min(test.n, test_limit) : test.n;
    Dataset d;
    d.event_shape = flatten ? Shape{train.rows * train.cols} : Shape{1, train.rows, train.cols};
    if (with_labels) d.context_shape = {10};
    d.train = image_split(train, with_labels ? &train_labels : nullptr, 0, n_train, flatten);
    d.valid = image_split(train, with_labels ? &train_labels : nullptr, train.n - valid, valid, flatten);
    d.test = image_split(test, with_labels ? &test_labels : nullptr, 0, n_test, flatten);
    d.discrete = true;
    d.bits = 8;
    d.description = std::string(name) + " (" + std::to_string(n_train) + " train, " + std::to_string(valid) + " valid, " +
                    std::to_string(n_test) + " test images of " + std::to_string(train.rows) + "x" +
                    std::to_string(train.cols) + ", pixel levels 0..255)";
    return d;
}

Schema idx_schema(const char* default_path) {
    return {
        param_string("path", default_path, "directory holding the four gzip'd IDX files"),
        param_bool("flatten", true, "true: [784] vectors (for vector flows); false: [1, 28, 28] images"),
        param_int("valid", 0, "training images held out (the last ones) as the validation split").min(0),
        param_int("train_limit", 0, "use at most this many training images (0 = all)").min(0),
        param_int("test_limit", 0, "use at most this many test images (0 = all)").min(0),
        param_string("context", "none", "none, or label: the class as a one-hot [10] context (conditional flows)")
            .choices({"none", "label"}),
    };
}

// ------------------------------------------------------------------------------------ tables

DataSplit table_split(const Table& t, const std::vector<std::int64_t>& idx, std::int64_t first, std::int64_t count,
                      const std::vector<double>& mean, const std::vector<double>& sd) {
    DataSplit s;
    s.x = Tensor::empty({count, t.d});
    float* out = s.x.f32();
    for (std::int64_t i = 0; i < count; ++i) {
        const std::int64_t r = idx[static_cast<std::size_t>(first + i)];
        for (std::int64_t j = 0; j < t.d; ++j)
            out[i * t.d + j] = static_cast<float>((t.v[static_cast<std::size_t>(r * t.d + j)] - mean[static_cast<std::size_t>(j)]) /
                                                  sd[static_cast<std::size_t>(j)]);
    }
    return s;
}

// Shuffles (seeded), splits into test / valid / train (in that order from the front) and
// standardises every column with the training split's mean and std.
Dataset table_dataset(const Table& t, const Params& p, std::uint64_t seed, const std::string& what) {
    for (double v : t.v)
        if (!std::isfinite(v)) throw IoError(what + ": contains a non-finite value (NaN or inf)");
    const double tf = p.get_number("test_fraction"), vf = p.get_number("valid_fraction");
    if (tf + vf >= 1.0) throw ConfigError(p.where("test_fraction") + ": test_fraction + valid_fraction must stay below 1");
    std::vector<std::int64_t> idx(static_cast<std::size_t>(t.n));
    for (std::int64_t i = 0; i < t.n; ++i) idx[static_cast<std::size_t>(i)] = i;
    if (p.get_bool("shuffle")) {
        Rng rng(Rng::bits(seed, 4000));
        idx = rng.permutation(t.n);
    }
    const auto n_test = static_cast<std::int64_t>(std::floor(tf * static_cast<double>(t.n)));
    const auto n_valid = static_cast<std::int64_t>(std::floor(vf * static_cast<double>(t.n)));
    const std::int64_t n_train = t.n - n_test - n_valid;
    if (n_train < 1) throw ConfigError(p.where() + ": no rows left for training");
    std::vector<double> mean(static_cast<std::size_t>(t.d), 0.0), sd(static_cast<std::size_t>(t.d), 1.0);
    if (p.get_bool("standardize")) {
        const std::int64_t first = n_test + n_valid;
        for (std::int64_t j = 0; j < t.d; ++j) {
            double m = 0, s = 0;
            for (std::int64_t i = first; i < t.n; ++i) m += t.v[static_cast<std::size_t>(idx[static_cast<std::size_t>(i)] * t.d + j)];
            m /= static_cast<double>(n_train);
            for (std::int64_t i = first; i < t.n; ++i) {
                const double d = t.v[static_cast<std::size_t>(idx[static_cast<std::size_t>(i)] * t.d + j)] - m;
                s += d * d;
            }
            s = n_train > 1 ? std::sqrt(s / static_cast<double>(n_train - 1)) : 0.0;
            mean[static_cast<std::size_t>(j)] = m;
            sd[static_cast<std::size_t>(j)] = s > 0.0 ? s : 1.0;  // a constant column is only centred
        }
    }
    Dataset d;
    d.event_shape = {t.d};
    d.test = table_split(t, idx, 0, n_test, mean, sd);
    d.valid = table_split(t, idx, n_test, n_valid, mean, sd);
    d.train = table_split(t, idx, n_test + n_valid, n_train, mean, sd);
    d.description = what + " (" + std::to_string(n_train) + " train, " + std::to_string(n_valid) + " valid, " +
                    std::to_string(n_test) + " test rows of " + std::to_string(t.d) + " columns" +
                    (p.get_bool("standardize") ? ", standardised with the training statistics)" : ")");
    return d;
}

Schema table_schema() {
    return {
        param_required("path", ParamType::string, "the file to read"),
        param_number("test_fraction", 0.1, "fraction of the rows held out for testing").range(0.0, 0.99),
        param_number("valid_fraction", 0.0, "fraction of the rows held out for validation").range(0.0, 0.99),
        param_bool("standardize", true, "zero mean, unit std per column, from the training rows' statistics"),
        param_bool("shuffle", true, "shuffle the rows (seeded by the experiment's seed) before splitting"),
    };
}

// ------------------------------------------------------------------------------- labeled moons

// A split's size comes from the config: refuse one that cannot fit before allocating it (the
// permutation, points and context take about 32 bytes a point).
void check_fits(const Params& p, const char* key) {
    check_memory(p.where(key), p.get_int(key), 32, "points", "use fewer points");
}

// The two moons of the standard plugin's `moons` (outer (cos t, sin t), inner (1 - cos t,
// 0.5 - sin t), t ~ U(0, pi), N(0, noise^2) on both coordinates), with context = one-hot moon.
DataSplit labeled_moons(std::int64_t n, double noise, std::uint64_t seed, std::uint64_t stream) {
    DataSplit s;
    Rng rng(Rng::bits(seed, stream));
    s.x = Tensor::empty({n, 2});
    s.context = Tensor::zeros({n, 2});
    const std::vector<std::int64_t> perm = rng.permutation(n);
    float* x = s.x.f32();
    float* c = s.context.f32();
    for (std::int64_t i = 0; i < n; ++i) {
        const bool outer = perm[static_cast<std::size_t>(i)] < n / 2;
        const double t = rng.uniform() * std::numbers::pi;
        const double px = outer ? std::cos(t) : 1.0 - std::cos(t);
        const double py = outer ? std::sin(t) : 0.5 - std::sin(t);
        x[2 * i] = static_cast<float>(px + noise * rng.normal());
        x[2 * i + 1] = static_cast<float>(py + noise * rng.normal());
        c[2 * i + (outer ? 0 : 1)] = 1.0f;
    }
    return s;
}

}  // namespace

void register_datasets(Registry& reg) {
    reg.add_dataset({"fashion_mnist",
                     "Fashion-MNIST (60,000 train / 10,000 test 28x28 grey images) from gzip'd IDX files",
                     idx_schema("/usr/share/datasets/fashion-mnist"),
                     [](const Params& p, std::uint64_t) {
                         return loading(p.get_string("path"), [&] {
                             return load_idx_dataset(p, "fashion_mnist", "install the Debian package dataset-fashion-mnist");
                         });
                     }});
    reg.add_dataset({"mnist", "MNIST digits (60,000 train / 10,000 test 28x28 grey images) from gzip'd IDX files",
                     idx_schema("/usr/share/datasets/mnist"),
                     [](const Params& p, std::uint64_t) {
                         return loading(p.get_string("path"),
                                        [&] { return load_idx_dataset(p, "mnist", "download the MNIST IDX files"); });
                     }});
    reg.add_dataset({"npy", "a 2-D NumPy .npy array of rows (f4, f8, i1, i4, i8 or u1), split and standardised",
                     table_schema(), [](const Params& p, std::uint64_t seed) {
                         const std::string path = p.get_string("path");
                         return loading(path, [&] { return table_dataset(read_npy(path), p, seed, path); });
                     }});
    Schema csv = table_schema();
    csv.push_back(param_string("delimiter", ",", "the column separator (one character)"));
    csv.push_back(param_string("header", "auto", "whether the first row is a header: auto (if not numeric), yes, no")
                      .choices({"auto", "yes", "no"}));
    reg.add_dataset({"csv", "a numeric CSV table of rows, split and standardised", csv,
                     [](const Params& p, std::uint64_t seed) {
                         const std::string delim = p.get_string("delimiter");
                         if (delim.size() != 1)
                             throw ConfigError(p.where("delimiter") + ": expected one character, got '" + delim + "'");
                         const std::string path = p.get_string("path");
                         return loading(path, [&] {
                             return table_dataset(read_csv(path, delim[0], p.get_string("header")), p, seed, path);
                         });
                     }});
    reg.add_dataset({"labeled_moons",
                     "two moons whose context is the moon of each point (one-hot [2]), for conditional flows",
                     {param_int("train", 10000, "training points").min(1), param_int("test", 2000, "test points").min(0),
                      param_number("noise", 0.05, "std of the Gaussian noise on both coordinates").min(0.0)},
                     [](const Params& p, std::uint64_t seed) {
                         const double noise = p.get_number("noise");
                         for (const char* key : {"train", "test"}) check_fits(p, key);
                         Dataset d;
                         d.event_shape = {2};
                         d.context_shape = {2};
                         d.train = labeled_moons(p.get_int("train"), noise, seed, 1000);
                         d.test = labeled_moons(p.get_int("test"), noise, seed, 2000);
                         d.description = "labeled_moons (2-D toy with a one-hot moon context, noise " +
                                         std::to_string(noise) + ")";
                         return d;
                     }});
}

}  // namespace flowlab::density
