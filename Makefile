# Every target delegates to a script in scripts/ (the one place the logic lives).
# Pass pytest arguments with ARGS, e.g. make test ARGS="-k delays -x".

ARGS ?=

.PHONY: setup demo test check bench docs docs-serve

setup:  ## create .venv and install aqueue with the dev tools
	scripts/setup

demo:  ## run the end-to-end demo against the local broker
	scripts/demo

test:  ## the test command: services, setup, the whole suite against RabbitMQ
	scripts/test $(ARGS)

check:  ## everything CI runs: format, lint, types, import contracts, docs, tests + coverage
	scripts/check $(ARGS)

bench:  ## the benchmarks (needs the services)
	scripts/ensure-services
	scripts/setup
	.venv/bin/python -m benchmarks $(ARGS)

docs:  ## build the documentation strictly into site/
	scripts/setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

docs-serve:  ## serve the documentation with live reload on http://127.0.0.1:8000
	scripts/setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs serve
