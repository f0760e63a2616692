// `actnorm2d`: Glow's per-channel affine normalisation of images.
//   inverse (data -> latent): z = (x + b) * exp(logs)      log-det  H W sum(logs)
//   forward (latent -> data): x = z * exp(-logs) - b        log-det -H W sum(logs)
// Data-dependent init (before the first step): b = -mean, logs = -log(std + 1e-6) per channel,
// with the unbiased std over batch, height and width, so the first batch leaves the layer with
// zero mean and unit variance per channel. A buffer records that the init ran, so a layer
// restored from a checkpoint is not re-initialised.
#include <cmath>
#include <memory>

#include "image.hpp"

namespace flowlab::image {
namespace {

// One fused op per direction over [B, C, H, W]; the parameters are per channel.
template <class T>
void affine_fwd(const T* x, const T* b, const T* ls, T* y, std::int64_t n0, std::int64_t n1, std::int64_t C,
                std::int64_t P, bool inverse) {
    for (std::int64_t n = n0; n < n1; ++n)
        for (std::int64_t c = 0; c < C; ++c) {
            const T* xr = x + (n * C + c) * P;
            T* yr = y + (n * C + c) * P;
            const T bc = b[c];
            if (inverse) {
                const T s = std::exp(ls[c]);
#pragma omp simd
                for (std::int64_t q = 0; q < P; ++q) yr[q] = (xr[q] + bc) * s;
            } else {
                const T s = std::exp(-ls[c]);
#pragma omp simd
                for (std::int64_t q = 0; q < P; ++q) yr[q] = xr[q] * s - bc;
            }
        }
}

Var channel_affine(const Var& x, const Var& bias, const Var& logs, bool inverse) {
    const Tensor& xv = x.value();
    if (xv.dtype() != bias.dtype())
        throw ShapeError(std::string("actnorm2d: input dtype ") + dtype_name(xv.dtype()) + " differs from the parameters' " +
                         dtype_name(bias.dtype()));
    const std::int64_t N = xv.size(0), C = xv.size(1), P = xv.size(2) * xv.size(3);
    Tensor y = Tensor::empty(xv.shape(), xv.dtype());
    dispatch(xv.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = xv.data<T>();
        const T* bp = bias.value().data<T>();
        const T* lp = logs.value().data<T>();
        T* yp = y.data<T>();
        parallel_samples(N, C * P, [&](std::int64_t n0, std::int64_t n1) {
            affine_fwd<T>(xp, bp, lp, yp, n0, n1, C, P, inverse);
        });
    });
    return make_op(inverse ? "actnorm2d_inverse" : "actnorm2d_forward", std::move(y), {x, bias, logs},
                   [x, bias, logs, inverse, N, C, P](const Tensor& gy, const Tensor& yv, GradSink& g) {
                       dispatch(gy.dtype(), [&](auto tag) {
                           using T = decltype(tag);
                           const T* gp = gy.data<T>();
                           const T* yp = yv.data<T>();
                           const T* bp = bias.value().template data<T>();
                           const T* lp = logs.value().template data<T>();
                           T* gx = g.needs(0) ? g.buffer(0).template data<T>() : nullptr;
                           std::vector<double> gb(static_cast<std::size_t>(C), 0.0), gl(static_cast<std::size_t>(C), 0.0);
                           for (std::int64_t n = 0; n < N; ++n)
                               for (std::int64_t c = 0; c < C; ++c) {
                                   const T* gr = gp + (n * C + c) * P;
                                   const T* yr = yp + (n * C + c) * P;
                                   const T s = inverse ? std::exp(lp[c]) : std::exp(-lp[c]);
                                   T sg = T(0), sgy = T(0);
#pragma omp simd reduction(+ : sg, sgy)
                                   for (std::int64_t q = 0; q < P; ++q) {
                                       sg += gr[q];
                                       sgy += gr[q] * yr[q];
                                   }
                                   if (gx) {
                                       T* gxr = gx + (n * C + c) * P;
#pragma omp simd
                                       for (std::int64_t q = 0; q < P; ++q) gxr[q] += gr[q] * s;
                                   }
                                   // inverse: dy/db = s, dy/dlogs = y; forward: dy/db = -1,
                                   // dy/dlogs = -(y + b).
                                   if (inverse) {
                                       gb[c] += static_cast<double>(sg * s);
                                       gl[c] += static_cast<double>(sgy);
                                   } else {
                                       gb[c] -= static_cast<double>(sg);
                                       gl[c] -= static_cast<double>(sgy + sg * bp[c]);
                                   }
                               }
                           for (std::size_t i : {std::size_t{1}, std::size_t{2}}) {
                               if (!g.needs(i)) continue;
                               T* d = g.buffer(i).template data<T>();
                               const std::vector<double>& src = i == 1 ? gb : gl;
                               for (std::int64_t c = 0; c < C; ++c) d[c] += static_cast<T>(src[static_cast<std::size_t>(c)]);
                           }
                       });
                   });
}

class ActNorm2d final : public Bijector {
public:
    explicit ActNorm2d(const Shape& in) : in_(in) {
        require_image(in, "actnorm2d");
        bias_ = add_parameter("bias", Tensor::zeros({in[0]}));
        logs_ = add_parameter("logs", Tensor::zeros({in[0]}));
        initialized_ = add_buffer("initialized", Tensor::zeros({1}));
    }

    Var data_init(const Var& x, const Var& context) override {
        if (initialized_.item(0) == 0.0) {
            const Tensor& xv = x.value();
            const std::int64_t N = xv.size(0), C = xv.size(1), P = xv.size(2) * xv.size(3);
            const std::vector<double> v = xv.to_vector();
            Tensor& b = bias_.mutable_value();
            Tensor& ls = logs_.mutable_value();
            const double m = static_cast<double>(N * P);
            for (std::int64_t c = 0; c < C; ++c) {
                double sum = 0.0;
                for (std::int64_t n = 0; n < N; ++n)
                    for (std::int64_t q = 0; q < P; ++q) sum += v[static_cast<std::size_t>((n * C + c) * P + q)];
                const double mean = sum / m;
                double ss = 0.0;
                for (std::int64_t n = 0; n < N; ++n)
                    for (std::int64_t q = 0; q < P; ++q) {
                        const double d = v[static_cast<std::size_t>((n * C + c) * P + q)] - mean;
                        ss += d * d;
                    }
                const double sd = m > 1 ? std::sqrt(ss / (m - 1)) : 0.0;
                b.set_item(c, -mean);
                ls.set_item(c, -std::log(sd + 1e-6));
            }
            initialized_.set_item(0, 1.0);
        }
        return inverse(x, context).out;
    }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        return {channel_affine(x, bias_, logs_, true), broadcast_log_det(sum_all(logs_) * pixels(), x)};
    }
    FlowResult do_forward(const Var& z, const Var&) override {
        return {channel_affine(z, bias_, logs_, false), broadcast_log_det(sum_all(logs_) * -pixels(), z)};
    }

private:
    double pixels() const { return static_cast<double>(in_[1] * in_[2]); }

    Shape in_;
    Var bias_, logs_;
    Tensor initialized_;
};

}  // namespace

void register_actnorm(Registry& reg) {
    reg.add_bijector({"actnorm2d",
                      "per-channel z = (x + b) exp(logs) with data-dependent init (zero mean, unit variance per channel)",
                      {},
                      from_event_shape<Bijector, ActNorm2d>(),
                      ConformanceHints{{{4, 4, 4}, {2, 3, 2}}}});
}

}  // namespace flowlab::image
