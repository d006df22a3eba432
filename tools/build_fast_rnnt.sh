#!/usr/bin/env bash
# Build fast_rnnt 1.3 (CPU only) from its PyPI sdist against the torch in $PYTHON's environment and
# install the wheel there.  Opt-in: it is only the oracle for tests/test_loss_fast_rnnt.py and an
# optional loss backend; SynthASR never needs it.
#
# Why the extra flags: the sdist downloads pybind11 2.6 from GitHub at configure time (we point CMake at
# the pybind11 sdist from PyPI instead), asks for C++14 (torch >= 2.1 headers need C++17), and compiles
# one target that includes torch/extension.h without Python's include dir.
#
# Usage: tools/build_fast_rnnt.sh [python]      (default: .venv/bin/python)   ~1-4 min on 2 cores
set -euo pipefail

PYTHON=${1:-.venv/bin/python}
FT_VERSION=1.3
PYBIND11_VERSION=3.1.0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/build_fast_rnnt.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m pip download --no-deps --no-binary :all: -d "$WORK" \
  "fast_rnnt==$FT_VERSION" "pybind11==$PYBIND11_VERSION"
tar -xzf "$WORK/fast_rnnt-$FT_VERSION.tar.gz" -C "$WORK"
tar -xzf "$WORK/pybind11-$PYBIND11_VERSION.tar.gz" -C "$WORK"

PY_INCLUDE=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
export FT_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DFT_BUILD_TESTS=OFF -DFT_WITH_CUDA=OFF \
 -DCMAKE_CXX_STANDARD=17 -DCMAKE_CXX_FLAGS=-I$PY_INCLUDE \
 -DFETCHCONTENT_SOURCE_DIR_PYBIND11=$WORK/pybind11-$PYBIND11_VERSION -DFETCHCONTENT_FULLY_DISCONNECTED=ON"
export FT_MAKE_ARGS="-j$(nproc)"

"$PYTHON" -m pip wheel --no-build-isolation --no-deps -w "$WORK/wheels" "$WORK/fast_rnnt-$FT_VERSION"
"$PYTHON" -m pip install --no-deps "$WORK"/wheels/fast_rnnt-*.whl
"$PYTHON" -c "import fast_rnnt, torch; print('fast_rnnt', fast_rnnt.__version__, 'OK with torch', torch.__version__)"
