"""Every piece of hardware firmware_export knows, in one table: the cores it builds for (and runs under
QEMU), and the boards: their budgets and clock for ``--target``, and how their own tools build a
project for ``--layout --board``. Export, build, boards, the budgets and the latency estimate all
read it; a clock or a core is written once.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ExportError

MiB = 1024 * 1024


@dataclass(frozen=True)
class Core:
    """Where a build runs: the host, or a Cortex-M core on one of QEMU's Arm boards."""

    name: str
    note: str
    cpu_flags: tuple[str, ...] = ()
    machine: str | None = None  # qemu-system-arm -M
    flash: tuple[int, int] = (0, 0)  # origin, length (bytes)
    ram: tuple[int, int] = (0, 0)
    board: str = ""  # the board (a BOARDS key) whose clock the latency estimate uses for this core

    @property
    def is_mcu(self) -> bool:
        return self.machine is not None

    @property
    def default_kernels(self) -> str:
        return "cmsis-nn" if self.is_mcu else "reference"


@dataclass(frozen=True)
class Project:
    """How a board's own tools build a project: arduino-cli, PlatformIO, and the TFLM library to install."""

    name: str  # --board
    fqbn: str  # arduino-cli
    pio_platform: str
    pio_board: str
    tflm_library: str
    note: str


@dataclass(frozen=True)
class Board:
    """A board: its core, clock, RAM and flash (the --target budgets), and its project tools."""

    name: str  # --target
    note: str
    cpu: str  # the -mcpu of the Arm compile that measures flash
    clock_mhz: int
    ram_kb: int | None = None  # None: no budget preset (a board named only for its clock)
    flash_kb: int | None = None
    stands_in: bool = False  # the Arm core only stands in for the compile (not this board's instruction set)
    project: Project | None = None

    @property
    def is_preset(self) -> bool:
        return self.ram_kb is not None and self.flash_kb is not None


CORES = {c.name: c for c in (
    Core("host", "this machine's g++ (64-bit pointers)"),
    Core("cortex-m4", "Arm MPS2 AN386 (Cortex-M4F) under qemu-system-arm",
         ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
         "mps2-an386", (0x00000000, 4 * MiB), (0x20000000, 4 * MiB), "nrf52840"),
    Core("cortex-m7", "Arm MPS2 AN500 (Cortex-M7, double-precision FPU) under qemu-system-arm",
         ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
         "mps2-an500", (0x00000000, 4 * MiB), (0x20000000, 4 * MiB), "stm32f746"),
    # the SSE-300's 512 KiB ITCM stands in for flash and its 512 KiB DTCM for RAM
    Core("cortex-m55", "Arm MPS3 AN547 (Cortex-M55 with Helium/MVE) under qemu-system-arm",
         ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
         "mps3-an547", (0x00000000, 512 * 1024), (0x20000000, 512 * 1024), "alif-e7"),
)}

BOARDS = {b.name: b for b in (
    Board("nrf52840", "Nordic nRF52840 (Arduino Nano 33 BLE): Cortex-M4F", "cortex-m4", 64, 256, 1024,
          project=Project("nano33ble", "arduino:mbed_nano:nano33ble", "nordicnrf52", "nano33ble",
                          "Arduino_TensorFlowLite (tensorflow/tflite-micro-arduino-examples)",
                          "Arduino Nano 33 BLE (Sense)")),
    Board("esp32s3", "ESP32-S3 with 8 MB flash: Xtensa LX7 (ARM compile stands in)", "cortex-m4", 240, 512, 8192,
          stands_in=True,
          project=Project("esp32s3", "esp32:esp32:esp32s3", "espressif32", "esp32-s3-devkitc-1",
                          "TensorFlowLite_ESP32 (or esp-tflite-micro under ESP-IDF)", "ESP32-S3 DevKitC-1")),
    Board("rp2040", "Raspberry Pi Pico (RP2040): Cortex-M0+", "cortex-m0plus", 133, 264, 2048,
          project=Project("pico", "rp2040:rp2040:rpipico", "raspberrypi", "pico",
                          "a TFLM build for RP2040 (raspberrypi/pico-tflmicro)", "Raspberry Pi Pico")),
    Board("stm32f746", "STM32F746 Discovery: Cortex-M7", "cortex-m7", 216, 320, 1024),
    Board("alif-e7", "Alif Ensemble E7 high-performance core: Cortex-M55", "cortex-m55", 400),
)}

PRESETS = {name: b for name, b in BOARDS.items() if b.is_preset}  # --target
PROJECTS = {b.project.name: b for b in BOARDS.values() if b.project}  # --board, with --layout


def core(name: str) -> Core:
    if name not in CORES:
        raise ExportError(f"unknown build target {name!r}: choose from {', '.join(CORES)}")
    return CORES[name]


def preset(name: str) -> Board:
    if name not in PRESETS:
        raise ExportError(f"unknown target {name!r}: choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def project_board(name: str) -> Board:
    if name not in PROJECTS:
        raise ExportError(f"unknown board {name!r}: use {', '.join(PROJECTS)}")
    return PROJECTS[name]


def reference_board(c: Core) -> Board:
    """The common board with this core whose clock the latency estimate uses."""
    return BOARDS[c.board]
