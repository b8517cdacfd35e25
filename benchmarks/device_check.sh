#!/usr/bin/env bash
# The GPU check, as one command for the device machine (see the tool's README): the default test lane
# on CUDA, its log, a JUnit report and summary.json under $OUT; benchmarks/gpu.sh does the work (the lane
# alone here, with a longer limit; gpu.sh without --lane-only adds the benchmarks within 5 minutes).
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540)
LANE_S=${LANE_S:-480} exec bash "$(dirname "$0")/gpu.sh" --lane-only
