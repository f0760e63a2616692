// Rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows"), element by element.
//
// One element is transformed by a monotone spline on [-B, B] with K bins and identity (linear)
// tails outside. Its 3K-1 raw parameters are K unnormalised widths, K unnormalised heights and
// K-1 interior knot derivatives:
//   widths  w = min_w + (1 - K min_w) softmax(raw_w), knots X_k = -B + 2B sum_{m<k} w_m
//   heights h = the same with min_h, knots Y_k
//   d_k = min_d + softplus(raw_d[k-1] + c0) for k = 1..K-1, and d_0 = d_K = 1 (the tails' slope,
//   so the map is C1 at +-B). c0 = log(exp(1 - min_d) - 1) makes raw = 0 give d = 1: all-zero
//   raw parameters are the identity, which is what a zero-initialised conditioner should give.
// Inside bin k, with theta = (x - X_k)/W_k, s = H_k/W_k:
//   y = Y_k + H_k (s theta^2 + d_k theta(1-theta)) / (s + (d_k + d_{k+1} - 2s) theta(1-theta))
// and the inverse solves that quadratic in theta with the stable root 2c / (-b - sqrt(b^2-4ac)),
// the discriminant clamped at 0 (it can round below 0 near the knots).
//
// Gradients are by hand: `bin_partials` gives dy and d log(dy/dx) with respect to x and the six
// bin quantities (X, W, Y, H, d_k, d_{k+1}); `Knots::chain` takes those back to the raw
// parameters through the cumulative sums, the softmaxes and the softplus.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <flowlab/kernels.hpp>

namespace flowlab::density::rqs {

constexpr int kMaxBins = 64;

struct SplineConfig {
    int bins = 8;
    double tail_bound = 3.0;
    double min_width = 1e-3, min_height = 1e-3, min_derivative = 1e-3;

    int num_params() const { return 3 * bins - 1; }
    // softplus(c0) = 1 - min_d
    double derivative_offset() const { return std::log(std::expm1(1.0 - min_derivative)); }
};

template <class T>
inline T softplus(T v) {
    return v > T(20) ? v : (v < T(-20) ? std::exp(v) : std::log1p(std::exp(v)));
}

// The six quantities of one bin and the point in it.
template <class T>
struct Bin {
    int k = 0;
    T X = 0, W = 1, Y = 0, H = 1, d0 = 1, d1 = 1;
};

// Partial derivatives of y(x) and L = log dy/dx inside one bin.
template <class T>
struct Partials {
    T y = 0, L = 0, dydx = 1;
    // order: x, X, W, Y, H, d0, d1
    T gy[7] = {};
    T gL[7] = {};
};

// Evaluates the bin's rational quadratic at theta and all partials.
template <class T>
inline Partials<T> bin_partials(const Bin<T>& b, T theta) {
    Partials<T> r;
    const T W = b.W, H = b.H, d0 = b.d0, d1 = b.d1;
    const T s = H / W;
    const T q = theta * (T(1) - theta);
    const T E = d0 + d1 - T(2) * s;
    const T N = s * theta * theta + d0 * q;
    const T Dn = s + E * q;
    const T R = N / Dn;
    const T omt = T(1) - theta;
    const T M = d1 * theta * theta + T(2) * s * q + d0 * omt * omt;
    r.y = b.Y + H * R;
    r.dydx = s * s * M / (Dn * Dn);
    r.L = T(2) * std::log(s) + std::log(M) - T(2) * std::log(Dn);

    const T one_m_2t = T(1) - T(2) * theta;
    const T N_t = T(2) * s * theta + d0 * one_m_2t;
    const T Dn_t = E * one_m_2t;
    const T R_t = (N_t - R * Dn_t) / Dn;
    const T R_s = (theta * theta - R * (T(1) - T(2) * q)) / Dn;
    const T R_d0 = q * (T(1) - R) / Dn;
    const T R_d1 = -R * q / Dn;
    // y partials; theta = (x - X)/W, s = H/W
    r.gy[0] = H * R_t / W;
    r.gy[1] = -H * R_t / W;
    r.gy[2] = H * (R_t * (-theta / W) + R_s * (-s / W));
    r.gy[3] = T(1);
    r.gy[4] = R + H * R_s / W;
    r.gy[5] = H * R_d0;
    r.gy[6] = H * R_d1;

    const T M_t = T(2) * d1 * theta + T(2) * s * one_m_2t - T(2) * d0 * omt;
    const T L_t = M_t / M - T(2) * Dn_t / Dn;
    const T L_s = T(2) / s + T(2) * q / M - T(2) * (T(1) - T(2) * q) / Dn;
    const T L_d0 = omt * omt / M - T(2) * q / Dn;
    const T L_d1 = theta * theta / M - T(2) * q / Dn;
    r.gL[0] = L_t / W;
    r.gL[1] = -L_t / W;
    r.gL[2] = L_t * (-theta / W) + L_s * (-s / W);
    r.gL[3] = T(0);
    r.gL[4] = L_s / W;
    r.gL[5] = L_d0;
    r.gL[6] = L_d1;
    return r;
}

// The knots of one element's spline, from its raw parameters. Raw parameter j of the element
// is read at raw[j * stride] (j: widths 0..K-1, heights K..2K-1, derivatives 2K..3K-2).
template <class T>
struct Knots {
    int K = 0;
    T B = 0;
    T sw[kMaxBins], sh[kMaxBins];          // softmaxes
    T X[kMaxBins + 1], Y[kMaxBins + 1];    // knots
    T d[kMaxBins + 1];                     // derivatives at the knots
    T sig[kMaxBins];                       // sigmoid(raw_d + c0), the softplus' derivative
    T cw = 1, ch = 1;                      // 1 - K min_w, 1 - K min_h

