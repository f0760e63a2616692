// e^x for f32 without a library call, so that loops over it vectorise (glibc's vector exp
// needs -ffast-math): Cody-Waite reduction x = n ln 2 + r, |r| <= ln 2 / 2, a degree-6
// polynomial for e^r (the coefficients of Cephes' expf, within 2 ulp over the range) and 2^n
// from the exponent bits. Inputs are clamped to [-87, 88], where e^x stays a normal float: below,
// it returns e^-87 (1.6e-38) instead of a denormal or 0, which the ops using it (softmax
// weights, ELU) cannot tell from 0. Private to the core's ops.
#pragma once

#include <bit>
#include <cstdint>

namespace flowlab::detail {

inline float fast_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // selects vectorise; std::min/max did not
    // Round to nearest by adding and subtracting 1.5 2^23 (std::floor does not vectorise
    // without -fno-trapping-math); exact here, where |x log2 e| < 2^22.
    constexpr float kShift = 12582912.0f;
    const float n = (x * 1.44269504088896341f + kShift) - kShift;
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // ln 2 in two parts
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
    return p * std::bit_cast<float>(bits);
}

}  // namespace flowlab::detail
