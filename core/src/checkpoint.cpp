#include "flowlab/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "flowlab/errors.hpp"

namespace flowlab {

using nlohmann::json;

namespace {

// Largest header we accept: flowlab's are a few KB; 100 MB bounds a hostile file.
constexpr std::uint64_t kMaxHeader = 100ull << 20;

const char* st_dtype(DType dt) { return dt == DType::f32 ? "F32" : "F64"; }

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

// Writes the pieces to a temp file next to `path`, fsyncs, renames, fsyncs the directory.
void atomic_write(const std::string& path, const std::vector<std::pair<const void*, std::size_t>>& pieces) {
    std::filesystem::path target(path);
    std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
    std::string tmp = (dir / ("." + target.filename().string() + ".tmp-" + std::to_string(::getpid()))).string();
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
            if (v != 0 && count > std::numeric_limits<std::uint64_t>::max() / v)
                throw IoError(where + ": shape overflows");
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
    return ck;
}

}  // namespace flowlab
