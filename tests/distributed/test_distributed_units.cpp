// The pieces of data-parallel training that need no second process: a rank's slice of the
// noise (RowSlice), the backward pass's report of completed gradients, the bucketed gradient
// reducer and the row shares. The runs under mpirun are in tests/distributed/mpi.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "distributed/gradient_reducer.hpp"
#include "flowlab/communicator.hpp"
#include "flowlab/config.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/ops.hpp"
#include "flowlab/rng.hpp"
#include "flowlab/trainer.hpp"
#include "test_support.hpp"

using namespace flowlab;

namespace {

std::vector<double> values(const Tensor& t) { return t.to_vector(); }

// A communicator of `ranks` ranks whose peers all hold what this one holds: every sum is the
// value times the ranks. It records the reductions in the order they start and whether each
// started before finish() (that is, during the backward pass).
class MirrorComm : public Communicator {
public:
    explicit MirrorComm(int ranks) : ranks_(ranks) {}
    int rank() const override { return 0; }
    int size() const override { return ranks_; }
    void allreduce_sum(float* d, std::size_t n) override {
        for (std::size_t i = 0; i < n; ++i) d[i] *= static_cast<float>(ranks_);
    }
    void allreduce_sum(double* d, std::size_t n) override {
        for (std::size_t i = 0; i < n; ++i) d[i] *= ranks_;
        ++blocking_;
    }
    void broadcast(void*, std::size_t, int) override {}
    std::vector<std::uint64_t> allgather(std::uint64_t v) override { return std::vector<std::uint64_t>(ranks_, v); }
    void barrier() override {}
    Ticket start_allreduce_sum(float* d, std::size_t n) override {
        started_.push_back(n);
        started_during_backward_.push_back(in_backward);
        pending_.push_back({d, n});
        return static_cast<Ticket>(pending_.size());
    }
    void wait(Ticket t) override {
        auto [d, n] = pending_.at(t - 1);
        if (d) allreduce_sum(d, n);
        pending_[t - 1] = {nullptr, 0};
    }
    bool in_backward = false;
    std::vector<std::size_t> started_;
    std::vector<bool> started_during_backward_;
    int blocking_ = 0;

private:
    int ranks_;
    std::vector<std::pair<float*, std::size_t>> pending_;
};

}  // namespace

TEST_CASE("a RowSlice draws exactly a rank's rows of the whole batch's noise", "[distributed]") {
    for (bool normal : {false, true}) {
        Rng whole(77, 5);
        Tensor all = Tensor::empty({6, 3});
        normal ? whole.fill_normal(all) : whole.fill_uniform(all);
        const std::vector<double> a = values(all);
        // Two ranks: rows [0, 2) and [2, 6), each from the same generator state.
        for (auto [offset, rows] : std::vector<std::pair<int, int>>{{0, 2}, {2, 4}}) {
            Rng part(77, 5);
            Tensor mine = Tensor::empty({rows, 3});
            {
                RowSlice slice(offset, rows, 6);
                normal ? part.fill_normal(mine) : part.fill_uniform(mine);
            }
            const std::vector<double> m = values(mine);
            for (int i = 0; i < rows * 3; ++i) REQUIRE(m[static_cast<std::size_t>(i)] == a[static_cast<std::size_t>(offset * 3 + i)]);
            // The generator moved on exactly as the whole fill moved it: the next draws agree.
            CHECK(part.counter() == whole.counter());
        }
    }
}

TEST_CASE("inside a RowSlice, fills of another row count and scalar draws are not sliced", "[distributed]") {
    Rng a(3, 0), b(3, 0);
    Tensor x = Tensor::empty({5, 2}), y = Tensor::empty({5, 2});
    a.fill_uniform(x);
    {
        RowSlice slice(1, 2, 4);  // a share of 2 rows: a [5, 2] fill is not a batch of it
        b.fill_uniform(y);
        CHECK(b.uniform() == Rng(3, 10).uniform());
    }
    CHECK(values(x) == values(y));
    CHECK_THROWS_WITH(RowSlice(3, 2, 4), Catch::Contains("not inside a batch of 4"));
}

TEST_CASE("row shares split a batch into contiguous parts that cover it once", "[distributed]") {
    for (int n : {1, 7, 512, 100}) {
        for (int ranks : {1, 2, 3, 8}) {
            std::int64_t next = 0;
            for (int r = 0; r < ranks; ++r) {
                const RowShare s = row_share(n, r, ranks);
                CHECK(s.offset == next);
                CHECK(s.rows >= n / ranks);
                CHECK(s.rows <= n / ranks + 1);
                next += s.rows;
            }
            CHECK(next == n);
        }
    }
}

