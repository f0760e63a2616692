// Tensor: a shape, a dtype and shared, 64-byte-aligned, always-contiguous storage.
//
// Kept deliberately small. Copies of a Tensor share storage (like a handle); `clone()` makes a
// deep copy. The only view is `reshape`, which shares storage and is explicit. Every shape or
// dtype mismatch throws ShapeError naming both shapes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace flowlab {

enum class DType : std::uint8_t { f32, f64 };

std::size_t dtype_size(DType dt);
const char* dtype_name(DType dt);

using Shape = std::vector<std::int64_t>;

// The element count; throws ShapeError on a negative dimension or a count past 64 bits (shapes
// may come from files: an IDX or .npy header must not wrap around to a small size).
std::int64_t numel(const Shape& s);
std::string shape_str(const Shape& s);

// Bytes of tensor storage alive now, and the most alive at once since the last
// reset_tensor_peak_bytes(): a caller measures what a computation needs per example on a small
// batch before scaling it up (`flowlab sample -n`).
std::size_t tensor_live_bytes();
std::size_t tensor_peak_bytes();
void reset_tensor_peak_bytes();

// Memory this process can still get, in bytes: the system's available memory (Linux
// MemAvailable), capped by a cgroup limit; 0 when unknown.
std::uint64_t available_memory_bytes();
// "3.8 GB": a byte count for messages about memory.
std::string format_gigabytes(double bytes);

// While one is alive on this thread, the storage of new tensors may add up to `bytes` at most;
// the allocation that would pass it throws ShapeError with `what` and the sizes. The model
// builder bounds parameter memory with it, so that a model too large to train fails before
// filling the memory, not after.
class AllocationBudget {
public:
    AllocationBudget(std::size_t bytes, std::string what);
    ~AllocationBudget();
    AllocationBudget(const AllocationBudget&) = delete;
    AllocationBudget& operator=(const AllocationBudget&) = delete;
    void charge(std::size_t bytes);

private:
    std::size_t limit_, used_ = 0;
    std::string what_;
    AllocationBudget* outer_;
};

class Tensor {
public:
    Tensor() = default;
    // Uninitialised storage. Throws ShapeError on a negative dimension or a size no allocation
    // can hold.
    static Tensor empty(Shape shape, DType dt = DType::f32);
    static Tensor zeros(Shape shape, DType dt = DType::f32);
    static Tensor full(Shape shape, double value, DType dt = DType::f32);
    static Tensor from_vector(Shape shape, const std::vector<double>& values, DType dt = DType::f32);
    static Tensor scalar(double value, DType dt = DType::f32) { return full({}, value, dt); }

    bool defined() const { return static_cast<bool>(storage_); }
    const Shape& shape() const { return shape_; }
    std::int64_t dim() const { return static_cast<std::int64_t>(shape_.size()); }
    std::int64_t size(std::int64_t d) const;  // negative d counts from the back
    std::int64_t numel() const { return numel_; }
    DType dtype() const { return dtype_; }
    std::size_t nbytes() const { return static_cast<std::size_t>(numel_) * dtype_size(dtype_); }

    template <class T> T* data() { return static_cast<T*>(raw()); }
    template <class T> const T* data() const { return static_cast<const T*>(raw()); }
    void* raw();
    const void* raw() const;
    // Typed access with a dtype check (throws ShapeError on mismatch).
    float* f32();
    const float* f32() const;
    double* f64();
    const double* f64() const;

    // Element i (flat index) as double, whatever the dtype. For tests and small reads.
    double item(std::int64_t i = 0) const;
    void set_item(std::int64_t i, double v);
    std::vector<double> to_vector() const;

    Tensor clone() const;
    Tensor reshape(Shape shape) const;  // shares storage; one dim may be -1
    Tensor to(DType dt) const;          // converts (copy), or returns *this if same dtype
    void fill(double v);
    void copy_from(const Tensor& src);  // same numel and dtype
    // Rows [start, start+len) of dim 0 as a copy (the data pipeline's batch slice).
    Tensor rows(std::int64_t start, std::int64_t len) const;

    bool same_storage(const Tensor& o) const { return storage_ == o.storage_; }

private:
    struct Storage;
    std::shared_ptr<Storage> storage_;
    std::int64_t offset_ = 0;  // in elements
    Shape shape_;
    std::int64_t numel_ = 0;
    DType dtype_ = DType::f32;
};

// Throws ShapeError "<what>: shapes [a] and [b] differ" unless equal.
void check_same_shape(const Tensor& a, const Tensor& b, const char* what);

}  // namespace flowlab
