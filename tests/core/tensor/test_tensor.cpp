#include <catch2/catch.hpp>

#include <cstdint>
#include <string>

#include "flowlab/errors.hpp"
#include "flowlab/tensor.hpp"

#include "test_support.hpp"

using namespace flowlab;

using flowlab::test::shape_error_of;

TEST_CASE("A new tensor has the shape, dtype and element count it was made with", "[tensor]") {
    Tensor t = Tensor::zeros({2, 3, 4}, DType::f64);
    CHECK(t.defined());
    CHECK(t.shape() == Shape{2, 3, 4});
    CHECK(t.dim() == 3);
    CHECK(t.numel() == 24);
    CHECK(t.dtype() == DType::f64);
    CHECK(t.nbytes() == 24 * 8);
    CHECK(t.size(0) == 2);
    CHECK(t.size(-1) == 4);
    CHECK(t.size(-3) == 2);
    for (double v : t.to_vector()) CHECK(v == 0.0);
    CHECK_FALSE(Tensor().defined());
}

TEST_CASE("A scalar tensor has an empty shape and one element", "[tensor]") {
    Tensor s = Tensor::scalar(2.5);
    CHECK(s.shape().empty());
    CHECK(s.numel() == 1);
    CHECK(s.item() == 2.5);
    CHECK(shape_str(s.shape()) == "[]");
}

TEST_CASE("Tensor storage is 64-byte aligned for every size", "[tensor]") {
    for (std::int64_t n : {0, 1, 3, 17, 1000, 65537}) {
        Tensor t = Tensor::empty({n});
        CHECK(reinterpret_cast<std::uintptr_t>(t.raw()) % 64 == 0);
        Tensor d = Tensor::empty({n}, DType::f64);
        CHECK(reinterpret_cast<std::uintptr_t>(d.raw()) % 64 == 0);
    }
}

TEST_CASE("Copies of a tensor share storage and clone makes a deep copy", "[tensor]") {
    Tensor a = Tensor::from_vector({3}, {1, 2, 3});
    Tensor b = a;
    Tensor c = a.clone();
    CHECK(b.same_storage(a));
    CHECK_FALSE(c.same_storage(a));
    a.set_item(1, 20);
    CHECK(b.item(1) == 20);
    CHECK(c.item(1) == 2);
}

TEST_CASE("Reshape shares storage and infers one -1 dimension", "[tensor]") {
    Tensor a = Tensor::from_vector({2, 3}, {0, 1, 2, 3, 4, 5});
    Tensor r = a.reshape({3, -1});
    CHECK(r.shape() == Shape{3, 2});
    CHECK(r.same_storage(a));
    r.set_item(5, 50);
    CHECK(a.item(5) == 50);
    CHECK(a.reshape({-1}).shape() == Shape{6});
    CHECK_THROWS_AS(a.reshape({-1, -1}), ShapeError);
    CHECK_THROWS_AS(a.reshape({4, -1}), ShapeError);
}

TEST_CASE("Reshape to another element count names both shapes", "[tensor]") {
    Tensor a = Tensor::zeros({2, 3});
    std::string msg = shape_error_of([&] { a.reshape({4, 2}); });
    CHECK(msg.find("[2, 3]") != std::string::npos);
    CHECK(msg.find("[4, 2]") != std::string::npos);
}

TEST_CASE("from_vector converts to the dtype and checks the value count", "[tensor]") {
    Tensor a = Tensor::from_vector({2, 2}, {0.1, 0.2, 0.3, 0.4}, DType::f32);
    CHECK(a.item(2) == Approx(0.3f).epsilon(0));
    CHECK(static_cast<float>(a.item(2)) == 0.3f);
    Tensor b = Tensor::from_vector({2}, {0.1, 0.2}, DType::f64);
    CHECK(b.item(0) == 0.1);
    CHECK_THROWS_AS(Tensor::from_vector({2, 2}, {1, 2, 3}), ShapeError);
}

TEST_CASE("full fills every element and fill overwrites them", "[tensor]") {
    Tensor a = Tensor::full({5}, 1.5, DType::f64);
    for (double v : a.to_vector()) CHECK(v == 1.5);
    a.fill(-2);
    for (double v : a.to_vector()) CHECK(v == -2);
}

TEST_CASE("to converts between f32 and f64 and is a no-op for the same dtype", "[tensor]") {
    Tensor a = Tensor::from_vector({3}, {1.25, -2.5, 1e-3}, DType::f64);
    Tensor f = a.to(DType::f32);
    CHECK(f.dtype() == DType::f32);
    CHECK_FALSE(f.same_storage(a));
    CHECK(f.item(0) == 1.25);
    CHECK(f.item(2) == Approx(1e-3).epsilon(1e-6));
    Tensor back = f.to(DType::f64);
    CHECK(back.dtype() == DType::f64);
    CHECK(back.item(1) == -2.5);
    CHECK(a.to(DType::f64).same_storage(a));
}

TEST_CASE("Typed access checks the dtype", "[tensor]") {
    Tensor a = Tensor::zeros({2}, DType::f32);
    CHECK(a.f32() == a.data<float>());
    CHECK_THROWS_AS(a.f64(), ShapeError);
    const Tensor b = Tensor::zeros({2}, DType::f64);
    CHECK(b.f64() == b.data<double>());
    CHECK_THROWS_AS(b.f32(), ShapeError);
}

