#include "flowlab/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "flowlab/builder.hpp"
#include "flowlab/errors.hpp"
#include "train/trainer_internal.hpp"

namespace flowlab {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Largest header we accept: flowlab's are a few KB; 100 MB bounds a hostile file.
constexpr std::uint64_t kMaxHeader = 100ull << 20;

const char* st_dtype(DType dt) { return dt == DType::f32 ? "F32" : "F64"; }

// zlib's crc32 takes a 32-bit length: feed large buffers in pieces.
std::uint32_t crc_of(std::uint32_t crc, const void* data, std::uint64_t n) {
    const auto* p = static_cast<const Bytef*>(data);
    while (n > 0) {
        const uInt chunk = static_cast<uInt>(std::min<std::uint64_t>(n, 1u << 30));
        crc = static_cast<std::uint32_t>(::crc32(crc, p, chunk));
        p += chunk;
        n -= chunk;
    }
    return crc;
}

std::string crc_hex(std::uint32_t crc) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(crc));
    return buf;
}

std::string sys_error(const std::string& path, const std::string& what) {
    return path + ": " + what + ": " + std::strerror(errno);
}

void write_all(int fd, const void* data, std::size_t n, const std::string& path) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            throw IoError(sys_error(path, "write failed"));
        }
        p += w;
        n -= static_cast<std::size_t>(w);
    }
}

// Temporary files are ".NAME.tmp-PID"; remove_stale_temp_files() matches exactly this.
constexpr char kTempInfix[] = ".tmp-";

// The writer's pid if `fn` is one of its temporary file names, else -1.
long temp_file_pid(const std::string& fn) {
    const std::size_t at = fn.rfind(kTempInfix);
    if (fn.size() < 2 || fn[0] != '.' || at == std::string::npos || at < 2) return -1;
    const std::string_view digits = std::string_view(fn).substr(at + sizeof kTempInfix - 1);
    long pid = -1;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || pid <= 0 ||
        pid > std::numeric_limits<std::int32_t>::max())  // kill() below must never see a group or -1
        return -1;
    return pid;
}

// Writes the pieces to a temp file next to `path`, fsyncs, renames, fsyncs the directory.
void atomic_write(const std::string& path, const std::vector<std::pair<const void*, std::size_t>>& pieces) {
    std::filesystem::path target(path);
    std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
    std::string tmp = (dir / ("." + target.filename().string() + kTempInfix + std::to_string(::getpid()))).string();
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw IoError(sys_error(tmp, "cannot create"));
    try {
        for (const auto& [data, n] : pieces) write_all(fd, data, n, tmp);
        if (::fsync(fd) != 0) throw IoError(sys_error(tmp, "fsync failed"));
    } catch (...) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    ::close(fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        ::unlink(tmp.c_str());
        throw IoError(sys_error(path, "rename failed"));
    }
    fsync_directory(dir.string());
}

}  // namespace

const Tensor* Checkpoint::find(const std::string& name) const {
    for (const auto& t : tensors)
        if (t.name == name) return &t.tensor;
    return nullptr;
}

void fsync_directory(const std::string& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw IoError(sys_error(dir, "cannot open directory"));
    ::fsync(fd);
    ::close(fd);
}

void write_file_atomic(const std::string& path, const std::string& text) {
    atomic_write(path, {{text.data(), text.size()}});
}

void write_checkpoint(const std::string& path, const Checkpoint& ckpt) {
    json header = json::object();
    std::set<std::string> names;
    std::uint64_t offset = 0;
    for (const auto& t : ckpt.tensors) {
        if (t.name == "__metadata__" || !names.insert(t.name).second)
            throw IoError(path + ": duplicate or reserved tensor name '" + t.name + "'");
        std::uint64_t n = t.tensor.nbytes();
        header[t.name] = {{"dtype", st_dtype(t.tensor.dtype())},
                          {"shape", t.tensor.shape()},
                          {"data_offsets", {offset, offset + n}}};
        offset += n;
    }
    json meta = json::object();
    for (const auto& [k, v] : ckpt.metadata) meta[k] = v;
    // Always the CRC of the data written now: a checkpoint read, changed and written back
    // must not carry its old value.
    std::uint32_t crc = 0;
    for (const auto& t : ckpt.tensors) crc = crc_of(crc, t.tensor.raw(), t.tensor.nbytes());
    meta[kCheckpointCrcKey] = crc_hex(crc);
    header["__metadata__"] = meta;
    std::string text = header.dump();
    // Pad with spaces to 8 bytes so the tensor data starts aligned (allowed by the format).
    text.append((8 - text.size() % 8) % 8, ' ');
    std::uint64_t len = text.size();
    unsigned char len_le[8];
    for (int i = 0; i < 8; ++i) len_le[i] = static_cast<unsigned char>(len >> (8 * i));
    std::vector<std::pair<const void*, std::size_t>> pieces{{len_le, 8}, {text.data(), text.size()}};
    for (const auto& t : ckpt.tensors) pieces.emplace_back(t.tensor.raw(), t.tensor.nbytes());
    atomic_write(path, pieces);
}

