# Two entry points: `make run` (HTTP server on the demo model) and `make test`.
# Both install what is missing first: system packages, a virtualenv and the project.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INSTALLED := $(VENV)/.installed
HTTP_PORT ?= 8080

.PHONY: run test install system-deps lint demo-model punctuation-model fixtures bench

run: $(INSTALLED)
	SERVICE_MODE=$${SERVICE_MODE:-http} HTTP_PORT=$(HTTP_PORT) $(VENV)/bin/nemo-stt serve

test: system-deps $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(INSTALLED)

$(INSTALLED): pyproject.toml constraints.txt
	$(MAKE) system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev]'
	touch $(INSTALLED)

# espeak-ng synthesizes the training speech and the test fixtures; the service runs on jemalloc; the page's
# tests run in Debian's headless chromium.
system-deps:
	@command -v espeak-ng >/dev/null && ldconfig -p | grep -q libjemalloc.so.2 && command -v chromium >/dev/null || \
	    { apt-get update -q && apt-get install -y -q espeak-ng libjemalloc2 chromium; }

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .

# In stages: the encoder learns with CTC alone on clean speech (a hybrid loss from scratch stays stuck
# on blanks), then the RNNT decoder joins with the hybrid loss and augmented audio, then RNNT is
# weighed more at a lower learning rate, then more voices and narrowband audio come in, then utterances
# joined into recordings of up to five (long audio, such as long-file windows, then looks like training).
DEMO_TRAIN := $(PY) tools/demo_model/train.py --train-utterances 4000 --short-phrases 1000 --batch-seconds 100 \
    --eval-every 250
DEMO_MODEL := src/nemo_stt/assets/demo-en-fastconformer.nemo

demo-model: $(INSTALLED)
	$(DEMO_TRAIN) --out build/demo-ctc.nemo --steps 2000 --ctc-weight 1.0 --no-augment --no-specaug \
	    --lr 1e-3 --warmup 150
	$(DEMO_TRAIN) --out build/demo-hybrid.nemo --init build/demo-ctc.nemo --steps 1000 --no-specaug \
	    --lr 5e-4 --warmup 100
	$(DEMO_TRAIN) --out build/demo-rnnt.nemo --init build/demo-hybrid.nemo --steps 1000 --no-specaug \
	    --lr 3e-4 --warmup 50 --ctc-weight 0.3
	$(DEMO_TRAIN) --out build/demo-voices.nemo --init build/demo-rnnt.nemo --steps 1000 --no-specaug \
	    --lr 3e-4 --warmup 50 --ctc-weight 0.3 --voice-variants --narrowband 0.2
	$(DEMO_TRAIN) --out $(DEMO_MODEL) --init build/demo-voices.nemo --steps 1000 --no-specaug \
	    --lr 3e-4 --warmup 50 --ctc-weight 0.3 --voice-variants --narrowband 0.2 --joined 0.5

# A tiny BERT in recasepunc's layout on the demo grammar's sentences (minutes on 2 cores).
punctuation-model: $(INSTALLED)
	$(PY) tools/punctuation_model/train.py --out src/nemo_stt/assets/demo-en-punctuation --steps 3000

fixtures: $(INSTALLED)
	$(PY) tools/make_fixtures.py tests/fixtures

# Service overhead over the raw model, on the demo model and on a random-weight model of a real
# FastConformer's sizes (built once into build/).
BENCH_MODEL := build/bench-medium.nemo

$(BENCH_MODEL): $(INSTALLED)
	$(PY) benchmarks/make_benchmark_model.py --out $(BENCH_MODEL)

bench: $(INSTALLED) $(BENCH_MODEL)
	$(PY) benchmarks/service_overhead.py
	$(PY) benchmarks/service_overhead.py --model $(BENCH_MODEL) --architecture hybrid_bpe_ctc
