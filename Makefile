# Two commands matter:
#   make run   - set everything up on a fresh machine and run the exchange with a simulated market
#                (on the machine's PostgreSQL when it answers, else the embedded defaults)
#   make test  - set everything up and run every test against the real PostgreSQL and Redis
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-near-the-hour install migrate seed bench clean services browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

migrate: install
	$(BIN)/python manage.py migrate --noinput -v0

seed: migrate
	$(BIN)/python manage.py seed_demo

run: install
	HOST=$(HOST) PORT=$(PORT) bash scripts/run.sh

# The browser tests drive Debian's chromium (Playwright never downloads a browser of its own).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; } || echo "could not install chromium: browser tests will skip"

test: install browser
	DJANGO_SETTINGS_MODULE=config.settings.test $(BIN)/python -m pytest

# The same suite with every test starting two seconds before an hour boundary (libfaketime).
test-near-the-hour:
	bash scripts/test_near_the_hour.sh

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .hypothesis
