# django-perfkit: the commands in the README.
#   make demo   serve the demo news site on http://127.0.0.1:8000
#   make test   run the whole suite against PostgreSQL and Redis on localhost
#   make lint / make docs / make bench / make tox-ci / make screenshots
#   make budgets  record the demo tests' query budgets (perf-budgets.json) again

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: install services demo test budgets lint docs screenshots bench bench-instructions tox-ci clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls when pyproject.toml changes.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(PIP_QUIET) --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install $(PIP_QUIET) -e ".[dev,docs]" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import django, django_redis, pytest_django, model_bakery, psycopg, sphinx"
	touch $@

install: $(INSTALLED)

services:
	@scripts/ensure-services.sh

demo: install
	@scripts/ensure-services.sh --optional
	$(BIN)/python testproject/manage.py prepare_db
	$(BIN)/python testproject/manage.py migrate --noinput
	$(BIN)/python testproject/manage.py seed --if-empty
	@echo ""
	@echo "perfkit demo on http://127.0.0.1:8000  (Ctrl-C stops it)"
	@echo "  /                    home page"
	@echo "  /articles/           article list (optimised)"
	@echo "  /articles/naive/     the same list with N+1 queries"
	@echo "  /api/articles/       JSON API      /api/articles/naive/   its N+1 twin"
	@echo "  /search/?q=the       search        /login/   demo / demo-password"
	@echo "  /comments/?author=Ada+L.   a commenter's page (indexed)   /comments/naive/?author=Ada+L.   its unindexed twin"
	@echo "  curl -i http://127.0.0.1:8000/articles/ | grep Server-Timing"
	@echo ""
	PERFKIT_DEMO_QUIET=1 $(BIN)/python testproject/manage.py runserver 127.0.0.1:8000

# The second run checks the demo site's query budgets (perf-budgets.json):
# a test whose query count rose fails. `make budgets` records them again.
test: install services
	@scripts/ensure-browser.sh
	PERFKIT_REQUIRE_BROWSER=1 $(BIN)/pytest
	PERFKIT_REQUIRE_BROWSER=1 $(BIN)/pytest tests/test_demo_site.py -q --perfkit-budgets=perf-budgets.json --perfkit-nplusone=fail

budgets: install services
	$(BIN)/pytest tests/test_demo_site.py -q --perfkit-budgets=perf-budgets.json --perfkit-record

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: install
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

# The panel's screenshots in the docs (docs/_static/panel/): a real scene on a
# private PostgreSQL and Redis, photographed in Chromium.
screenshots: install
	@scripts/ensure-browser.sh
	$(BIN)/python scripts/panel_screenshots.py

# bench/requests.py drives gunicorn with wrk (Debian's package): installed here
# when missing; without it that one section says "Not run".
bench: install services
	@command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null 2>&1 || echo "bench: could not install wrk"
	$(BIN)/python bench/run.py

# Instruction counts under callgrind (repeatable on a noisy machine, but slow:
# ~30 min): the demo suite with and without the pytest plugin, and the cost of
# one request. Kept in bench/results/, which `make bench` puts in the docs.
bench-instructions: install services
	@command -v valgrind >/dev/null || apt-get install -y -q valgrind >/dev/null 2>&1 || echo "bench: could not install valgrind"
	$(BIN)/python bench/suite_instructions.py
	$(BIN)/python bench/request_instructions.py

# The tox envs CI runs: Django 6.1 on Python 3.12 (PostgreSQL), and the SQLite one.
# pyenv's interpreters are put on PATH so tox finds python3.12.
tox-ci: install services
	PATH="$$PATH:$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.*/bin 2>/dev/null | tr '\n' ':')" \
	    $(BIN)/tox run -e py312-dj61,py312-dj61-sqlite

clean:
	rm -rf $(VENV) .tox docs/_build .pytest_cache .mypy_cache .ruff_cache