TEST_CASE("item and set_item round trip and reject indices out of range", "[tensor]") {
    Tensor a = Tensor::zeros({2, 2}, DType::f64);
    a.set_item(3, 7.5);
    CHECK(a.item(3) == 7.5);
    CHECK(a.data<double>()[3] == 7.5);
    CHECK_THROWS_AS(a.item(4), ShapeError);
    CHECK_THROWS_AS(a.item(-1), ShapeError);
    CHECK_THROWS_AS(a.set_item(4, 1.0), ShapeError);
    CHECK_THROWS_AS(a.size(2), ShapeError);
}

TEST_CASE("copy_from copies values and checks element count and dtype", "[tensor]") {
    Tensor a = Tensor::zeros({2, 3});
    Tensor b = Tensor::from_vector({6}, {1, 2, 3, 4, 5, 6});
    a.copy_from(b);
    CHECK(a.item(5) == 6);
    CHECK_FALSE(a.same_storage(b));
    CHECK_THROWS_AS(a.copy_from(Tensor::zeros({5})), ShapeError);
    CHECK_THROWS_AS(a.copy_from(Tensor::zeros({6}, DType::f64)), ShapeError);
}

TEST_CASE("rows copies a range of the first dimension", "[tensor]") {
    Tensor a = Tensor::from_vector({4, 2}, {0, 1, 2, 3, 4, 5, 6, 7});
    Tensor r = a.rows(1, 2);
    CHECK(r.shape() == Shape{2, 2});
    CHECK(r.to_vector() == std::vector<double>{2, 3, 4, 5});
    CHECK_FALSE(r.same_storage(a));
    CHECK(a.rows(4, 0).shape() == Shape{0, 2});
    CHECK_THROWS_AS(a.rows(3, 2), ShapeError);
    CHECK_THROWS_AS(Tensor::scalar(1).rows(0, 1), ShapeError);
}

TEST_CASE("check_same_shape names the check and both shapes", "[tensor]") {
    Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({3, 2});
    std::string msg = shape_error_of([&] { check_same_shape(a, b, "my_check"); });
    CHECK(msg == "my_check: shapes [2, 3] and [3, 2] differ");
    CHECK_NOTHROW(check_same_shape(a, Tensor::zeros({2, 3}), "ok"));
    CHECK_THROWS_AS(check_same_shape(a, Tensor::zeros({2, 3}, DType::f64), "dt"), ShapeError);
}

TEST_CASE("dtype helpers and numel", "[tensor]") {
    CHECK(dtype_size(DType::f32) == 4);
    CHECK(dtype_size(DType::f64) == 8);
    CHECK(std::string(dtype_name(DType::f32)) == "f32");
    CHECK(std::string(dtype_name(DType::f64)) == "f64");
    CHECK(numel({}) == 1);
    CHECK(numel({2, 0, 3}) == 0);
    CHECK(shape_str({5, 1}) == "[5, 1]");
}

TEST_CASE("A shape whose element count overflows or is negative is a ShapeError, not a wrapped size", "[tensor]") {
    const std::int64_t big = std::int64_t{1} << 31;
    // 4 * 2^31 * 2^31 = 2^64 wraps to 0: the IDX header that read past its buffer.
    CHECK_THROWS_AS(numel({4, big, big}), ShapeError);
    CHECK(shape_error_of([&] { numel({4, big, big}); }).find("overflows 64 bits") != std::string::npos);
    CHECK_THROWS_AS(numel({3, -2}), ShapeError);
    CHECK(shape_error_of([&] { Tensor::empty({4, big, big}); }).find("Tensor::empty") != std::string::npos);
    CHECK_THROWS_AS(Tensor::empty({INT64_MAX, 2}), ShapeError);
    // Counts that fit 64 bits but no allocation (2^62 f64 values are 2^65 bytes).
    CHECK_THROWS_AS(Tensor::zeros({std::int64_t{1} << 62}, DType::f64), ShapeError);
    // A zero dimension makes any shape empty, however large the others.
    CHECK(numel({big, big, big, 0}) == 0);
    Tensor a = Tensor::zeros({4, 2});
    CHECK_THROWS_AS(a.reshape({big, big, big, -1}), ShapeError);
    CHECK_THROWS_AS(a.rows(INT64_MAX, 2), ShapeError);
    CHECK_THROWS_AS(a.rows(2, INT64_MAX), ShapeError);
}

TEST_CASE("tensor_live_bytes and tensor_peak_bytes follow tensor storage", "[tensor]") {
    const std::size_t before = tensor_live_bytes();
    reset_tensor_peak_bytes();
    {
        Tensor t = Tensor::empty({1000}, DType::f64);
        CHECK(tensor_live_bytes() >= before + 8000);
    }
    CHECK(tensor_live_bytes() == before);
    CHECK(tensor_peak_bytes() >= before + 8000);
    reset_tensor_peak_bytes();
    CHECK(tensor_peak_bytes() == before);
    CHECK(available_memory_bytes() > 0);
}