Checkpoint read_checkpoint(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw IoError(sys_error(path, "cannot open checkpoint"));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        ::close(fd);
        throw IoError(sys_error(path, "cannot stat checkpoint"));
    }
    const std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
    std::string bytes(size, '\0');
    std::uint64_t got = 0;
    while (got < size) {
        ssize_t r = ::read(fd, bytes.data() + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += static_cast<std::uint64_t>(r);
    }
    ::close(fd);
    if (got != size) throw IoError(path + ": short read of checkpoint");
    return parse_checkpoint(bytes, path);
}

// One pass of checks over untrusted bytes, in the order of the format (header length, JSON
// header, each tensor's dtype, shape and byte range, the CRC); each check names what it
// rejects. It stays one function of about 120 lines so that the checks read in the order of
// the file they check.
Checkpoint parse_checkpoint(std::string_view bytes, const std::string& path) {
    const std::uint64_t size = bytes.size();
    if (size < 8) throw IoError(path + ": truncated checkpoint (" + std::to_string(size) + " bytes, no header length)");
    std::uint64_t hlen = 0;
    for (int i = 0; i < 8; ++i) hlen |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
    if (hlen > kMaxHeader) throw IoError(path + ": header length " + std::to_string(hlen) + " exceeds the 100 MB limit");
    if (hlen > size - 8)
        throw IoError(path + ": header length " + std::to_string(hlen) + " runs past the end of the file (" +
                      std::to_string(size) + " bytes): truncated or corrupt");

    // Duplicate keys are invisible after parsing, so catch them while parsing.
    std::string duplicate;
    std::vector<std::set<std::string>> seen_keys;
    json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
        if (ev == json::parse_event_t::object_start) seen_keys.emplace_back();
        if (ev == json::parse_event_t::object_end && !seen_keys.empty()) seen_keys.pop_back();
        if (ev == json::parse_event_t::key && !seen_keys.empty() &&
            !seen_keys.back().insert(parsed.get<std::string>()).second && duplicate.empty())
            duplicate = parsed.get<std::string>();
        (void)depth;
        return true;
    };
    json header;
    try {
        header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(hlen), cb);
    } catch (const json::exception& e) {
        throw IoError(path + ": checkpoint header is not valid JSON (" + e.what() + ")");
    }
    if (!duplicate.empty()) throw IoError(path + ": duplicate tensor name '" + duplicate + "' in the header");
    if (!header.is_object()) throw IoError(path + ": checkpoint header is not a JSON object");

    const std::uint64_t data_size = size - 8 - hlen;
    const char* data = bytes.data() + 8 + hlen;
    Checkpoint ck;
    struct Span {
        std::uint64_t begin, end;
        std::string name;
    };
    std::vector<Span> spans;
    for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string& name = it.key();
        const json& e = it.value();
        if (name == "__metadata__") {
            if (!e.is_object()) throw IoError(path + ": __metadata__ must be an object of strings");
            for (auto m = e.begin(); m != e.end(); ++m) {
                if (!m.value().is_string()) throw IoError(path + ": __metadata__/" + m.key() + " is not a string");
                ck.metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        const std::string where = path + ": tensor '" + name + "'";
        if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
            throw IoError(where + ": entry needs dtype, shape and data_offsets");
        if (!e["dtype"].is_string()) throw IoError(where + ": dtype is not a string");
        std::string dt = e["dtype"].get<std::string>();
        DType dtype;
        if (dt == "F32")
            dtype = DType::f32;
        else if (dt == "F64")
            dtype = DType::f64;
        else
            throw IoError(where + ": unsupported dtype '" + dt + "' (flowlab reads F32 and F64)");
        if (!e["shape"].is_array()) throw IoError(where + ": shape is not a list");
        Shape shape;
        std::uint64_t count = 1;
        for (const auto& d : e["shape"]) {
            if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<std::int64_t>() >= 0))
                throw IoError(where + ": shape entries must be non-negative integers");
            std::uint64_t v = d.get<std::uint64_t>();
            // Every prefix product must fit int64_t too: Tensor's numel() multiplies in order.
            constexpr std::uint64_t kMaxDim = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
            if (v > kMaxDim || (v != 0 && count > kMaxDim / v)) throw IoError(where + ": shape overflows");
            count *= v;
            shape.push_back(static_cast<std::int64_t>(v));
        }
        const std::uint64_t esize = dtype_size(dtype);
        if (count > std::numeric_limits<std::uint64_t>::max() / esize) throw IoError(where + ": shape x dtype overflows");
        const std::uint64_t nbytes = count * esize;
        const json& off = e["data_offsets"];
        if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
            throw IoError(where + ": data_offsets must be [begin, end]");
        std::uint64_t b = off[0].get<std::uint64_t>(), en = off[1].get<std::uint64_t>();
        if (en < b || en > data_size)
            throw IoError(where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(en) +
                          "] out of bounds (data section is " + std::to_string(data_size) + " bytes)");
        if (en - b != nbytes)
            throw IoError(where + ": data_offsets cover " + std::to_string(en - b) + " bytes but shape " +
                          shape_str(shape) + " of " + dt + " needs " + std::to_string(nbytes));
        spans.push_back({b, en, name});
        Tensor t = Tensor::empty(shape, dtype);
        if (nbytes) std::memcpy(t.raw(), data + b, nbytes);
        ck.tensors.push_back({name, t});
    }
    // The data section must be exactly the tensors, back to back.
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
    std::uint64_t expect = 0;
    for (const auto& s : spans) {
        if (s.begin != expect)
            throw IoError(path + ": tensor '" + s.name + "' starts at byte " + std::to_string(s.begin) + ", expected " +
                          std::to_string(expect) + " (offsets must be contiguous, without gaps or overlaps)");
        expect = s.end;
    }
    if (expect != data_size)
        throw IoError(path + ": " + std::to_string(data_size - expect) + " trailing bytes after the last tensor");
    // Files written before the CRC existed have none; they are accepted unchecked (the
    // structural checks above still apply), so old runs stay resumable.
    auto crc_it = ck.metadata.find(kCheckpointCrcKey);
    if (crc_it != ck.metadata.end()) {
        const std::string& stored = crc_it->second;
        const bool hex8 = stored.size() == 8 && std::all_of(stored.begin(), stored.end(), [](char c) {
                              return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                          });
        if (!hex8)
            throw IoError(path + ": __metadata__/" + kCheckpointCrcKey + " " +
                          json(stored).dump(-1, ' ', false, json::error_handler_t::replace) +
                          " is not 8 lower-case hex digits; the checkpoint is corrupt");
        const std::string computed = crc_hex(crc_of(0, data, data_size));
        if (computed != stored)
            throw IoError(path + ": CRC-32 of the tensor data is " + computed + " but the header says " + stored +
                          "; the checkpoint is corrupt (bits changed on disk or in transfer)");
    }
    return ck;
}