TEST_CASE("backward reports each parameter once, when its gradient is complete", "[distributed]") {
    Var w(Tensor::from_vector({2}, {0.5, -1.0}), true);
    Var b(Tensor::from_vector({2}, {0.1, 0.2}), true);
    Var unused(Tensor::from_vector({2}, {1.0, 1.0}), true);
    Var x(Tensor::from_vector({2}, {2.0, 3.0}));
    // w is read by two ops, the second far from the first: it is complete only after both.
    Var h = x * w + b;
    Var loss = sum_all(exp(h) * w);
    std::map<const Node*, std::vector<double>> seen;
    std::map<const Node*, int> count;
    loss.backward([&](Node& leaf) {
        ++count[&leaf];
        seen[&leaf] = leaf.grad.defined() ? leaf.grad.to_vector() : std::vector<double>{};
    });
    REQUIRE(count[w.node().get()] == 1);
    REQUIRE(count[b.node().get()] == 1);
    CHECK(count.count(unused.node().get()) == 0);  // not in the graph: the caller's to handle
    // The gradient reported is the final one.
    CHECK(seen[w.node().get()] == w.grad().to_vector());
    CHECK(seen[b.node().get()] == b.grad().to_vector());
    // The same as a plain backward.
    Var w2(Tensor::from_vector({2}, {0.5, -1.0}), true), b2(Tensor::from_vector({2}, {0.1, 0.2}), true);
    sum_all(exp(x * w2 + b2) * w2).backward();
    CHECK(w2.grad().to_vector() == w.grad().to_vector());
}

TEST_CASE("the gradient reducer sums every parameter's gradient, in buckets started during the pass",
          "[distributed]") {
    // Four parameters of 1000 floats and a small one that no step reaches, which the first
    // layout puts in the first bucket; buckets of 8 KB.
    std::vector<Var> params;
    for (int i = 0; i < 4; ++i) params.emplace_back(Tensor::full({1000}, 0.01 * (i + 1)), true);
    Var spare(Tensor::full({3}, 1.0), true);
    params.push_back(spare);
    MirrorComm comm(3);
    distributed::GradientReducer reducer(comm, params, 8000, true);
    REQUIRE(reducer.buckets() == 3);
    Var x(Tensor::full({1000}, 2.0));
    for (int step = 0; step < 2; ++step) {
        for (auto& p : params) p.zero_grad();
        comm.started_.clear();
        comm.started_during_backward_.clear();
        // A chain: the last parameter's gradient completes first.
        Var h = x;
        for (int i = 0; i < 4; ++i) h = tanh(h * params[static_cast<std::size_t>(i)]);
        Var loss = sum_all(h);
        reducer.begin();
        comm.in_backward = true;
        loss.backward([&](Node& leaf) { reducer.on_ready(leaf); });
        comm.in_backward = false;
        std::vector<std::vector<double>> local;
        for (int i = 0; i < 4; ++i) local.push_back(params[static_cast<std::size_t>(i)].grad().to_vector());
        std::vector<double> control = {1.5, 0.0};
        reducer.finish(control);
        CHECK(control == std::vector<double>{4.5, 0.0});  // summed over the ranks too
        for (int i = 0; i < 4; ++i) {
            const std::vector<double> g = params[static_cast<std::size_t>(i)].grad().to_vector();
            REQUIRE(g.size() == 1000);
            for (std::size_t k = 0; k < g.size(); k += 97)
                CHECK(g[k] == Approx(3.0 * local[static_cast<std::size_t>(i)][k]));
        }
        // No rank had a gradient for it: it has none, as in one process.
        CHECK_FALSE(spare.grad().defined());
        REQUIRE(comm.started_.size() == reducer.buckets());
        int during = 0;
        for (bool b : comm.started_during_backward_) during += b ? 1 : 0;
        if (step == 0) {
            // The unreached parameter sits in the first bucket, which every other waits for.
            CHECK(during == 0);
        } else {
            // Laid out by the first pass's order, it is last: all the others start in the pass.
            CHECK(during == static_cast<int>(reducer.buckets()) - 1);
        }
    }
}

