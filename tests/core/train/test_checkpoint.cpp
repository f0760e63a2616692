// Checkpoint files: a round trip, one distinct error for each kind of malformed file, the CRC,
// the validation of the training state, and the clean-up of a killed writer's temp files.
#include <catch2/catch.hpp>

#include "cli_support.hpp"
#include "test_support.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

#include "flowlab/checkpoint.hpp"
#include "flowlab/errors.hpp"

using namespace flowlab;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
    return (fs::temp_directory_path() / ("flowlab-ckpt-" + std::to_string(::getpid()) + "-" + name)).string();
}

std::string bytes_of(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void put(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << bytes;
}

// A file with header text `h` and `data` bytes after it.
std::string file_with_header(const std::string& h, const std::string& data) {
    std::string out(8, '\0');
    std::uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
    return out + h + data;
}

std::string error_of(const std::string& path) {
    return flowlab::test::message_of<IoError>([&] { read_checkpoint(path); }, "no error");
}

}  // namespace

TEST_CASE("a checkpoint round-trips tensors and metadata bit for bit", "[checkpoint]") {
    Checkpoint ck;
    ck.tensors.push_back({"param/w", Tensor::from_vector({2, 3}, {1, -2, 3.5, 4, 5, 1e-30})});
    ck.tensors.push_back({"param/d", Tensor::from_vector({2}, {0.1, 0.2}, DType::f64)});
    ck.tensors.push_back({"empty", Tensor::zeros({0})});
    ck.metadata["step"] = "42";
    std::string p = tmp_path("roundtrip.safetensors");
    write_checkpoint(p, ck);
    Checkpoint back = read_checkpoint(p);
    REQUIRE(back.tensors.size() == 3);
    CHECK(back.metadata.at("step") == "42");
    const Tensor* w = back.find("param/w");
    REQUIRE(w);
    CHECK(w->shape() == Shape{2, 3});
    CHECK(std::memcmp(w->raw(), ck.tensors[0].tensor.raw(), w->nbytes()) == 0);
    CHECK(back.find("param/d")->dtype() == DType::f64);
    // The header length is little-endian and the data starts 8-byte aligned.
    std::string raw = bytes_of(p);
    std::uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(raw[static_cast<std::size_t>(i)])) << (8 * i);
    CHECK(n % 8 == 0);
    CHECK(raw.substr(8, n).find("\"__metadata__\"") != std::string::npos);
    fs::remove(p);
}

TEST_CASE("the checkpoint loader rejects each kind of malformed file with its own message", "[checkpoint]") {
    std::string p = tmp_path("bad.safetensors");
    const std::string f32x2 = std::string(8, '\1');  // 2 floats
    struct Case {
        const char* what;
        std::string bytes;
        const char* message;
    } cases[] = {
        {"too short for a header length", "abc", "truncated checkpoint"},
        {"header length over the limit", std::string("\xff\xff\xff\xff\xff\xff\x00\x00", 8) + "{}", "exceeds the 100 MB limit"},
        {"header length past the end", std::string("\x40\x00\x00\x00\x00\x00\x00\x00", 8) + "{}", "runs past the end of the file"},
        {"header not JSON", file_with_header("{not json", ""), "not valid JSON"},
        {"header not an object", file_with_header("[1,2]", ""), "not a JSON object"},
        {"unsupported dtype", file_with_header(R"({"a":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})", "xx"),
         "unsupported dtype 'I8'"},
        {"negative shape", file_with_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", f32x2),
         "non-negative integers"},
        {"shape times dtype overflows",
         file_with_header(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", f32x2),
         "overflows"},
        {"offsets out of bounds", file_with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", f32x2),
         "out of bounds"},
        {"offsets disagree with shape", file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", f32x2),
         "needs 4"},
        {"a gap between tensors",
         file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f32x2), "contiguous"},
        {"trailing bytes", file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", f32x2),
         "trailing bytes"},
        {"duplicate names",
         file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                          f32x2),
         "duplicate tensor name 'a'"},
        {"metadata not strings", file_with_header(R"({"__metadata__":{"step":3}})", ""), "is not a string"},
        {"entry missing fields", file_with_header(R"({"a":{"dtype":"F32"}})", ""), "needs dtype, shape and data_offsets"},
    };
    for (const auto& c : cases) {
        put(p, c.bytes);
        std::string msg = error_of(p);
        INFO(c.what << ": " << msg);
        CHECK(msg.find(c.message) != std::string::npos);
        CHECK(msg.find(p) != std::string::npos);  // the message names the file
    }
    fs::remove(p);
    CHECK(error_of(tmp_path("missing.safetensors")).find("cannot open checkpoint") != std::string::npos);
}

