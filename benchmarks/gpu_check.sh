#!/usr/bin/env bash
# The GPU check, in one command, on a Linux x86_64 machine with a CUDA GPU and this repository:
#
#     benchmarks/gpu_check.sh
#
# 1. installs what is missing (`make install`: PyPI's torch==2.13.0 is a CUDA build on Linux x86_64);
# 2. prints the GPU's name and the torch and CUDA versions;
# 3. builds the random-weight parakeet-tdt-0.6b-v2 replica into build/replicas/ (once);
# 4. runs the equality tests with NeMo's transcribe() on cuda (tests/test_nemo_equality.py);
# 5. prints RTFx of the service and of NeMo's transcribe() on that replica, at batch 1 and under 64
#    concurrent clients (benchmarks/real_size.py).
#
# VENV (default .venv) names the virtualenv. The exit status is non-zero when a step failed; the
# benchmark runs even when an equality test failed.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
REPLICA=build/replicas/parakeet-tdt-0.6b-v2.nemo
status=0

step() { printf '\n== %s\n' "$*"; }

step "install"
if ! make install VENV="$VENV"; then
    # `make install` also installs espeak-ng and jemalloc through apt, which needs root and a network;
    # neither is needed here (the tests' audio is committed, jemalloc is optional), so go on without.
    echo "make install failed; installing the Python packages only" >&2
    if ! { { test -x "$PY" || python3 -m venv "$VENV"; } &&
           "$PY" -m pip install -q -c constraints.txt torch==2.13.0 &&
           "$PY" -m pip install -q -c constraints.txt -e '.[dev]'; }; then
        echo "could not install the project" >&2
        exit 1
    fi
    touch "$VENV/.installed"
fi

step "device"
if ! "$PY" - <<'EOF'
import sys

import torch

print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")
if not torch.cuda.is_available():
    sys.exit("CUDA is not available to torch: no GPU, no driver, or a CPU build of torch in the virtualenv "
             "(reinstall it from PyPI: pip install --force-reinstall torch==2.13.0)")
index = torch.cuda.current_device()
major, minor = torch.cuda.get_device_capability(index)
print(f"GPU {index}: {torch.cuda.get_device_name(index)}, compute capability {major}.{minor}, "
      f"{torch.cuda.get_device_properties(index).total_memory / 2**30:.0f} GiB, "
      f"bf16 {'supported' if torch.cuda.is_bf16_supported() else 'not supported'}")
print(f"CUDA runtime {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
EOF
then
    exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv

step "replica"
if [ ! -f "$REPLICA" ]; then
    "$PY" benchmarks/make_replicas.py parakeet-tdt-0.6b-v2 || { echo "could not build $REPLICA" >&2; exit 1; }
else
    echo "$REPLICA is there"
fi

step "equality with NeMo's transcribe() on cuda"
NEMO_STT_TEST_DEVICE=cuda "$PY" -m pytest tests/test_nemo_equality.py -q -p no:cacheprovider || status=1

step "RTFx on cuda: the service and NeMo's transcribe(), 1 and 64 clients"
if [ -f benchmarks/real_size.py ]; then
    "$PY" benchmarks/real_size.py --model "$REPLICA" --device cuda --clients 1,64 --no-long || status=1
else
    echo "benchmarks/real_size.py is not in this checkout" >&2
    status=1
fi
exit "$status"