    Knots(const SplineConfig& cfg, const T* raw, std::int64_t stride) {
        K = cfg.bins;
        B = static_cast<T>(cfg.tail_bound);
        cw = T(1) - T(K) * static_cast<T>(cfg.min_width);
        ch = T(1) - T(K) * static_cast<T>(cfg.min_height);
        softmax(raw, stride, sw);
        softmax(raw + K * stride, stride, sh);
        cumulate(sw, cw, static_cast<T>(cfg.min_width), X);
        cumulate(sh, ch, static_cast<T>(cfg.min_height), Y);
        const T c0 = static_cast<T>(cfg.derivative_offset());
        const T md = static_cast<T>(cfg.min_derivative);
        d[0] = d[K] = T(1);
        for (int k = 1; k < K; ++k) {
            const T v = raw[(2 * K + k - 1) * stride] + c0;
            d[k] = md + softplus(v);
            sig[k - 1] = stable_sigmoid(v);
        }
    }

    bool inside(T v) const { return v >= -B && v <= B; }

    Bin<T> bin_of_x(T x) const { return make_bin(search(X, x)); }
    Bin<T> bin_of_y(T y) const { return make_bin(search(Y, y)); }

    Bin<T> make_bin(int k) const {
        Bin<T> b;
        b.k = k;
        b.X = X[k];
        b.W = X[k + 1] - X[k];
        b.Y = Y[k];
        b.H = Y[k + 1] - Y[k];
        b.d0 = d[k];
        b.d1 = d[k + 1];
        return b;
    }

    // Accumulates g * d(bin quantities)/d(raw) into graw (strided like raw). gq: gradient
    // with respect to X, W, Y, H, d0, d1 (indices 1..6 of a Partials array).
    void chain(const Bin<T>& b, const T* gq, T* graw, std::int64_t stride) const {
        chain_softmax(b.k, gq[1], gq[2], sw, cw, graw, stride);
        chain_softmax(b.k, gq[3], gq[4], sh, ch, graw + K * stride, stride);
        if (b.k >= 1) graw[(2 * K + b.k - 1) * stride] += gq[5] * sig[b.k - 1];
        if (b.k + 1 <= K - 1) graw[(2 * K + b.k) * stride] += gq[6] * sig[b.k];
    }

private:
    void softmax(const T* raw, std::int64_t stride, T* out) const {
        T mx = raw[0];
        for (int k = 1; k < K; ++k) mx = std::max(mx, raw[k * stride]);
        T sum = 0;
        for (int k = 0; k < K; ++k) {
            out[k] = std::exp(raw[k * stride] - mx);
            sum += out[k];
        }
        for (int k = 0; k < K; ++k) out[k] /= sum;
    }

    void cumulate(const T* sm, T c, T minv, T* knots) const {
        T acc = 0;
        knots[0] = -B;
        for (int k = 1; k < K; ++k) {
            acc += minv + c * sm[k - 1];
            knots[k] = -B + T(2) * B * acc;
        }
        knots[K] = B;  // exact, whatever the rounding of the sum
    }

    // Knot k = -B + 2B sum_{m<k} w_m and width W_k = 2B w_k, so dL/dw_m = 2B (gX [m<k] + gW [m==k]);
    // w = min + c softmax(raw): dL/draw_j = c s_j (g_j - sum_m s_m g_m).
    void chain_softmax(int k, T gX, T gW, const T* sm, T c, T* graw, std::int64_t stride) const {
        const T two_b = T(2) * B;
        T dot = 0;
        for (int m = 0; m < k; ++m) dot += sm[m] * gX;
        dot += sm[k] * gW;
        dot *= two_b;
        for (int m = 0; m < K; ++m) {
            const T gm = two_b * (m < k ? gX : (m == k ? gW : T(0)));
            graw[m * stride] += c * sm[m] * (gm - dot);
        }
    }

