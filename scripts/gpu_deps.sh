#!/usr/bin/env bash
# Run HERE (a Debian machine with apt), before a device call: downloads the
# Debian packages of the C++ libraries the build needs (OpenMPI, protobuf,
# GoogleTest, OpenBLAS, CLI11, nlohmann-json) into .gpudeps/ (git-ignored,
# about 25 MB), so that a GPU machine without them (no apt, no network there)
# can unpack them under /tmp: name .gpudeps in the device call's carry and
# scripts/gpu_check.sh uses it for whatever that machine lacks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PACKAGES=(libprotobuf-dev libprotobuf32 protobuf-compiler libprotoc32 libgtest-dev
          libopenblas-dev libopenblas0 libopenblas0-pthread libopenblas-pthread-dev libgfortran5
          libcli11-dev nlohmann-json3-dev
          libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common libhwloc15 libevent-2.1-7
          libevent-core-2.1-7 libevent-pthreads-2.1-7 libpmix2 libfabric1 libucx0 libibverbs1
          librdmacm1 libpsm2-2 libpsm-infinipath1 libnl-3-200 libnl-route-3-200 libmunge2 libnuma1)
mkdir -p .gpudeps
cd .gpudeps
# (A name this Debian lacks fails here, not as a configure failure on the
# GPU machine, in device time.)
apt-get download "${PACKAGES[@]}" 2> >(grep -v "^W: Download is performed unsandboxed" >&2) ||
  { echo "gpu_deps.sh: apt-get download failed (a package this Debian release names otherwise?)" >&2; exit 1; }
for p in "${PACKAGES[@]}"; do
  compgen -G "${p}_*.deb" > /dev/null || { echo "gpu_deps.sh: no ${p}_*.deb downloaded" >&2; exit 1; }
done
du -sh .
