# The two commands of the README's first screen are `make demo` and `make test`.
PYTHON ?= python3
export KUBELOOP_CACHE ?= $(HOME)/.cache/kubeloop

.PHONY: setup demo test lint unit integration crds bench

setup:            ## install Python deps and build the local control plane (cached)
	hack/setup

demo: setup       ## start a local cluster, run the operator, apply the examples, show the loop
	hack/demo

test: setup lint  ## everything CI runs: lint, types, import contracts, then all tests
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check operator tests hack
	$(PYTHON) -m mypy
	lint-imports

unit:
	$(PYTHON) -m pytest -q tests/unit

integration:
	$(PYTHON) -m pytest -q tests/integration

crds:             ## regenerate crds/ and the chart's copy from the pydantic models
	$(PYTHON) -m kubeloop.api.crdgen --write
	$(PYTHON) -m kubeloop.api.docgen --write