TEST_CASE("without overlap the reducer starts every bucket after the pass", "[distributed]") {
    std::vector<Var> params;
    for (int i = 0; i < 3; ++i) params.emplace_back(Tensor::full({500}, 0.5), true);
    MirrorComm comm(2);
    distributed::GradientReducer reducer(comm, params, 2000, false);
    Var loss = sum_all(params[0] * params[1] * params[2]);
    reducer.begin();
    comm.in_backward = true;
    loss.backward([&](Node& leaf) { reducer.on_ready(leaf); });
    comm.in_backward = false;
    std::vector<double> control;
    reducer.finish(control);
    for (bool b : comm.started_during_backward_) CHECK_FALSE(b);
    CHECK(params[0].grad().to_vector()[0] == Approx(2 * 0.25));
}

TEST_CASE("a gradient replaced after it was reported complete stops the step with an error", "[distributed]") {
    // The reduction may be writing into the reported storage; a replacement is a bug upstream.
    std::vector<Var> params;
    for (int i = 0; i < 2; ++i) params.emplace_back(Tensor::full({500}, 0.5), true);
    MirrorComm comm(2);
    distributed::GradientReducer reducer(comm, params, 2000, true);  // one parameter per bucket
    Var loss = sum_all(params[0] * params[1]);
    reducer.begin();
    loss.backward([&](Node& leaf) { reducer.on_ready(leaf); });
    params[1].mutable_grad() = params[1].grad().clone();
    std::vector<double> control;
    CHECK_THROWS_WITH(reducer.finish(control), Catch::Contains("changed after the backward pass reported it complete"));
}

TEST_CASE("train.distributed is part of the config format: defaults resolved, typos named", "[distributed]") {
    const std::string path = std::string(FLOWLAB_SOURCE_DIR) + "/configs/quickstart.json";
    const Params cfg = load_experiment(path);
    const Params dp = cfg.get_object("train").get_object("distributed");
    CHECK(dp.get_number("timeout_seconds") == 300.0);
    CHECK(dp.get_int("check_every") == 100);
    CHECK(dp.get_bool("overlap"));
    CHECK_THROWS_WITH(load_experiment(path, {"train.distributed.timeout=5"}),
                      Catch::Contains(path + ":/train/distributed/timeout: unknown parameter 'timeout' for "
                                             "train.distributed") &&
                          Catch::Contains("known: timeout_seconds"));
    CHECK_THROWS_WITH(load_experiment(path, {"train.distributed.bucket_mb=0"}),
                      Catch::Contains(":/train/distributed/bucket_mb: out of range"));
    CHECK_THROWS_AS(load_experiment(path, {"train.distributed.check_every=-1"}), ConfigError);
}

namespace {

Experiment tiny_moons(const std::vector<std::string>& sets) {
    Params cfg = load_experiment(std::string(FLOWLAB_SOURCE_DIR) + "/tests/configs/tiny_moons.json", sets);
    return build_experiment(cfg, flowlab::test::standard_and_image_registry());
}

}  // namespace

TEST_CASE("ranks of a data-parallel run train the model one process trains, with the same evaluation",
          "[distributed]") {
    // Uniform dequantisation on the toy data gives every example its own noise draw.
    const std::vector<std::string> sets = {"train.steps=12", "train.threads=1", "train.log_every=4",
                                           "model.dequantizer={\"type\": \"uniform\", \"bits\": 1}",
                                           "train.distributed.check_every=3", "eval.importance_samples=2"};
    Experiment one = tiny_moons(sets);
    TrainOptions opt;
    opt.quiet = true;
    const TrainSummary s1 = train(one, opt);

    // Ranks as threads of this process (what train.replicas runs): the data-parallel path
    // without MPI, and so under the sanitizers too.
    ReplicaGroup group(2);
    std::vector<Experiment> ranks;
    ranks.push_back(tiny_moons(sets));
    ranks.push_back(tiny_moons(sets));
    std::vector<TrainSummary> s(2);
    std::vector<std::string> errors(2);
    {
        std::vector<std::thread> threads;
        for (int r = 0; r < 2; ++r)
            threads.emplace_back([&, r] {
                TrainOptions o;
                o.quiet = true;
                o.comm = &group.member(r);
                try {
                    s[static_cast<std::size_t>(r)] = train(ranks[static_cast<std::size_t>(r)], o);
                } catch (const std::exception& e) {
                    errors[static_cast<std::size_t>(r)] = e.what();
                }
            });
        for (auto& t : threads) t.join();
    }
    REQUIRE(errors[0].empty());
    REQUIRE(errors[1].empty());
    CHECK(s[0].ranks == 2);
    CHECK(s[0].gradient_buckets >= 1);
    const auto p1 = one.flow->parameters(), a = ranks[0].flow->parameters(), b = ranks[1].flow->parameters();
    double d2 = 0.0, n2 = 0.0;
    for (std::size_t i = 0; i < p1.size(); ++i) {
        const std::vector<double> x = p1[i].value().to_vector(), y = a[i].value().to_vector(), z = b[i].value().to_vector();
        CHECK(y == z);  // the ranks hold the same bits
        for (std::size_t k = 0; k < x.size(); ++k) d2 += (x[k] - y[k]) * (x[k] - y[k]), n2 += x[k] * x[k];
    }
    INFO("relative L2 difference to one process: " << std::sqrt(d2 / n2));
    CHECK(std::sqrt(d2 / n2) < 1e-6);
    CHECK(s[0].final_train_loss == Approx(s1.final_train_loss).epsilon(1e-5));
    // The evaluation, shared by the ranks, is one process's up to the order of the sums.
    CHECK(s[0].test_nll == Approx(s1.test_nll).epsilon(1e-6));
    CHECK(s[1].test_nll == s[0].test_nll);
}

