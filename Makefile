# authproxy - `make run` and `make test` install what is missing, build and run.
CC      ?= gcc
PKGS    := libuv libcjson libcurl openssl liburing
LLHTTP  := /usr/share/llhttp
BUILD   := build
WARN    := -Wall -Wextra -Werror
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -DLLHTTP_STRICT_MODE=1 -g $(WARN) -I/usr/share/include/llhttp -Isrc \
              $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread
OPT     := -O2
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

SRCS    := $(filter-out src/main.c,$(wildcard src/*.c))
HDRS    := $(wildcard src/*.h)
LLSRCS  := $(LLHTTP)/api.c $(LLHTTP)/http.c $(LLHTTP)/llhttp.c
UNIT    := $(wildcard tests/unit/*.c)

# Debian packages: build, tests (curl, openssl CLI, python3), benchmark.
DEPS_BUILD := gcc make pkg-config libuv1-dev node-llhttp libcjson-dev libcurl4-openssl-dev libssl-dev liburing-dev
DEPS_TEST  := curl openssl python3 ca-certificates procps
DEPS_BENCH := nginx-light haproxy wrk gnuplot-nox util-linux

.PHONY: all run test unit asan deps deps-bench bench bench-smoke stress clean format

all: $(BUILD)/authproxy

# Install only what is missing; apt-get update runs only when something is.
deps:
	@missing=""; for p in $(DEPS_BUILD) $(DEPS_TEST); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; fi

deps-bench: deps
	@missing=""; for p in $(DEPS_BENCH); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; fi

# llhttp's generated C is compiled as shipped, without our warning flags. It scans header names
# and values 16 bytes at a time with SSE4.2 when the compiler may use it: on when the CPU that
# builds (and, with `make run`, runs) the proxy has it; LLHTTP_SIMD= turns it off.
LLHTTP_SIMD ?= $(if $(shell grep -qw sse4_2 /proc/cpuinfo 2>/dev/null && echo y),-msse4.2)
$(BUILD)/%/llhttp.a: $(LLSRCS) | deps
	@mkdir -p $(BUILD)/$*/ll
	@echo "CC llhttp ($*, strict $(LLHTTP_SIMD))"; cd $(BUILD)/$*/ll && $(CC) -c -std=c11 -DLLHTTP_STRICT_MODE=1 $(LLHTTP_SIMD) $(if $(filter asan,$*),$(SAN) -O1,$(OPT)) -g \
	  -I/usr/share/include/llhttp $(LLSRCS)
	@ar rcs $@ $(BUILD)/$*/ll/*.o

$(BUILD)/rel/%.o: src/%.c $(HDRS) | deps
	@mkdir -p $(dir $@)
	@echo "CC $<"; $(CC) $(CFLAGS_BASE) $(OPT) -c $< -o $@

$(BUILD)/asan/%.o: src/%.c $(HDRS) | deps
	@mkdir -p $(dir $@)
	@echo "CC (asan) $<"; $(CC) $(CFLAGS_BASE) $(SAN) -O1 -c $< -o $@

OBJS_REL  = $(patsubst src/%.c,$(BUILD)/rel/%.o,$(SRCS))
OBJS_ASAN = $(patsubst src/%.c,$(BUILD)/asan/%.o,$(SRCS))

$(BUILD)/authproxy: $(OBJS_REL) $(BUILD)/rel/main.o $(BUILD)/rel/llhttp.a
	@echo "LD $@"; $(CC) -o $@ $^ $(LDLIBS)

$(BUILD)/authproxy-asan: $(OBJS_ASAN) $(BUILD)/asan/main.o $(BUILD)/asan/llhttp.a
	@echo "LD $@"; $(CC) $(SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/unit-tests: $(UNIT) tests/unit/unit.h $(SRCS) $(HDRS) $(BUILD)/asan/llhttp.a | deps
	@echo "LD $@"; $(CC) $(CFLAGS_BASE) $(SAN) -O1 -Itests/unit -o $@ $(UNIT) $(SRCS) $(BUILD)/asan/llhttp.a $(LDLIBS)

# LD_PRELOAD fault injection for the e2e tests (slow or failing name resolution, connects
# that fail at once): tests/faults/faults.c
$(BUILD)/libfaults.so: tests/faults/faults.c | deps
	@mkdir -p $(BUILD)
	@echo "CC $<"; $(CC) -std=c11 -D_GNU_SOURCE $(WARN) -O1 -g -shared -fPIC -o $@ $< -ldl

asan: $(BUILD)/authproxy-asan
unit: $(BUILD)/unit-tests
	$(BUILD)/unit-tests

test: deps deps-bench $(BUILD)/authproxy $(BUILD)/authproxy-asan $(BUILD)/unit-tests $(BUILD)/libfaults.so
	python3 tests/run.py

# The differential data-path test with random seeds, for STRESS_MINUTES (default 10); prints
# the seed of any failure (replay: AUTHPROXY_DIFF_SEED=N python3 tests/run.py -k test_differential)
STRESS_MINUTES ?= 10
stress: deps $(BUILD)/authproxy $(BUILD)/authproxy-asan $(BUILD)/libfaults.so
	python3 tests/stress.py --no-build --minutes $(STRESS_MINUTES)

run: deps $(BUILD)/authproxy
	python3 tests/demo/run_demo.py

bench: deps-bench $(BUILD)/authproxy
	bench/run.sh

bench-smoke: deps-bench $(BUILD)/authproxy
	bench/run.sh --smoke

format:
	clang-format -i src/*.c src/*.h tests/unit/*.c tests/unit/*.h

clean:
	rm -rf $(BUILD)
