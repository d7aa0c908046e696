"""A real Mosquitto broker for the tests: Debian's mosquitto on 127.0.0.1, with a config written here.

Optionally TLS (a CA and a server certificate made with openssl for 127.0.0.1), a password
file (mosquitto_passwd) and persistence (so a restart keeps durable sessions, as a broker in
the field does).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from conftest import require_tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(folder: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1; returns the CA certificate."""
    openssl = require_tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=tinysense test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return folder / "ca.crt"


class Mosquitto:
    def __init__(self, folder: Path, tls: bool = False, users: dict | None = None, persistence: bool = False,
                 auth: list[str] | None = None):
        """``auth``: mosquitto.conf lines of a login set up elsewhere (password_file, acl_file, ...)."""
        self.exe = require_tool("mosquitto")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.ca = make_certs(self.folder / "certs") if tls else None
        lines = ["user root", f"listener {self.port} 127.0.0.1", f"persistence {'true' if persistence else 'false'}",
                 "max_queued_messages 0", f"log_dest file {self.folder / 'mosquitto.log'}"]
        if persistence:
            lines.append(f"persistence_location {self.folder}/")
        if tls:
            certs = self.folder / "certs"
            lines += [f"cafile {certs / 'ca.crt'}", f"certfile {certs / 'server.crt'}",
                      f"keyfile {certs / 'server.key'}"]
        if users:
            pw = self.folder / "passwords"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run([require_tool("mosquitto_passwd"), "-b", *(["-c"] if i == 0 else []), str(pw), user,
                                password], check=True, capture_output=True)
            lines += [f"password_file {pw}", "allow_anonymous false"]
        elif auth:
            lines += auth
        else:
            lines.append("allow_anonymous true")
        self.config = self.folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.ca else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto did not start: {self.proc.stderr.read().decode()[-500:]}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: a persistent broker saves its sessions
            self.proc.wait(10)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        import os

        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
