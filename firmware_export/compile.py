"""Compile the generated sources for real: g++ on the host, arm-none-eabi-g++ for a Cortex-M.

The host build writes the array back to a file that must equal the .tflite byte
for byte. The ARM build's section sizes say where the model lands: .rodata and
.text are flash, .data is flash and RAM, .bss is RAM.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from . import ExportError

ROUNDTRIP = r"""
#include <stdio.h>
#include "NAME_model_data.h"
#include "NAME_model_config.h"
#include "NAME_golden.h"
int main(int argc, char** argv) {
  if (argc != 2) return 2;
  FILE* f = fopen(argv[1], "wb");
  if (!f) return 3;
  size_t n = fwrite(g_NAME_model_data, 1, g_NAME_model_data_len, f);
  fclose(f);
  if ((reinterpret_cast<unsigned long>(g_NAME_model_data) & 15) != 0) return 4;  // alignas(16) held
  return n == g_NAME_model_data_len && NAME::kGoldenCount > 0 ? 0 : 5;
}
"""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise ExportError(f"{name} is not installed: sudo apt-get install "
                          f"{'gcc-arm-none-eabi' if 'arm' in name else 'g++'} (or pass --no-compile)")
    return path


def _run(cmd: list[str], cwd: Path) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        errors = [ln for ln in lines if "error" in ln] or lines or [f"exit {r.returncode}"]
        raise ExportError(f"{Path(cmd[0]).name} failed on the generated sources: {errors[0].strip()}")
    return r.stdout


def host_roundtrip(src: Path, name: str, model: bytes) -> None:
    """Build the array with g++ and check it writes back the exact model bytes, 16-byte aligned."""
    gxx = _tool("g++")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "roundtrip.cc").write_text(ROUNDTRIP.replace("NAME", name))
        exe = tmp / "roundtrip"
        _run([gxx, "-std=c++17", "-Wall", "-Werror", "-I", str(src), str(tmp / "roundtrip.cc"),
              str(src / f"{name}_model_data.cc"), "-o", str(exe)], tmp)
        r = subprocess.run([str(exe), str(tmp / "back.tflite")], capture_output=True)
        if r.returncode != 0:
            raise ExportError(f"the host round-trip program failed (exit {r.returncode}): the array is misaligned "
                              "or truncated")
        if (tmp / "back.tflite").read_bytes() != model:
            raise ExportError("the compiled array differs from the .tflite: the generated .cc is wrong")


def arm_sections(src: Path, name: str, cpu: str = "cortex-m4") -> dict[str, int]:
    """Section sizes (bytes) of the model data compiled for a Cortex-M: text, rodata, data, bss."""
    gxx, size = _tool("arm-none-eabi-g++"), _tool("arm-none-eabi-size")
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "model.o"
        _run([gxx, f"-mcpu={cpu}", "-mthumb", "-std=c++17", "-Os", "-fdata-sections", "-Wall", "-Werror",
              "-I", str(src), "-c", str(src / f"{name}_model_data.cc"), "-o", str(obj)], Path(tmp))
        # the headers must compile for the target as well
        (Path(tmp) / "headers.cc").write_text(
            f'#include "{name}_model_config.h"\n#include "{name}_golden.h"\n'
            f"int tinysense_check() {{ return {name}::kGoldenCount + {name}::kTensorArenaSize; }}\n")
        _run([gxx, f"-mcpu={cpu}", "-mthumb", "-std=c++17", "-Os", "-Wall", "-Werror", "-I", str(src), "-c",
              str(Path(tmp) / "headers.cc"), "-o", str(Path(tmp) / "headers.o")], Path(tmp))
        out = _run([size, "-A", str(obj)], Path(tmp))
    sections = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            kind = parts[0].lstrip(".").split(".")[0]
            if kind in sections:
                sections[kind] += int(parts[1])
    return sections


def flash_bytes(sections: dict[str, int]) -> int:
    """What the object costs in flash: code, constants and the initial values of .data."""
    return sections["text"] + sections["rodata"] + sections["data"]