std::vector<std::string> remove_stale_temp_files(const std::string& dir) {
    std::vector<std::string> removed;
    std::error_code ec;
    const long self = static_cast<long>(::getpid());
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const long pid = temp_file_pid(it->path().filename().string());
        std::error_code type_ec;
        if (pid < 0 || !it->is_regular_file(type_ec)) continue;
        // A live writer other than us may be mid-write. Our own pid can only be a previous
        // process's (pid reuse is common in containers): nothing here writes while this runs.
        if (pid != self && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) continue;
        std::error_code rm;
        if (fs::remove(it->path(), rm)) removed.push_back(it->path().string());
    }
    return removed;
}

namespace {

const char* const kFormat = "flowlab-checkpoint-1";

std::string fmt_double(double v) {
    if (std::isnan(v)) return "nan";  // printf may write "-nan"
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);  // 17 digits: round-trips exactly
    return buf;
}

// Strict parsing of one metadata field: the whole string, nothing around it (no spaces, no
// "+", no "1e3" for an integer), so a corrupt value never half-parses.
class MetaReader {
public:
    MetaReader(const std::map<std::string, std::string>& m, const std::string& path) : m_(m), path_(path) {}

    bool has(const std::string& key) const { return m_.count(key) != 0; }
    const std::string& raw(const std::string& key) const {
        auto it = m_.find(key);
        if (it == m_.end())
            throw IoError(path_ + ": metadata '" + key + "' is missing; the checkpoint is incomplete or corrupt");
        return it->second;
    }
    [[noreturn]] void fail(const std::string& key, const std::string& what, bool mismatch = false,
                           const std::string& hint = "the checkpoint is corrupt") const {
        std::string v = raw(key);
        if (v.size() > 40) v = v.substr(0, 40) + "...";
        const std::string msg = path_ + ": metadata '" + key + "' = " + json(v).dump(-1, ' ', false,
                                                                                         json::error_handler_t::replace) +
                                ": " + what + "; " + hint;
        if (mismatch) throw CheckpointMismatch(msg);
        throw IoError(msg);
    }
    std::int64_t i64(const std::string& key, std::int64_t lo, std::int64_t hi) const {
        const std::string& s = raw(key);
        std::int64_t v = 0;
        auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (s.empty() || ec != std::errc() || end != s.data() + s.size()) fail(key, "not an integer");
        if (v < lo || v > hi)
            fail(key, "out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
        return v;
    }
    std::uint64_t u64(const std::string& key) const {
        const std::string& s = raw(key);
        std::uint64_t v = 0;
        auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (s.empty() || ec != std::errc() || end != s.data() + s.size())
            fail(key, "not an unsigned 64-bit integer");
        return v;
    }
    double f64(const std::string& key) const {
        const std::string& s = raw(key);
        double v = 0.0;
        auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (s.empty() || ec != std::errc() || end != s.data() + s.size()) fail(key, "not a number");
        return v;
    }
    bool flag(const std::string& key) const {
        const std::string& s = raw(key);
        if (s != "0" && s != "1") fail(key, "not 0 or 1");
        return s == "1";
    }

private:
    const std::map<std::string, std::string>& m_;
    const std::string& path_;
};

}  // namespace

