"""Write files and whole output folders so that a failure leaves nothing half written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ContractError


def write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place (with ``mode``, else 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty folder without --force and a parent we cannot write into; create missing parents."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ContractError(f"{out} exists and is not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ContractError(f"{out} exists and is not empty: pass --force to replace it, or choose another --out")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ContractError(f"cannot write {out}: cannot create {parent} ({e.strerror}); "
                            "choose another --out") from None
    if not os.access(parent, os.W_OK):
        raise ContractError(f"cannot write {out}: {parent} is not writable; choose another --out")


class OutputDir:
    """An output folder, checked once when it is reserved (before minutes of work) and written in
    one rename from a staged folder beside it (``staged``)."""

    def __init__(self, out: Path, force: bool = False):
        self.path, self.force = Path(out), force
        check_output_dir(self.path, force)

    @contextlib.contextmanager
    def staged(self) -> Iterator[Path]:
        """Yield a fresh folder beside the output; on success it replaces the output in one rename.

        On any exception the staged folder is removed and the output is left as it was. Without
        --force, a folder that something else filled since the reservation is not replaced.
        """
        out = self.path
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.resolve().parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes 0700; the finished folder gets the usual mode
        try:
            yield stage
            if not self.force and out.is_dir() and any(out.iterdir()):
                raise ContractError(f"{out} was filled by something else while this ran: nothing replaced it; "
                                    "pass --force to replace it, or choose another --out")
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def staged_dir(out: Path, force: bool = False):
    """``OutputDir(out, force).staged()``: check and write in one go, for quick writers."""
    return OutputDir(out, force).staged()
