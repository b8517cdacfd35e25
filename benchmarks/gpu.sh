#!/usr/bin/env bash
# The GPU check in one command for the device machine, within about 5 minutes: the whole default test lane on CUDA,
# then the benchmarks with --device cuda; logs, JUnit and a JSON summary under $OUT (at most 8 files come back).
#   run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=330)
#   bash benchmarks/gpu.sh --lane-only          # the test lane alone (benchmarks/device_check.sh)
# Each part has its own timeout (LANE_S, BENCH_S, CAPTUM_S, INFLUENCE_S seconds; defaults 190 + 45 + 35 + 50), so one that hangs
# costs only its share and the others still report. Wheels the machine lacks (openTSNE, captum) travel in .whl/.
set -u
LANE_ONLY=0
[ "${1:-}" = "--lane-only" ] && LANE_ONLY=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LANE_S=${LANE_S:-190} BENCH_S=${BENCH_S:-45} CAPTUM_S=${CAPTUM_S:-35} INFLUENCE_S=${INFLUENCE_S:-50}
BENCH_SECTIONS=${BENCH_SECTIONS:-model attribution}
PY=${PYTHON:-python3}
start=$(date +%s)
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
# 8 test processes on 16 cores: 2 threads each, also for the commands the tests start (demo, torchrun), which
# would otherwise each take every core
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda',
torch.cuda.is_available(), torch.cuda.device_count(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  nproc
} 2>&1 | tee "$OUT/env.txt"

# the lane: pytest-xdist spreads files over 8 processes (one file per process: module fixtures stay shared);
# without xdist, plain pytest (slower: a lane timeout then reports what finished)
if $PY -c "import xdist" 2>/dev/null; then PAR="-n 8 --dist loadfile"; else PAR=""; echo "no pytest-xdist: one process"; fi
t0=$(date +%s)
timeout "$LANE_S" $PY -m pytest -q -p no:cacheprovider $PAR --timeout=$((LANE_S - 10)) \
  --junitxml="$OUT/junit.xml" -rf > "$OUT/tests.log" 2>&1
lane_rc=$?; lane_s=$(( $(date +%s) - t0 ))
tail -40 "$OUT/tests.log"

bench_rc=-1; bench_s=0; captum_rc=-1; captum_s=0
if [ "$LANE_ONLY" = 0 ]; then
  # benchmarks/run.py with --device cuda once it takes the option; captum_compare.py when it is there
  if grep -q -- "--device" benchmarks/run.py; then
    t0=$(date +%s)
    timeout "$BENCH_S" $PY benchmarks/run.py --device cuda $BENCH_SECTIONS > "$OUT/bench.log" 2>&1
    bench_rc=$?; bench_s=$(( $(date +%s) - t0 )); tail -30 "$OUT/bench.log"
  else
    echo "benchmarks/run.py takes no --device yet: skipped" | tee "$OUT/bench.log"
  fi
  if [ -f benchmarks/captum_compare.py ]; then
    t0=$(date +%s)
    timeout "$CAPTUM_S" $PY benchmarks/captum_compare.py --device cuda > "$OUT/captum.log" 2>&1
    captum_rc=$?; captum_s=$(( $(date +%s) - t0 )); tail -30 "$OUT/captum.log"
  else
    echo "benchmarks/captum_compare.py is not there: skipped" | tee "$OUT/captum.log"
  fi
  # influence: 50,000 training x 2,000 query pairwise scores (issue 16; Kronfluence reports 106 s on an A100)
  timeout "$INFLUENCE_S" $PY benchmarks/influence_bench.py --device cuda --sections pairwise \
    --out "$OUT/influence-cuda.json" > "$OUT/influence.log" 2>&1; tail -5 "$OUT/influence.log"
fi

# one JSON summary: exit codes (124 = that part's timeout), seconds, and the lane's counts from the JUnit file
$PY - "$OUT" "$lane_rc" "$lane_s" "$bench_rc" "$bench_s" "$captum_rc" "$captum_s" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, lane_rc, lane_s, bench_rc, bench_s, captum_rc, captum_s, total = sys.argv[1], *map(int, sys.argv[2:])
counts, failed = {}, []
junit = Path(out) / "junit.xml"
if junit.exists():
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
summary = {"lane": {"rc": lane_rc, "seconds": lane_s, **counts, "failed": failed},
           "bench": {"rc": bench_rc, "seconds": bench_s}, "captum": {"rc": captum_rc, "seconds": captum_s},
           "total_seconds": total}
(Path(out) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary))
EOF
exit $lane_rc