TEST_CASE("writing a checkpoint replaces the old file only once the new one is complete", "[checkpoint]") {
    std::string p = tmp_path("atomic.safetensors");
    Checkpoint a;
    a.tensors.push_back({"x", Tensor::full({4}, 1.0)});
    write_checkpoint(p, a);
    Checkpoint b;
    b.tensors.push_back({"x", Tensor::full({4}, 2.0)});
    write_checkpoint(p, b);
    CHECK(read_checkpoint(p).find("x")->item(0) == 2.0);
    // No temporary files are left next to it.
    int others = 0;
    for (const auto& e : fs::directory_iterator(fs::path(p).parent_path()))
        if (e.path().filename().string().find("atomic.safetensors.tmp") != std::string::npos) ++others;
    CHECK(others == 0);
    fs::remove(p);
}

namespace {

// The training-state metadata of a checkpoint written at `step` of a run with 2000 examples in
// batches of 64 (31 per epoch) and 46 steps.
std::map<std::string, std::string> state_at(std::int64_t step) {
    TrainState st;
    st.step = step;
    st.optimizer_steps = step;
    st.sampler_started = step > 0;
    st.sampler_seed = 3;
    st.sampler_counter = 12345;
    st.sampler_pos = step > 0 ? ((step - 1) % 31 + 1) * 64 : 0;
    if (step >= 2) {
        st.window_loss = 0.1 + 0.2;  // not exactly representable: the round trip must be exact
        st.window_n = 2;
    }
    st.last_logged_loss = 1.0 / 3.0;
    st.train_seconds = 0.1 * static_cast<double>(step) + 1.0 / 7.0;
    std::map<std::string, std::string> m;
    put_train_state(st, m);
    return m;
}

const RunShape kRun{46, 2000, 64};

std::string state_error(const std::map<std::string, std::string>& m) {
    return flowlab::test::message_of<IoError>([&] { parse_train_state(m, "ck.safetensors", kRun); }, "no error");
}


}  // namespace

TEST_CASE("a checkpoint parses from a byte buffer exactly as from its file", "[checkpoint]") {
    Checkpoint ck;
    ck.tensors.push_back({"param/w", Tensor::from_vector({3}, {1, 2, 3})});
    ck.metadata["step"] = "7";
    std::string p = tmp_path("buffer.safetensors");
    write_checkpoint(p, ck);
    const std::string bytes = bytes_of(p);
    Checkpoint a = read_checkpoint(p), b = parse_checkpoint(bytes, "in-memory");
    CHECK(a.metadata == b.metadata);
    REQUIRE(b.find("param/w"));
    CHECK(std::memcmp(a.find("param/w")->raw(), b.find("param/w")->raw(), 12) == 0);
    // Errors name the label given for the buffer; every prefix of a valid file is an IoError.
    for (std::size_t n = 0; n < bytes.size(); ++n) {
        INFO(n);
        try {
            parse_checkpoint(std::string_view(bytes).substr(0, n), "in-memory");
            FAIL("a truncated buffer parsed");
        } catch (const IoError& e) {
            CHECK(std::string(e.what()).rfind("in-memory: ", 0) == 0);
        }
    }
    fs::remove(p);
}

