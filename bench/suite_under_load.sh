#!/bin/bash
# The whole suite on a busy machine (issue 22): `bash .ci/run` on a fresh clone, N times in a
# row, while `deepstart train --recipe cifar10-fast` trains in a loop beside it.
#
#   bash bench/suite_under_load.sh [RUNS] [WORKDIR]     # default 3 runs in /tmp/suite-load
#
# Each run clones this checkout's HEAD into WORKDIR/runN, next to a link to ../shared (the
# data), and logs to WORKDIR/runN.log; WORKDIR/summary.txt gets one line a run (commit, exit
# code, seconds, load, pytest's last line). The training job uses this checkout's .venv
# (`make test` or `make demo` creates it) and the CIFAR-10 JPEG archive in ../shared/data.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
work=${2:-/tmp/suite-load}
shared=$(cd "$here/../shared" && pwd)
if [ ! -x "$here/.venv/bin/python" ]; then
  echo "no $here/.venv: run make test (or make demo) here first" >&2
  exit 1
fi
mkdir -p "$work"
ln -sfn "$shared" "$work/shared"

load_job() {
  cd "$here" || exit 1
  while true; do
    .venv/bin/python -m deepstart train --recipe cifar10-fast --data folder \
      --data-dir "$shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz" --no-report \
      --progress none --out "$work/load-runs" >> "$work/load.log" 2>&1
    rm -rf "$work/load-runs"
  done
}
load_job &
load=$!
# the loop first (so it starts no other job), then the training it is waiting for
trap 'kill $load 2>/dev/null; pkill -f -- "--out $work/load-runs"; rm -rf "$work/load-runs"' EXIT

for i in $(seq 1 "$runs"); do
  rm -rf "$work/run$i"
  git clone -q "$here" "$work/run$i"
  commit=$(git -C "$work/run$i" rev-parse --short HEAD)
  start=$(date +%s)
  (cd "$work/run$i" && bash .ci/run > "$work/run$i.log" 2>&1)
  rc=$?
  echo "run $i ($commit): exit $rc in $(( $(date +%s) - start )) s, load" \
    "$(cut -d' ' -f1-3 /proc/loadavg): $(tail -1 "$work/run$i.log")" | tee -a "$work/summary.txt"
done
