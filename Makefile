# dbdl — the two commands of the README:
#   make demo   create .venv, install dbdl, run the end-to-end demo on embedded DuckDB
#   make test   install everything (incl. the PostgreSQL server packages and a JRE for Spark) and run
#               the whole suite
# and: make bench (benchmarks into docs/bench/), make clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned here: on these machines that exact release is a CPU wheel on local disk, while an
# unpinned torch pulls a multi-GB CUDA build. pyproject.toml only gives a range.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.dbdl-installed

PG_PACKAGES ?= postgresql-15 postgresql-plpython3-15 postgresql-server-dev-15
PG_CONFIG   ?= pg_config

JRE_PACKAGES ?= default-jre-headless

.PHONY: install postgres-packages java native demo lint test test-spark-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

# $(call apt_install,TARGET,PACKAGES,WHAT): apt-get install PACKAGES as root, or through sudo; where
# neither can, or apt-get fails, say so: WHAT is then skipped
apt_install = \
	if [ "$$(id -u)" = 0 ]; then \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(2); } \
		|| echo "$(1): WARNING: apt-get could not install $(2); $(3) will be skipped"; \
	elif command -v sudo >/dev/null 2>&1; then \
		{ sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y $(2); } \
		|| echo "$(1): WARNING: apt-get could not install $(2); $(3) will be skipped"; \
	else \
		echo "$(1): $(2) not installed, and we are neither root nor have sudo:" \
		     "install them to run $(3) (they will be skipped)"; \
	fi

# the PostgreSQL server the test suite starts for itself (tests/pgserver.py): install the Debian
# packages if missing (as root, or through sudo); otherwise say so, and its tests are skipped
postgres-packages:
	@if [ "$$(dpkg -s $(PG_PACKAGES) 2>/dev/null | grep -c '^Status: install ok installed')" != $(words $(PG_PACKAGES)) ]; then \
		$(call apt_install,postgres-packages,$(PG_PACKAGES),the PostgreSQL tests); \
	fi

# the Java runtime Spark runs on (its tests start a local-mode SparkContext, tests/conftest.py): Java 17
# or newer, else Debian's default JRE (as root, or through sudo); otherwise say so, and the Spark
# tests are skipped (CI sets DBDL_REQUIRE_SPARK=1, which fails them instead)
java:
	@version=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	if [ -z "$$version" ] || [ "$$version" -lt 17 ]; then \
		$(call apt_install,java,$(JRE_PACKAGES),the Spark tests); \
	fi

# predict_into's C helper (native/postgres, docs/postgres.md#the-c-helper): built in place with PGXS
# (postgresql-server-dev-15), no root needed; `dbdl migrate` run as a superuser creates its functions
# from native/postgres/dbdl_native.so. Without PGXS it is skipped and predict_into takes its
# row-batch path, which gives the same values.
native: postgres-packages
	@if command -v $(PG_CONFIG) >/dev/null 2>&1 && [ -f "$$($(PG_CONFIG) --pgxs 2>/dev/null)" ]; then \
		$(MAKE) --no-print-directory -C native/postgres PG_CONFIG=$(PG_CONFIG) with_llvm=no; \
	else \
		echo "native: PGXS not found ($(PG_CONFIG) --pgxs; Debian: postgresql-server-dev-15): the C helper" \
		     "is not built, and predict_into takes its row-batch path"; \
	fi

demo: install
	$(VENV)/bin/dbdl demo

# the layers stated in pyproject.toml ([tool.importlinter]), and no import cycle at all (counting
# function-local and TYPE_CHECKING imports too: tools/import_cycles.py)
lint: install
	$(VENV)/bin/lint-imports --no-cache
	$(PY) tools/import_cycles.py

# the suite in TEST_WORKERS processes (pytest-xdist), a test file to a process (module fixtures built
# once); TEST_WORKERS=0 runs it in this process
TEST_WORKERS ?= auto
test: install postgres-packages native java lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# every backend-parametrized test over Spark too (make test runs Spark on the behavioural suite and
# its own suites: tests/conftest.py, SPARK_MODULES)
test-spark-all: install postgres-packages native java lint
	DBDL_SPARK_ALL=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	rm -f native/postgres/dbdl_native.o native/postgres/dbdl_native.so native/postgres/dbdl_native.bc
