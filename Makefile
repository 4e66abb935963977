# Two entry points: `make report` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PRESET ?= cpu

.PHONY: report test test-heavy venv lint clean-venv

# The stamp is rebuilt whenever the package's dependencies change.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

# A second run in a week re-runs only the studies whose notebook, preset, code or data changed;
# FORCE=1 re-runs them all. WEEK=2026-W01 writes that ISO week instead of this one.
report: venv
	$(BIN)/vqalab report --preset $(PRESET) $(if $(FORCE),--force) $(if $(WEEK),--week $(WEEK))

# The suite in minutes; the lab-size checks (marker `heavy`) run apart, in CI after this.
test: venv
	$(BIN)/python -m pytest -q -m "not heavy"

test-heavy: venv
	$(BIN)/python -m pytest -q -m heavy

# ruff, then the layers of docs/ARCHITECTURE.md (import-linter contracts in pyproject.toml)
lint: venv
	$(BIN)/ruff check vqalab tests benchmarks
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)