    // The bin holding v: the largest k in [0, K-1] with knots[k] <= v.
    int search(const T* knots, T v) const {
        int lo = 0, hi = K - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (knots[mid] <= v)
                lo = mid;
            else
                hi = mid - 1;
        }
        return lo;
    }
};

template <class T>
inline T clamp01(T t) {
    return t < T(0) ? T(0) : (t > T(1) ? T(1) : t);
}

// theta of y in bin b: the stable root of the quadratic, discriminant clamped at 0.
template <class T>
inline T solve_theta(const Bin<T>& b, T y) {
    const T s = b.H / b.W;
    const T dy = y - b.Y;
    const T E = b.d0 + b.d1 - T(2) * s;
    const T qa = b.H * (s - b.d0) + dy * E;
    const T qb = b.H * b.d0 - dy * E;
    const T qc = -s * dy;
    const T disc = std::max(T(0), qb * qb - T(4) * qa * qc);
    const T den = -qb - std::sqrt(disc);
    if (den == T(0)) return T(0);
    return clamp01(T(2) * qc / den);
}

// An element inside [-B, B]: its bin, its position theta in the bin and the bin's partials there.
template <class T>
struct Located {
    Bin<T> b;
    T theta;
    Partials<T> p;
};

// Located from the x side (the forward direction's input).
template <class T>
inline Located<T> locate_x(const Knots<T>& kn, T x) {
    const Bin<T> b = kn.bin_of_x(x);
    const T theta = clamp01((x - b.X) / b.W);
    return {b, theta, bin_partials(b, theta)};
}

// Located from the y side (the inverse direction's input): theta solves the bin's quadratic.
template <class T>
inline Located<T> locate_y(const Knots<T>& kn, T y) {
    const Bin<T> b = kn.bin_of_y(y);
    const T theta = solve_theta(b, y);
    return {b, theta, bin_partials(b, theta)};
}

// One element in either direction: forward y = f(x) with log dy/dx, or (forward_dir false) the
// inverse x = f^-1(y) with log dx/dy = -log f'(x). Outside the knots' interval, the identity.
template <class T>
inline void transform(const Knots<T>& kn, bool forward_dir, T v, T& out, T& logdet) {
    if (!kn.inside(v)) {
        out = v;
        logdet = T(0);
    } else if (forward_dir) {
        const Located<T> at = locate_x(kn, v);
        out = at.p.y;
        logdet = at.p.L;
    } else {
        const Located<T> at = locate_y(kn, v);
        out = at.b.X + at.theta * at.b.W;
        logdet = -at.p.L;
    }
}

// Backward of forward(): gradients gy (of y) and gl (of logdet) to gx (returned, to add) and
// graw (accumulated).
template <class T>
inline T forward_backward(const Knots<T>& kn, T x, T gy, T gl, T* graw, std::int64_t stride) {
    if (!kn.inside(x)) return gy;
    const Located<T> at = locate_x(kn, x);
    const Partials<T>& p = at.p;
    T gq[7];
    for (int i = 0; i < 7; ++i) gq[i] = gy * p.gy[i] + gl * p.gL[i];
    kn.chain(at.b, gq, graw, stride);
    return gq[0];
}

// Backward of inverse(): x(y, q) solves f(x; q) = y and logdet = -L(x; q). With f' = dy/dx:
//   dx/dy = 1/f', dx/dq = -(dy/dq)/f'; G = gx - gl dL/dx is the total gradient on x;
//   gy = G/f', gq = -G (dy/dq)/f' - gl dL/dq.
template <class T>
inline T inverse_backward(const Knots<T>& kn, T y, T gx, T gl, T* graw, std::int64_t stride) {
    if (!kn.inside(y)) return gx;
    const Located<T> at = locate_y(kn, y);
    const Partials<T>& p = at.p;
    const T G = gx - gl * p.gL[0];
    const T inv_f = T(1) / p.dydx;
    T gq[7];
    gq[0] = G * inv_f;
    for (int i = 1; i < 7; ++i) gq[i] = -G * p.gy[i] * inv_f - gl * p.gL[i];
    kn.chain(at.b, gq, graw, stride);
    return gq[0];
}

// For the autoregressive adjoint: dy/dx and dy/draw (accumulated into graw, scaled by g) at x.
template <class T>
inline T forward_partials(const Knots<T>& kn, T x, T g, T* graw, std::int64_t stride) {
    return forward_backward(kn, x, g, T(0), graw, stride);
}

}  // namespace flowlab::density::rqs
