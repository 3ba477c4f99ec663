PY ?= python3

.PHONY: check lint types test bench bench-quick

check: lint types test

lint:
	$(PY) -m ruff check unimeter tests $(wildcard bench)
	$(PY) -m ruff format --check unimeter tests $(wildcard bench)

types:
	$(PY) -m mypy

test:
	$(PY) -m pytest

bench:
	$(PY) -m bench

bench-quick:
	$(PY) -m bench --quick