TEST_CASE("flipped bits in a checkpoint's tensor data are caught by its CRC-32", "[checkpoint]") {
    Checkpoint ck;
    ck.tensors.push_back({"a", Tensor::from_vector({4}, {1, 2, 3, 4})});
    ck.tensors.push_back({"b", Tensor::from_vector({2}, {5, 6}, DType::f64)});
    ck.metadata[kCheckpointCrcKey] = "00000000";  // a stale value is replaced by the writer
    std::string p = tmp_path("crc.safetensors");
    write_checkpoint(p, ck);
    const std::string good = bytes_of(p);
    CHECK(read_checkpoint(p).metadata.at(kCheckpointCrcKey).size() == 8);
    std::uint64_t hlen = 0;
    for (int i = 0; i < 8; ++i) hlen |= static_cast<std::uint64_t>(static_cast<unsigned char>(good[static_cast<std::size_t>(i)])) << (8 * i);
    const std::size_t data = 8 + hlen;
    for (std::size_t at : {data, data + 5, good.size() - 1}) {
        for (int bit : {0, 7}) {
            std::string bad = good;
            bad[at] = static_cast<char>(bad[at] ^ (1 << bit));
            put(p, bad);
            std::string msg = error_of(p);
            INFO("byte " << at << " bit " << bit << ": " << msg);
            CHECK(msg.find("CRC-32") != std::string::npos);
            CHECK(msg.find(p) != std::string::npos);
        }
    }
    // A malformed stored value is corrupt too.
    std::string bad = good;
    const std::size_t key = bad.find(std::string("\"") + kCheckpointCrcKey + "\":\"");
    REQUIRE(key != std::string::npos);
    bad[key + std::strlen(kCheckpointCrcKey) + 4] = 'G';
    put(p, bad);
    CHECK(error_of(p).find("not 8 lower-case hex digits") != std::string::npos);
    // Files from before the CRC (none in the metadata) load unchecked.
    put(p, file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"step":"1"}})",
                            std::string(4, '\1')));
    CHECK(error_of(p) == "no error");
    fs::remove(p);
}

TEST_CASE("training-state metadata round-trips exactly through a checkpoint", "[checkpoint]") {
    TrainState st = parse_train_state(state_at(23), "ck", kRun);
    CHECK(st.step == 23);
    CHECK(st.sampler_pos == 23 * 64);
    CHECK(st.window_loss == 0.1 + 0.2);
    CHECK(st.window_n == 2);
    CHECK(st.last_logged_loss == 1.0 / 3.0);
    CHECK(st.train_seconds == 0.1 * 23.0 + 1.0 / 7.0);
    CHECK(std::isinf(st.best_valid_nll));
    CHECK(st.best_step == -1);
    CHECK(parse_train_state(state_at(0), "ck", kRun).sampler_pos == 0);
    CHECK(parse_train_state(state_at(46), "ck", kRun).sampler_pos == 15 * 64);  // 46 = 31 + 15
    // Checkpoints written before the logging window was saved still load, with an empty one.
    auto old = state_at(23);
    for (const char* k : {"train_loss_sum", "train_loss_count", "last_logged_loss", "early_stopped", "train_seconds"})
        old.erase(k);
    TrainState o = parse_train_state(old, "ck", kRun);
    CHECK(o.window_n == 0);
    CHECK(o.window_loss == 0.0);
    // Their training time is unknown, and stays out of the checkpoints that follow them.
    CHECK(std::isnan(o.train_seconds));
    std::map<std::string, std::string> again;
    put_train_state(o, again);
    CHECK(again.count("train_seconds") == 0);
}

