// Dequantizers: `identity` (continuous data, log_weight 0) and `uniform`
// (x' = (x + u) / levels + offset, u ~ U(0,1), levels = 2^bits; log_weight = -D log(levels),
// the log of the bin width, so that log P(x) >= log p(x') + log_weight).
#include <cmath>
#include <memory>

#include <flowlab/parallel.hpp>

#include "standard.hpp"

namespace flowlab::standard {
namespace {

class IdentityDequantizer final : public Dequantizer {
protected:
    Dequantized do_dequantize(const Tensor& x, Rng&, const Var&) override {
        return {Var(x), Var(Tensor::zeros({x.size(0)}, x.dtype()))};
    }
};

class UniformDequantizer final : public Dequantizer {
public:
    UniformDequantizer(int bits, double offset) : levels_(std::ldexp(1.0, bits)), offset_(offset) {}
    // q(u|x) = 1 on the unit cube: averaging K draws gives the importance-weighted bound too.
    bool stochastic() const override { return true; }

protected:
    Dequantized do_dequantize(const Tensor& x, Rng& rng, const Var&) override {
        Tensor out = Tensor::empty(x.shape(), x.dtype());
        rng.fill_uniform(out);  // u, then turned into x' in place
        dispatch(x.dtype(), [&](auto tag) {
            using T = decltype(tag);
            const T* xp = x.data<T>();
            T* op = out.data<T>();
            const T inv = static_cast<T>(1.0 / levels_), off = static_cast<T>(offset_);
            parallel_for(x.numel(), kElementwiseGrain, [&](std::int64_t i0, std::int64_t i1) {
                for (std::int64_t i = i0; i < i1; ++i) op[i] = (xp[i] + op[i]) * inv + off;
            });
        });
        const std::int64_t B = x.size(0);
        const double D = B > 0 ? static_cast<double>(x.numel() / B) : 0.0;
        return {Var(std::move(out)), Var(Tensor::full({B}, -D * std::log(levels_), x.dtype()))};
    }

private:
    double levels_, offset_;
};

}  // namespace

void register_dequantizers(Registry& reg) {
    reg.add_dequantizer({"identity", "no dequantisation: the data are already continuous (log_weight 0)", {},
                         [](const Params&, const BuildContext&) -> std::unique_ptr<Dequantizer> {
                             return std::make_unique<IdentityDequantizer>();
                         }});
    reg.add_dequantizer(
        {"uniform", "uniform dequantisation x' = (x + u)/2^bits + offset, u ~ U(0,1), for integer data in [0, 2^bits)",
         {param_int("bits", 8, "bits per value: levels = 2^bits (8 for pixels)").range(1, 30),
          param_number("offset", 0.0, "added after scaling, e.g. -0.5 to centre on 0 (volume preserving)")},
         [](const Params& p, const BuildContext&) -> std::unique_ptr<Dequantizer> {
             return std::make_unique<UniformDequantizer>(static_cast<int>(p.get_int("bits")), p.get_number("offset"));
         }});
}

}  // namespace flowlab::standard