void put_train_state(const TrainState& st, std::map<std::string, std::string>& m) {
    m["format"] = kFormat;
    m["step"] = std::to_string(st.step);
    m["optimizer_steps"] = std::to_string(st.optimizer_steps);
    m["ema"] = st.ema ? "1" : "0";
    m["deq_rng_seed"] = std::to_string(st.deq_rng_seed);
    m["deq_rng_counter"] = std::to_string(st.deq_rng_counter);
    m["best_valid_nll"] = fmt_double(st.best_valid_nll);
    m["best_step"] = std::to_string(st.best_step);
    m["evals_since_best"] = std::to_string(st.evals_since_best);
    m["sampler_started"] = st.sampler_started ? "1" : "0";
    m["sampler_seed"] = std::to_string(st.sampler_seed);
    m["sampler_counter"] = std::to_string(st.sampler_counter);
    m["sampler_pos"] = std::to_string(st.sampler_pos);
    m["train_loss_sum"] = fmt_double(st.window_loss);
    m["train_loss_count"] = std::to_string(st.window_n);
    m["last_logged_loss"] = fmt_double(st.last_logged_loss);
    m["early_stopped"] = st.early_stopped ? "1" : "0";
    if (std::isfinite(st.train_seconds)) m["train_seconds"] = fmt_double(st.train_seconds);
}

