# The README's commands. Everything is set up from nothing on first use:
# a virtual environment, the package (Cython core + gRPC stubs), the demo world.
#
#   make serve            serve the demo world: gRPC on 127.0.0.1:50051, OpenRTB on :8080
#   make serve GPU=1      same, with onnxruntime-gpu in a separate venv (.venv-gpu)
#   make test             run the test suite
#   make bench            decision-core benchmark (Cython vs Python reference)
#   make bench-all        every benchmark in benchmarks/ (minutes; see docs/performance.md)
#   make bench-peers      adbid against the naive, Triton and Ray Serve peers (own venvs)
#   make debug            rebuild the core with bounds checks and line tracing (make proto undoes it)
#   make annotate         cython -a report of the decision loop (ext/decision.html)
#   make lint             ruff, mypy, cython-lint, and the compiled modules' stubs
#   make proto            regenerate the gRPC stubs (and rebuild the core)
#   make clean            remove everything generated

PYTHON ?= python3
GPU ?= 0
ifeq ($(GPU),1)
  VENV ?= .venv-gpu
  RUNTIME := gpu
else
  VENV ?= .venv
  RUNTIME := cpu
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adbid-installed
SOURCES := pyproject.toml setup.py $(wildcard ext/*.pyx ext/*.pxd proto/adbid/v1/*.proto)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup serve test bench bench-all bench-peers debug annotate proto lint clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; adbid needs Python >= 3.11" >&2; exit 1; }
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(RUNTIME),test,bench]'
	@touch $@

serve: $(STAMP)
	$(VENV)/bin/adbid serve $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_decision.py $(ARGS)

# The server-level benchmarks start their own servers; each writes JSON under
# benchmarks/results/ (and the pacing one a plot).
bench-all: $(STAMP)
	$(PY) benchmarks/bench_decision.py
	$(PY) benchmarks/compute_limit.py
	$(PY) benchmarks/grpc_floor.py
	$(PY) benchmarks/grpc_floor.py --rpc stream
	$(PY) benchmarks/overload.py --batch 64 --start-rate 40
	$(PY) benchmarks/peers.py --batch 64 --target-p99-ms 20
	$(PY) benchmarks/pacing_day.py
	$(PY) benchmarks/providers.py
	$(PY) benchmarks/bench_ledger_store.py
	$(PY) benchmarks/openrtb.py

# Back to the optimised build: make proto.
# Peers for benchmarks/peers.py, in their own venv (never installed by make test).
# Ray listens on every interface, so the whole comparison runs in a network
# namespace that has only loopback.
PEERS_VENV := .venv-peers
# nvidia-pytriton needs numpy < 2: Triton gets a venv of its own.
TRITON_VENV := .venv-triton
PEERS_STAMP := $(PEERS_VENV)/.adbid-peers-installed
$(PEERS_STAMP): $(SOURCES) benchmarks/peers/requirements-ray.txt benchmarks/peers/requirements-triton-front.txt benchmarks/peers/requirements-triton.txt
	@test -d $(PEERS_VENV) || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -e '.[cpu]' -r benchmarks/peers/requirements-ray.txt -r benchmarks/peers/requirements-triton-front.txt
	@test -d $(TRITON_VENV) || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet -r benchmarks/peers/requirements-triton.txt
	@touch $@

bench-peers: $(PEERS_STAMP) $(STAMP)
	$(PY) -c "from adbid.config import default_world_dir as d; from adbid.world_command import ensure_world as e; e(d(), 42)"
	unshare --net sh -c 'ip link set lo up && $(PEERS_VENV)/bin/python benchmarks/peers.py --batch 64 --target-p99-ms 20 --triton --ray $(ARGS)'

debug: $(STAMP)
	rm -f ext/*.c
	ADBID_DEBUG=1 $(PY) -m pip install --quiet --no-deps -e .

annotate: $(STAMP)
	$(VENV)/bin/cython -a -3 ext/decision.pyx -o ext/decision.c && echo "wrote ext/decision.html"

# ruff (rules in pyproject.toml), mypy on the package, cython-lint on the compiled core,
# and the stubs of the compiled modules checked against what they export.
lint: $(STAMP)
	$(PY) -m ruff check adbid tests benchmarks
	$(PY) -m mypy
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/cython-lint --max-line-length 100 ext/*.pyx ext/decision_types.pxd
	$(PY) -m mypy.stubtest adbid._decision adbid._wire adbid._fpmode adbid._idtable adbid._listscan adbid._fingerprint --allowlist .stubtest-allowlist

# Rebuilds the package in place (stubs and the Cython core) in pip's isolated build env,
# which has the pinned grpcio-tools and Cython.
proto: $(STAMP)
	rm -f ext/*.c
	$(PY) -m pip install --quiet --no-deps -e .

clean:
	rm -rf build *.egg-info adbid/*.so adbid/v1/*_pb2*.py adbid/v1/*_pb2.pyi ext/*.c ext/*.html ext/decision_reasons.pxd .venv .venv-gpu .venv-peers .venv-triton .pytest_cache .hypothesis
