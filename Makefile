# make demo: the whole path on the bundled digits dataset, no internet, no hardware.
# make test: the test suite, with the real converter, interpreters, compilers and ptys.
# Both create .venv on their own; system tools come from Debian (apt-get, as root or via sudo).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= out
SYSTEM_PACKAGES := g++ gcc-arm-none-eabi libnewlib-arm-none-eabi binutils-arm-none-eabi socat shellcheck \
                   openssh-server openssh-client xxd mosquitto openssl chromium chromium-driver
SYSTEM_TOOLS    := g++ arm-none-eabi-g++ arm-none-eabi-size socat shellcheck sshd ssh ssh-keygen xxd \
                   mosquitto mosquitto_passwd openssl chromium chromedriver

.PHONY: all venv system-deps firmware-deps tflm-tree pi-deps demo lint test build-test pi-test firmware-test bench bench-ucr clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[build,device,dev]'
	touch $@

venv: $(STAMP)

# Compilers and tools the tests run for real. Skips apt when every tool is already there.
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do \
	  command -v $$t >/dev/null 2>&1 || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages for:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES) \
	  || { echo "could not install$$missing: run 'sudo apt-get install $(SYSTEM_PACKAGES)'"; exit 1; }; \
	fi

# Building the firmware with TFLM: C++ headers for arm-none-eabi-g++, QEMU's Arm boards for the Cortex-M runs.
FIRMWARE_PACKAGES := libstdc++-arm-none-eabi-newlib qemu-system-arm
firmware-deps:
	@if ! command -v qemu-system-arm >/dev/null || [ ! -d /usr/include/newlib/c++ ]; then \
	  echo "installing system packages: $(FIRMWARE_PACKAGES)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $(FIRMWARE_PACKAGES) \
	  || { echo "could not install them: run 'sudo apt-get install $(FIRMWARE_PACKAGES)'"; exit 1; }; \
	fi

# A standalone TFLM tree for --tflm-tree, made by TFLM's own create_tflm_tree.py from a tflite-micro
# checkout (it downloads flatbuffers, gemmlowp, ruy, kissfft, CMSIS and CMSIS-NN: needs internet):
#   make tflm-tree TFLM_SRC=~/src/tflite-micro TFLM_TREE_OUT=~/tflm-tree
# The reference tree, then the CMSIS-NN kernels and CMSIS headers merged in from a Cortex-M run.
TFLM_TREE_OUT ?= tflm-tree
tflm-tree: venv
	@[ -n "$(TFLM_SRC)" ] && [ -f "$(TFLM_SRC)/tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py" ] \
	  || { echo "give TFLM_SRC=a tflite-micro checkout (git clone https://github.com/tensorflow/tflite-micro)"; exit 1; }
	$(BIN)/python -m pip install -q Pillow numpy
	rm -rf "$(TFLM_TREE_OUT)" "$(TFLM_TREE_OUT).cmsis"
	cd "$(TFLM_SRC)" && $(abspath $(BIN))/python tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py \
	  "$(abspath $(TFLM_TREE_OUT))"
	cd "$(TFLM_SRC)" && $(abspath $(BIN))/python tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py \
	  --makefile_options="TARGET=cortex_m_generic TARGET_ARCH=cortex-m4+fp OPTIMIZED_KERNEL_DIR=cmsis_nn" \
	  "$(abspath $(TFLM_TREE_OUT)).cmsis"
	cp -r "$(TFLM_TREE_OUT).cmsis/tensorflow/lite/micro/kernels/cmsis_nn" "$(TFLM_TREE_OUT)/tensorflow/lite/micro/kernels/"
	cp -r "$(TFLM_TREE_OUT).cmsis/third_party/cmsis_nn" "$(TFLM_TREE_OUT)/third_party/"
	mkdir -p "$(TFLM_TREE_OUT)/third_party/cmsis/CMSIS/Core"
	cp -r "$(TFLM_TREE_OUT).cmsis/third_party/cmsis/CMSIS/Core/Include" "$(TFLM_TREE_OUT)/third_party/cmsis/CMSIS/Core/"
	rm -rf "$(TFLM_TREE_OUT).cmsis"
	@echo "TFLM tree in $(TFLM_TREE_OUT): pass --tflm-tree $(TFLM_TREE_OUT) or set TFLM_TREE"

# The emulated Raspberry Pi's host side: debootstrap, qemu-user-static with binfmt_misc.
PI_PACKAGES := debootstrap qemu-user-static binfmt-support
pi-deps:
	@if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then \
	  echo "installing system packages: $(PI_PACKAGES)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $(PI_PACKAGES) \
	  || { echo "could not install them: run 'sudo apt-get install $(PI_PACKAGES)'"; exit 1; }; \
	fi

demo: venv system-deps
	$(BIN)/python -m build_model --dataset digits --out $(OUT)/digits --force
	$(BIN)/python -m firmware_export $(OUT)/digits --out $(OUT)/digits_firmware --target nrf52840 --force
	$(BIN)/python -m monitor.demo $(OUT)/digits

# ruff with the rule set in pyproject.toml ([tool.ruff.lint] says why each rule is there).
lint: venv
	$(BIN)/ruff check .

# The suite without the tests marked slow (each converts a model to every variant: about 4 minutes
# together), which 'make build-test' runs; CI runs both.
test: venv system-deps
	$(BIN)/python -m pytest -q -m "not slow"

build-test: venv system-deps
	$(BIN)/python -m pytest -q -m slow

# The generated firmware built by real TFLM (the tree in ../shared, or TFLM_TREE) and run on the host.
# The first run compiles TFLM's runtime and the kernels the tests' models register, per target: the
# whole run takes about 12 minutes on 2 cores from an empty ~/.cache/tinysense-tflm, about 6 cached.
firmware-test: venv system-deps firmware-deps
	TINYSENSE_FIRMWARE_TEST=1 $(BIN)/python -m pytest -q tests/firmware

# deploy.sh to an emulated Pi (bookworm arm64 under qemu-user, rootfs cached in ~/.cache/tinysense-pi):
# about 15 minutes from scratch, a few minutes cached. Needs root (chroot, mount namespaces).
pi-test: venv system-deps pi-deps
	TINYSENSE_PI_TEST=1 $(BIN)/python -m pytest -q -s tests/pi

# Every figure in the closing notes; rerun any time (a few minutes, plus --soak if you add it).
bench: venv system-deps bench-ucr
	$(BIN)/python bench/build_bench.py
	$(BIN)/python -m build_model --dataset digits --out $(OUT)/digits --force -q
	$(BIN)/python bench/firmware_bench.py $(OUT)/digits
	$(BIN)/python bench/device_bench.py $(OUT)/digits
	$(BIN)/python bench/dashboard_bench.py $(OUT)/digits
	$(BIN)/python bench/capture_bench.py $(OUT)/digits

# Every sensor --arch on the UCR/UEA sets aeon ships, against published FCN/ResNet: the default arch
# as the mean of three seeds (about 11 min), the others one seed each (about 7 min).
bench-ucr: venv
	$(BIN)/python bench/ucr_bench.py --archs fcn --seeds 3
	$(BIN)/python bench/ucr_bench.py --archs ds_fcn,sensor_cnn --seeds 1

clean:
	rm -rf $(OUT) .pytest_cache
