#!/usr/bin/env bash
# Installs flowlab's build and run dependencies from Debian's packages (Debian 12).
# Idempotent: does nothing when everything is already installed.
#   bash cmake/install-deps.sh            # build + tests
#   FLOWLAB_BENCH=1 bash cmake/install-deps.sh   # also the PyTorch reference for benchmarks
#   bash cmake/install-deps.sh --ci      # also what CI needs: clang/libFuzzer for the sanitizer
#                                        # and fuzzing build, debootstrap and git for the fresh root
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libdnnl-dev libtbb-dev nlohmann-json3-dev libboost-dev libboost-program-options-dev catch2
  libpng-dev zlib1g-dev
  dataset-fashion-mnist
  libopenmpi-dev openmpi-bin openssh-client
)
# Open MPI (libopenmpi-dev, openmpi-bin: mpirun) is for data-parallel training
# (docs/DISTRIBUTED.md); without it flowlab builds and runs as one process. mpirun wants an ssh
# client even on one machine (openmpi-bin only recommends it).
# libdnnl-dev only recommends the OpenCL headers, but its CMake config requires them: without
# this line a fresh machine stops at configure with "Could NOT find OpenCL".
packages+=(ocl-icd-opencl-dev)
if [ "${1:-}" = --ci ]; then
  packages+=(clang libclang-rt-14-dev debootstrap git ca-certificates)
fi
if [ "${FLOWLAB_BENCH:-0}" = 1 ]; then
  packages+=(python3-torch python3-numpy)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