TrainState parse_train_state(const std::map<std::string, std::string>& m, const std::string& path, const RunShape& run) {
    constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
    const MetaReader r(m, path);
    if (!r.has("format"))
        throw CheckpointMismatch(path + ": not a flowlab training checkpoint (no 'format' metadata); was it written "
                                 "by `flowlab run`?");
    if (r.raw("format") != kFormat)
        r.fail("format", std::string("unknown checkpoint format (this flowlab reads ") + kFormat + ")", true,
               "was it written by another flowlab version?");
    TrainState st;
    st.step = r.i64("step", 0, kMax);
    if (run.steps >= 0 && st.step > run.steps)
        r.fail("step", "past the run's train.steps " + std::to_string(run.steps), true,
               "resume with --set train.steps=" + std::to_string(st.step) + " or more to continue it");
    // Skipped (non-finite) steps count as steps but not as optimizer steps.
    st.optimizer_steps = r.i64("optimizer_steps", 0, st.step);
    st.ema = r.flag("ema");
    st.deq_rng_seed = r.u64("deq_rng_seed");
    st.deq_rng_counter = r.u64("deq_rng_counter");
    st.best_valid_nll = r.f64("best_valid_nll");
    if (std::isnan(st.best_valid_nll) || st.best_valid_nll == -INFINITY)
        r.fail("best_valid_nll", "not a finite number or +inf");
    st.best_step = r.i64("best_step", -1, st.step);
    // A best step exactly when a validation NLL was recorded.
    if ((st.best_step >= 0) != std::isfinite(st.best_valid_nll))
        r.fail("best_step", "disagrees with best_valid_nll = " + fmt_double(st.best_valid_nll));
    st.evals_since_best = r.i64("evals_since_best", 0, st.step);

    // Every step draws one batch, so the sampler has started exactly when a step was taken,
    // and its position follows from the step: an epoch is floor(N / batch) batches.
    st.sampler_started = r.flag("sampler_started");
    if (st.sampler_started != (st.step > 0))
        r.fail("sampler_started", "disagrees with step " + std::to_string(st.step));
    st.sampler_seed = r.u64("sampler_seed");
    st.sampler_counter = r.u64("sampler_counter");
    st.sampler_pos = r.i64("sampler_pos", 0, run.train_size >= 0 ? run.train_size : kMax);
    if (!st.sampler_started && st.sampler_pos != 0) r.fail("sampler_pos", "not 0 before the first step");
    if (st.sampler_started && st.sampler_pos == 0) r.fail("sampler_pos", "0 after step " + std::to_string(st.step));
    if (st.sampler_started && run.batch_size > 0 && run.train_size >= run.batch_size) {
        const std::int64_t per_epoch = run.train_size / run.batch_size;
        const std::int64_t want = ((st.step - 1) % per_epoch + 1) * run.batch_size;
        if (st.sampler_pos != want)
            r.fail("sampler_pos",
                   "step " + std::to_string(st.step) + " with batches of " + std::to_string(run.batch_size) + " from " +
                       std::to_string(run.train_size) + " examples is at position " + std::to_string(want),
                   true, "was the checkpoint written with another train.batch_size or dataset?");
    }

    // Optional: checkpoints from before the logging window was saved start with an empty one.
    if (r.has("train_loss_sum") || r.has("train_loss_count")) {
        st.window_n = r.i64("train_loss_count", 0, st.step);
        st.window_loss = r.f64("train_loss_sum");
        if (!std::isfinite(st.window_loss)) r.fail("train_loss_sum", "not finite");
        if (st.window_n == 0 && st.window_loss != 0.0) r.fail("train_loss_sum", "not 0 for an empty window");
    }
    if (r.has("last_logged_loss")) {
        st.last_logged_loss = r.f64("last_logged_loss");  // NaN: no step in the last window
        if (std::isinf(st.last_logged_loss)) r.fail("last_logged_loss", "not finite");
    }
    if (r.has("early_stopped")) st.early_stopped = r.flag("early_stopped");
    if (r.has("train_seconds")) {
        st.train_seconds = r.f64("train_seconds");
        if (!std::isfinite(st.train_seconds) || st.train_seconds < 0.0)
            r.fail("train_seconds", "not a finite number of seconds >= 0");
    }
    return st;
}

void load_weights(Experiment& exp, const std::string& path, bool prefer_ema) {
    using train_detail::require;
    using train_detail::restore_into;
    Checkpoint ck = read_checkpoint(path);
    bool ema = prefer_ema && ck.metadata.count("ema") && ck.metadata.at("ema") == "1";
    for (const auto& p : exp.flow->named_parameters())
        restore_into(p.var.value(), require(ck, (ema ? "ema/" : "param/") + p.name, path), p.name, path);
    for (const auto& b : exp.flow->named_buffers())
        restore_into(b.tensor, require(ck, "buffer/" + b.name, path), b.name, path);
}

}  // namespace flowlab
