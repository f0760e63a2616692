#include "distributed.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include "flowlab/errors.hpp"
#include "flowlab/parallel.hpp"

#if FLOWLAB_HAVE_MPI
#include "flowlab/mpi.hpp"
#endif

namespace flowlab::cli {

namespace {

SingleProcess g_single;
#if FLOWLAB_HAVE_MPI
std::unique_ptr<mpi::Runtime> g_mpi;
#endif

// The variables by which MPI launchers announce themselves (the same as mpi::launched()).
bool launched_by_mpi() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
        if (std::getenv(v)) return true;
    return false;
}

}  // namespace

void start_distributed() {
    if (!launched_by_mpi()) return;
#if FLOWLAB_HAVE_MPI
    g_mpi = mpi::Runtime::start();
#else
    throw Error("started by an MPI launcher, but this flowlab was built without MPI: install libopenmpi-dev "
                "(bash cmake/install-deps.sh) and build again, or run without mpirun");
#endif
}

Communicator& communicator() {
#if FLOWLAB_HAVE_MPI
    if (g_mpi) return *g_mpi;
#endif
    return g_single;
}

bool is_root() { return communicator().rank() == 0; }
bool distributed() { return communicator().size() > 1; }

void configure_distributed(const Params& config) {
#if FLOWLAB_HAVE_MPI
    if (!g_mpi || !config.has("train")) return;
    const Params train = config.get_object("train");
    if (train.has("distributed")) g_mpi->set_timeout(train.get_object("distributed").get_number("timeout_seconds"));
#else
    (void)config;
#endif
}

void set_command_threads(const Params& config) {
    const std::int64_t threads = config.has("train") ? config.get_object("train").get_int("threads") : 0;
    if (threads > 0)
        set_num_threads(static_cast<int>(threads));
    else if (distributed())
        set_num_threads(std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                        std::max(1, communicator().node_size())));
}

int finish_distributed(int exit_code, bool collective) {
#if FLOWLAB_HAVE_MPI
    if (g_mpi) {
        if (!collective || g_mpi->size() == 1) {
            // Commands of rank 0 alone: nothing to wait for but MPI_Finalize.
            std::unique_ptr<mpi::Runtime> rt = std::move(g_mpi);
            rt.reset();
            return exit_code;
        }
        try {
            const int code = g_mpi->finish(exit_code);
            g_mpi.reset();
            return code;
        } catch (const mpi::PeerFailed& e) {
            g_mpi->fail(e.exit_code(), "", true);
        }
    }
#else
    (void)collective;
#endif
    return exit_code;
}

void fail_distributed(int exit_code, const std::string& line, bool peer) {
#if FLOWLAB_HAVE_MPI
    if (g_mpi) g_mpi->fail(exit_code, line, peer);
#else
    (void)peer;
#endif
    std::fprintf(stderr, "%s\n", line.c_str());
    std::exit(exit_code);
}

bool peer_failure(const std::exception& e, int& exit_code) {
#if FLOWLAB_HAVE_MPI
    if (const auto* p = dynamic_cast<const mpi::PeerFailed*>(&e)) {
        exit_code = p->exit_code();
        return true;
    }
#else
    (void)e;
    (void)exit_code;
#endif
    return false;
}

}  // namespace flowlab::cli
