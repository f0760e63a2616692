// What every Communicator shares (communicator.hpp).
#include "flowlab/communicator.hpp"

namespace flowlab {

std::string broadcast_string(Communicator& comm, const std::string& s, int root) {
    std::uint64_t n = s.size();
    comm.broadcast(&n, sizeof n, root);
    std::string out = comm.rank() == root ? s : std::string(static_cast<std::size_t>(n), '\0');
    if (n > 0) comm.broadcast(out.data(), out.size(), root);
    return out;
}

}  // namespace flowlab
