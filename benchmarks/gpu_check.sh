#!/usr/bin/env bash
# The GPU checks in one go, on a host with a CUDA GPU and onnxruntime-gpu importable
# (docs/performance.md, "On a GPU"): build and install in place, the demo world, the
# scoring and server tests, benchmarks/providers.py (scoring alone on each provider and
# --gpu-io), and benchmarks/overload.py with --workers over five eighths of the host's
# cores and the load generator on the rest, with --gpu-io graph and plain.
#
#   benchmarks/gpu_check.sh [OUTDIR]     (default benchmarks/results/gpu)
#
# Needs no network: `pip install --no-build-isolation --no-deps -e .` uses what is there.
set -u -o pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
ncpu=$(nproc)
half=$((ncpu / 2))
step() { echo "== $(date +%T) $*"; }

step "host"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$out/gpu.txt"
$py -c "import onnxruntime as o, sys; print(sys.version.split()[0], 'onnxruntime', o.__version__, o.get_available_providers())" | tee -a "$out/gpu.txt"

step "install"
$py -m pip install -q --no-build-isolation --no-deps -e . > "$out/install.log" 2>&1 \
  || { tail -30 "$out/install.log"; exit 1; }

step "demo world"
$py -m adbid.cli demo-world > "$out/world.log" 2>&1 || { tail -30 "$out/world.log"; exit 1; }

step "tests"
$py -m pytest -q -p no:cacheprovider tests/test_scoring.py \
  2>&1 | tail -15 | tee "$out/tests.log"

step "providers: scoring alone"
timeout 120 $py benchmarks/providers.py --batches 16,64,256,1024 --repeats 200 --no-server \
  2>&1 | tee "$out/providers.log"
cp benchmarks/results/providers.json "$out/" 2>/dev/null

srv=$((ncpu * 5 / 8))
for io in graph plain; do
  step "overload --gpu-io $io, $srv workers on cores 0-$((srv - 1)), clients on $srv-$((ncpu - 1))"
  timeout 150 $py benchmarks/overload.py --batch 256 --deadline-ms 20 --workers "$srv" \
    --server-cpus "0-$((srv - 1))" --client-cpus "$srv-$((ncpu - 1))" --clients $((ncpu - srv)) \
    --start-rate 250 --duration-s 5 --serve-args "--gpu-io $io" 2>&1 | tee "$out/overload-$io.log"
  cp benchmarks/results/overload.json "$out/overload-$io.json" 2>/dev/null
done
step "done"
