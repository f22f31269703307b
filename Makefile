# make demo   install what is missing, build the CLI, and run a small network end to end
# make test   install what is missing, build everything, run every suite
# make bench  build and run the benchmarks (they print figures)
# make tsan   build the integration suite with ThreadSanitizer and run it: zero reports
BUILD ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all deps configure build demo test amalgamate check-amalgamation bench format clean tsan

all: build

deps:
	@bash tools/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

demo:
	@BUILD=$(BUILD) BUILD_TYPE=$(BUILD_TYPE) JOBS=$(JOBS) bash tools/demo.sh

check-amalgamation:
	python3 tools/amalgamate.py --check

amalgamate:
	python3 tools/amalgamate.py

test: deps check-amalgamation build
	cd $(BUILD) && ctest --output-on-failure --timeout 600 -j $(JOBS)

tsan:
	JOBS=$(JOBS) bash tools/tsan.sh $(BUILD)-tsan

bench: build
	@for b in $(BUILD)/bench/bench_*; do [ -x "$$b" ] && { echo "== $$b"; "$$b"; }; done

format:
	clang-format -i p2prc.hpp p2prc/*.hpp p2prc/frp/*.hpp tests/*/*.cpp examples/*.cpp bench/*.cpp

clean:
	rm -rf $(BUILD)
