// `squeeze` (space-to-depth 2x2, the multi-scale reshaping of RealNVP and Glow) and `shift`
// (a constant offset, e.g. centring dequantised pixels on 0).
//
// squeeze, inverse (data -> latent): [C, H, W] -> [4C, H/2, W/2] with
//   out[4c + 2dy + dx, i, j] = x[c, 2i + dy, 2j + dx]
// (PyTorch's view(c, h/2, 2, w/2, 2).permute(0, 2, 4, 1, 3)); forward is depth-to-space. Both
// are permutations: log-det 0.
#include <memory>

#include "image.hpp"

namespace flowlab::image {

std::shared_ptr<const std::vector<std::int64_t>> squeeze_index(const Shape& in) {
    const std::int64_t C = in[0], H = in[1], W = in[2], h = H / 2, w = W / 2;
    auto idx = std::make_shared<std::vector<std::int64_t>>(static_cast<std::size_t>(C * H * W));
    for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t dy = 0; dy < 2; ++dy)
            for (std::int64_t dx = 0; dx < 2; ++dx)
                for (std::int64_t i = 0; i < h; ++i)
                    for (std::int64_t j = 0; j < w; ++j)
                        (*idx)[static_cast<std::size_t>(((4 * c + 2 * dy + dx) * h + i) * w + j)] =
                            (c * H + 2 * i + dy) * W + 2 * j + dx;
    return idx;
}

std::shared_ptr<const std::vector<std::int64_t>> unsqueeze_index(const Shape& in) {
    auto fwd = squeeze_index(in);
    auto inv = std::make_shared<std::vector<std::int64_t>>(fwd->size());
    for (std::size_t k = 0; k < fwd->size(); ++k) (*inv)[static_cast<std::size_t>((*fwd)[k])] = static_cast<std::int64_t>(k);
    return inv;
}

Var permute_within_sample(const Var& x, const std::shared_ptr<const std::vector<std::int64_t>>& idx,
                          const Shape& out_event) {
    const Tensor& xv = x.value();
    const std::int64_t B = xv.size(0), D = static_cast<std::int64_t>(idx->size());
    if (xv.numel() != B * D)
        throw ShapeError("permute_within_sample: input " + shape_str(xv.shape()) + " does not hold " +
                         std::to_string(D) + " values per sample");
    Tensor out = Tensor::empty(with_batch(B, out_event), xv.dtype());
    dispatch(xv.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = xv.data<T>();
        T* op = out.data<T>();
        const std::int64_t* ip = idx->data();
        parallel_samples(B, D, [&](std::int64_t b0, std::int64_t b1) {
            for (std::int64_t b = b0; b < b1; ++b)
                for (std::int64_t k = 0; k < D; ++k) op[b * D + k] = xp[b * D + ip[k]];
        });
    });
    return make_op("permute_within_sample", std::move(out), {x}, [idx, B, D](const Tensor& gy, const Tensor&, GradSink& g) {
        if (!g.needs(0)) return;
        dispatch(gy.dtype(), [&](auto tag) {
            using T = decltype(tag);
            T* gx = g.buffer(0).template data<T>();
            const T* gp = gy.data<T>();
            const std::int64_t* ip = idx->data();
            parallel_samples(B, D, [&](std::int64_t b0, std::int64_t b1) {
                for (std::int64_t b = b0; b < b1; ++b)
                    for (std::int64_t k = 0; k < D; ++k) gx[b * D + ip[k]] += gp[b * D + k];
            });
        });
    });
}

namespace {

class Squeeze final : public Bijector {
public:
    explicit Squeeze(const Shape& in) : in_(in) {
        require_image(in, "squeeze");
        if (in[1] % 2 != 0 || in[2] % 2 != 0)
            throw ShapeError("squeeze: height and width must be even, got " + shape_str(in) +
                             " (a 2x2 squeeze halves both)");
        to_latent_ = squeeze_index(in);
        to_data_ = unsqueeze_index(in);
    }
    Shape output_shape(const Shape& in) const override { return {4 * in[0], in[1] / 2, in[2] / 2}; }

protected:
    FlowResult do_inverse(const Var& x, const Var&) override {
        return {permute_within_sample(x, to_latent_, output_shape(in_)), zero_log_det(x)};
    }
    FlowResult do_forward(const Var& z, const Var&) override {
        return {permute_within_sample(z, to_data_, in_), zero_log_det(z)};
    }

private:
    Shape in_;
    std::shared_ptr<const std::vector<std::int64_t>> to_latent_, to_data_;
};

class Shift final : public Bijector {
public:
    explicit Shift(double offset) : offset_(offset) {}

protected:
    FlowResult do_inverse(const Var& x, const Var&) override { return {x + offset_, zero_log_det(x)}; }
    FlowResult do_forward(const Var& z, const Var&) override { return {z - offset_, zero_log_det(z)}; }

private:
    double offset_;
};

}  // namespace

void register_reshaping(Registry& reg) {
    reg.add_bijector({"squeeze", "space-to-depth 2x2: [C, H, W] -> [4C, H/2, W/2], channel 4c + 2dy + dx (log-det 0)",
                      {}, from_event_shape<Bijector, Squeeze>(), ConformanceHints{{{1, 4, 4}, {3, 2, 4}}}});

    BijectorEntry sh{"shift",
                     "constant offset z = x + offset (data -> latent), log-det 0; e.g. -0.5 centres pixels in [0, 1]",
                     {param_number("offset", -0.5, "added to the data on the way to the latent space")},
                     [](const Params& p, const BuildContext&) -> std::unique_ptr<Bijector> {
                         return std::make_unique<Shift>(p.get_number("offset"));
                     }};
    sh.hints.shapes = {{2, 2, 2}, {5}};
    reg.add_bijector(std::move(sh));
}

}  // namespace flowlab::image
