#include "replicas.hpp"

#include <exception>
#include <string>
#include <thread>
#include <vector>

namespace flowlab::cli {

int replicas_of(const Params& config, bool under_mpi) {
    const Params train = config.get_object("train");
    const int n = static_cast<int>(train.get_int("replicas"));
    if (n > 1 && under_mpi)
        throw ConfigError(train.where("replicas") + ": " + std::to_string(n) +
                          " replicas in a job of several MPI ranks; every rank is a replica of its own already: "
                          "set train.replicas to 1, or start more ranks (mpirun -np)");
    return n;
}

TrainSummary run_replicas(Session& s, int replicas, const std::function<TrainSummary(Experiment&, Communicator&)>& work) {
    std::vector<Experiment> copies;
    for (int r = 1; r < replicas; ++r) copies.push_back(s.replica());
    ReplicaGroup group(replicas);
    std::vector<TrainSummary> results(static_cast<std::size_t>(replicas));
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(replicas));
    auto one = [&](int r) {
        const auto i = static_cast<std::size_t>(r);
        try {
            results[i] = work(r == 0 ? s.experiment() : copies[i - 1], group.member(r));
        } catch (const std::exception& e) {
            errors[i] = std::current_exception();
            group.abort(r, e.what());
        } catch (...) {
            errors[i] = std::current_exception();
            group.abort(r, "an unknown exception");
        }
    };
    std::vector<std::thread> threads;
    for (int r = 1; r < replicas; ++r) threads.emplace_back(one, r);
    one(0);
    for (auto& t : threads) t.join();
    // The replica that failed first; the others' errors are the abort it caused.
    const int first = group.failed_rank();
    if (first >= 0) std::rethrow_exception(errors[static_cast<std::size_t>(first)]);
    return results[0];
}

}  // namespace flowlab::cli
