#!/usr/bin/env bash
# The GPU check, as one command for the device machine (see the tool's README): the default test lane
# on CUDA, its log and a JUnit report under $OUT. Wheels the machine lacks (openTSNE) travel in .whl/.
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.txt"
# pytest-xdist spreads the files over 8 processes (one file per process: fixtures stay shared within a file)
timeout 480 python3 -m pytest -q -p no:cacheprovider -n 8 --dist loadfile --timeout=400 \
  --junitxml="$OUT/junit.xml" -rf 2>&1 | tee "$OUT/tests.log" | tail -60
