"""Board projects: an Arduino sketch folder or a PlatformIO project around the exported sources.

Each board's project (hardware.py: the arduino-cli FQBN, the PlatformIO platform and board, and
the TensorFlow Lite Micro library its users install) sits beside its budgets and clock.
With arduino-cli or pio on the PATH the project is compiled (and uploaded with ``--flash PORT``);
without them the commands are printed, and asking to flash is an error.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import ExportError
from .hardware import Project

LAYOUTS = ("arduino", "platformio")


def _sources(src: Path, name: str) -> dict[str, str]:
    """The exported sources for a board build: .cc become .cpp (what both tools compile in a sketch)."""
    files = {}
    for path in sorted(src.iterdir()):
        if path.is_file() and path.suffix in (".h", ".cc"):
            target = (f"{name}_main.cpp" if path.name == "main.cc" else path.with_suffix(".cpp").name) \
                if path.suffix == ".cc" else path.name
            files[target] = path.read_text()
    return files


def write_project(src: Path, out: Path, name: str, layout: str, b: Project) -> Path:
    """Lay out the project in ``out`` (a fresh folder) from the export in ``src``; returns what the
    board tool builds (the sketch folder, or the PlatformIO project)."""
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}: use {', '.join(LAYOUTS)}")
    sketch = (src / f"{name}.ino").read_text()
    if layout == "arduino":
        folder = out / name  # arduino-cli wants the folder and the .ino named alike
        folder.mkdir(parents=True)
        for fname, text in {f"{name}.ino": sketch, **_sources(src, name)}.items():
            (folder / fname).write_text(text)
        shutil.copy2(src / "export.json", folder / "export.json")
        return folder
    (out / "src").mkdir(parents=True)
    # PlatformIO builds C++ files, not a sketch: the .ino's setup() and loop() go into a .cpp of their own
    for fname, text in {f"{name}_sketch.cpp": sketch, **_sources(src, name)}.items():
        (out / "src" / fname).write_text(text)
    shutil.copy2(src / "export.json", out / "export.json")
    (out / "platformio.ini").write_text(
        f"; Written by tinysense firmware_export for {b.note}.\n"
        f"; Add TensorFlow Lite Micro for this board to lib_deps: {b.tflm_library}.\n"
        f"[env:{b.name}]\nplatform = {b.pio_platform}\nboard = {b.pio_board}\nframework = arduino\n"
        "monitor_speed = 115200\nbuild_flags = -DTF_LITE_STATIC_MEMORY\n")
    return out


def tool_commands(layout: str, b: Project, project: Path, port: str | None) -> list[list[str]]:
    if layout == "arduino":
        cmds = [["arduino-cli", "compile", "--fqbn", b.fqbn, str(project)]]
        if port:
            cmds.append(["arduino-cli", "upload", "-p", port, "--fqbn", b.fqbn, str(project)])
        return cmds
    cmds = [["pio", "run", "-d", str(project)]]
    if port:
        cmds.append(["pio", "run", "-d", str(project), "-t", "upload", "--upload-port", port])
    return cmds


def build_and_flash(layout: str, b: Project, project: Path, port: str | None, log=lambda *a: None) -> bool:
    """Compile (and with a port, upload) with the board tool when it is here. False when it is not;
    with a port asked for, that is an error."""
    cmds = tool_commands(layout, b, project, port)
    tool = cmds[0][0]
    if not shutil.which(tool):
        shown = "; ".join(" ".join(c) for c in cmds)
        if port:
            raise ExportError(f"{tool} is not installed, so nothing was flashed to {port}; the project is in "
                              f"{project}: install {tool} and {b.tflm_library}, then run: {shown}")
        log(f"{tool} is not installed here: with {b.tflm_library} installed, build"
            f"{' and flash' if port else ''} with: {shown}")
        return False
    for cmd in cmds:
        log("+ " + " ".join(cmd))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            lines = (r.stderr or r.stdout).strip().splitlines() or [f"exit {r.returncode}"]
            raise ExportError(f"{' '.join(cmd[:2])} failed: {lines[-1][:200]}")
    return True