TEST_CASE("a replica group's collectives give every member the same result", "[distributed]") {
    constexpr int kN = 3;
    ReplicaGroup group(kN);
    std::vector<std::vector<float>> sums(kN);
    std::vector<std::vector<double>> dsums(kN);
    std::vector<std::vector<std::uint64_t> > gathered(kN);
    std::vector<std::string> texts(kN);
    {
        std::vector<std::thread> threads;
        for (int r = 0; r < kN; ++r)
            threads.emplace_back([&, r] {
                Communicator& c = group.member(r);
                const auto i = static_cast<std::size_t>(r);
                // 7 elements over 3 members: uneven slices.
                std::vector<float> a(7), b(5);
                for (std::size_t k = 0; k < a.size(); ++k) a[k] = static_cast<float>((r + 1) * 10 + static_cast<int>(k));
                for (std::size_t k = 0; k < b.size(); ++k) b[k] = static_cast<float>(r);
                // Deferred reductions run in the order they were started, at wait().
                const auto t1 = c.start_allreduce_sum(a.data(), a.size());
                const auto t2 = c.start_allreduce_sum(b.data(), b.size());
                c.wait(t1);
                c.wait(t2);
                sums[i] = a;
                sums[i].insert(sums[i].end(), b.begin(), b.end());
                std::vector<double> d = {0.5 * r, 1.0};
                c.allreduce_sum(d.data(), d.size());
                dsums[i] = d;
                gathered[i] = c.allgather(static_cast<std::uint64_t>(100 + r));
                texts[i] = broadcast_string(c, r == 1 ? "from one" : "", 1);
                c.barrier();
            });
        for (auto& t : threads) t.join();
    }
    const std::vector<float> want = {60, 63, 66, 69, 72, 75, 78, 3, 3, 3, 3, 3};
    for (int r = 0; r < kN; ++r) {
        const auto i = static_cast<std::size_t>(r);
        CHECK(sums[i] == want);
        CHECK(dsums[i] == std::vector<double>{1.5, 3.0});
        CHECK(gathered[i] == std::vector<std::uint64_t>{100, 101, 102});
        CHECK(texts[i] == "from one");
        CHECK(group.member(r).node_size() == kN);
    }
    CHECK(group.member(0).stats().reductions == 3);
    CHECK(group.failed_rank() == -1);
}

TEST_CASE("a replica that fails ends the others' waits with an error naming it", "[distributed]") {
    ReplicaGroup group(2);
    std::string seen;
    std::thread waiting([&] {
        try {
            float x = 1.0f;
            group.member(1).allreduce_sum(&x, 1);  // rank 0 never comes
        } catch (const DistributedError& e) {
            seen = e.what();
        }
    });
    group.abort(0, "out of memory");
    group.abort(1, "the wait was aborted");  // a later failure does not replace the first
    waiting.join();
    CHECK_THAT(seen, Catch::Contains("replica 0 failed: out of memory"));
    CHECK(group.failed_rank() == 0);
    // Later collectives fail at once.
    CHECK_THROWS_AS(group.member(0).barrier(), DistributedError);
}