TEST_CASE("training-state metadata with an invalid field is rejected naming the file and the field", "[checkpoint]") {
    struct Case {
        const char* field;
        const char* value;
        const char* message;
        bool mismatch;
    } cases[] = {
        {"sampler_pos", "-1000000", "out of range", false},
        {"sampler_pos", "-1e11", "not an integer", false},
        {"sampler_pos", "2001", "out of range", false},
        {"sampler_pos", "640", "is at position 1472", true},
        {"step", "abc", "not an integer", false},
        {"step", "-5", "out of range", false},
        {"step", " 23", "not an integer", false},
        {"step", "+23", "not an integer", false},
        {"step", "47", "past the run's train.steps 46", true},
        {"step", "99999999999999999999", "not an integer", false},
        {"optimizer_steps", "24", "out of range", false},
        {"ema", "yes", "not 0 or 1", false},
        {"deq_rng_seed", "-1", "not an unsigned", false},
        {"deq_rng_counter", "", "not an unsigned", false},
        {"sampler_counter", "0x10", "not an unsigned", false},
        {"best_valid_nll", "nan", "not a finite number or +inf", false},
        {"best_valid_nll", "1.5", "disagrees with best_valid_nll", false},
        {"best_step", "-2", "out of range", false},
        {"evals_since_best", "24", "out of range", false},
        {"sampler_started", "0", "disagrees with step", false},
        {"train_loss_sum", "inf", "not finite", false},
        {"train_loss_count", "24", "out of range", false},
        {"last_logged_loss", "-inf", "not finite", false},
        {"early_stopped", "2", "not 0 or 1", false},
        {"train_seconds", "-1", "not a finite number of seconds", false},
        {"train_seconds", "nan", "not a finite number of seconds", false},
        {"train_seconds", "12s", "not a number", false},
        {"format", "flowlab-checkpoint-9", "unknown checkpoint format", true},
    };
    for (const auto& c : cases) {
        auto m = state_at(23);
        m[c.field] = c.value;
        std::string msg = state_error(m);
        INFO(c.field << " = \"" << c.value << "\": " << msg);
        CHECK(msg.find(c.message) != std::string::npos);
        CHECK(msg.rfind("ck.safetensors: ", 0) == 0);
        // best_valid_nll = 1.5 is caught on best_step, the field it disagrees with.
        CHECK(msg.find(std::string("'") + (std::string(c.value) == "1.5" ? "best_step" : c.field) + "'") !=
              std::string::npos);
        bool mismatch = false;
        try {
            parse_train_state(m, "ck.safetensors", kRun);
        } catch (const CheckpointMismatch&) {
            mismatch = true;
        } catch (const IoError&) {
        }
        CHECK(mismatch == c.mismatch);
    }
    for (const char* required : {"step", "sampler_pos", "deq_rng_seed", "best_valid_nll"}) {
        auto m = state_at(23);
        m.erase(required);
        INFO(required);
        CHECK(state_error(m).find(std::string("'") + required + "' is missing") != std::string::npos);
    }
    auto none = state_at(23);
    none.erase("format");
    CHECK(state_error(none).find("not a flowlab training checkpoint") != std::string::npos);
}

TEST_CASE("stale temporary checkpoint files are removed, and nothing else", "[checkpoint]") {
    fs::path dir = tmp_path("stale-dir");
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string dead = std::to_string(flowlab::test::finished_pid()), self = std::to_string(::getpid()),
                      live = std::to_string(::getppid());
    const std::vector<std::string> stale = {".step-000000005.safetensors.tmp-" + dead, ".latest.tmp-" + dead,
                                            ".step-000000006.safetensors.tmp-" + self};
    const std::vector<std::string> kept = {"step-000000005.safetensors", "latest", "notes.tmp",
                                           ".step-000000007.safetensors.tmp-" + live,  // its writer may be alive
                                           ".x.tmp-12ab", "x.tmp-" + dead, ".tmp-" + dead};
    for (const auto& f : stale) put((dir / f).string(), "x");
    for (const auto& f : kept) put((dir / f).string(), "x");
    auto removed = remove_stale_temp_files(dir.string());
    CHECK(removed.size() == stale.size());
    for (const auto& f : stale) CHECK_FALSE(fs::exists(dir / f));
    for (const auto& f : kept) CHECK(fs::exists(dir / f));
    CHECK(remove_stale_temp_files((dir / "missing").string()).empty());  // no directory: nothing, no throw
    fs::remove_all(dir);
}
