# vidret: `make demo` (set up, train, index, evaluate, serve) and `make test` (set up, run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# The demo: a synthetic noisy dataset -> IMAE training -> embeddings -> FAISS index -> evaluation -> the API.
# The run reports query/gallery mAP each epoch, so the demo embeds with the final model (last.pt), not one picked
# on that split (best.pt).
DEMO ?= demo_data
DEMO_MODEL ?= tiny3d
DEMO_EPOCHS ?= 10
# T chosen on a validation split of training identities by `vidret bench noise` (see docs/results.md, "Does IMAE help?")
DEMO_IMAE_T ?= 2
DEMO_PORT ?= 8000
VIDRET := $(VENV)/bin/vidret

.PHONY: setup test lint bench bench-peers demo clean deploy-check
.PRECIOUS: $(DEMO)/%.npz

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[cpu,dev]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# docker compose for real: builds the CPU image with podman and runs the compose flow of docs/deployment.md end to end
# (root on Debian; it installs podman and docker-compose with apt). docs/deployment.md, "Docker compose".
deploy-check:
	bash docker/deploy_check.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# our figures; the scripts compare with a peer only where it is installed (make bench-peers installs them)
BENCH_SCRIPTS := decode loss evaluate search service_load train gpu_check

bench: setup
	for s in $(BENCH_SCRIPTS); do echo "== benchmarks/$$s.py"; $(PY) benchmarks/$$s.py || exit 1; done

# side by side with torchcodec, torchreid, autofaiss and cleanlab (docs/results.md). torchcodec needs
# FFmpeg's shared libraries: apt-get install libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4
# libavdevice59 libavfilter8. autofaiss pins numpy<2, so it gets a venv of its own (../peers/autofaiss).
bench-peers: setup
	$(PY) -m pip install -e '.[cpu,dev,bench]'
	$(PY) benchmarks/peers.py setup
	for s in decode evaluate rerank search audit_peers; do \
		$(PY) benchmarks/$$s.py --json benchmarks/results/peers/$$s.json || exit 1; done

$(DEMO)/dataset/synth.json: | $(STAMP)
	$(VIDRET) data synth $(DEMO)/dataset --identities 160 --cameras 4 --clips-per-camera 2 --frames 16 --size 64 \
		--noise 0.4 --seed 0

$(DEMO)/run/checkpoints/last.pt: $(DEMO)/dataset/synth.json
	$(VIDRET) train --train $(DEMO)/dataset/train.csv --val-query $(DEMO)/dataset/query.csv \
		--val-gallery $(DEMO)/dataset/gallery.csv --out $(DEMO)/run --resume --loss imae --imae-t $(DEMO_IMAE_T) \
		--model $(DEMO_MODEL) --frames 8 --size 48 --epochs $(DEMO_EPOCHS) --batch-size 32 --lr 1e-3 \
		--cache --device auto

$(DEMO)/%.npz: $(DEMO)/run/checkpoints/last.pt
	$(VIDRET) embed --checkpoint $< --manifest $(DEMO)/dataset/$*.csv --out $@

$(DEMO)/index/index.json: $(DEMO)/gallery.npz
	rm -rf $(DEMO)/index
	$(VIDRET) index build --embeddings $< --out $(DEMO)/index

demo: setup $(DEMO)/index/index.json $(DEMO)/query.npz
	$(VIDRET) evaluate --index $(DEMO)/index --queries $(DEMO)/query.npz --json $(DEMO)/evaluation.json
	@echo "serving http://127.0.0.1:$(DEMO_PORT)/ (API schema at /openapi.json); Ctrl-C to stop"
	$(VIDRET) serve --index $(DEMO)/index --checkpoint $(DEMO)/run/checkpoints/last.pt --port $(DEMO_PORT)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info $(DEMO)
