"""An emulated Raspberry Pi from Debian packages only: a bookworm arm64 rootfs under qemu-user
(binfmt_misc), sshd on 127.0.0.1 inside it, a 'pi' user with a throwaway key.

    python tests/pi/emulated_pi.py build        # make or reuse the cached rootfs (~/.cache/tinysense-pi)
    python tests/pi/emulated_pi.py shell        # sshd up; prints the ssh command, Ctrl-C ends it

Facts this works around (each measured here):
- qemu-user passes the host's x86 /proc/cpuinfo through, and LiteRT's cpuinfo library crashes when
  the interpreter is created: the rootfs gets a Pi 4's cpuinfo, bound over /proc/cpuinfo in a
  private mount namespace.
- with qemu's default CPU model, XNNPACK's int8 kernels give wrong results; QEMU_CPU=cortex-a72
  (a Pi 4's core) gives the right ones. sshd starts sessions with a clean environment, so the
  variable is set with sshd_config's SetEnv.
- qemu can crash now and then while packages are configured: 'dpkg --configure -a' is retried,
  and 'dpkg --audit' must be clean before a cached rootfs is reused.
- without a pid namespace, ps inside sees the host's processes (deploy.sh's getty check reads ps).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinysense-pi"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = ["openssh-server", "python3", "python3-venv", "python3-pip", "ca-certificates", "sudo", "procps"]
HOST_TOOLS = {"debootstrap": "debootstrap", "qemu-aarch64-static": "qemu-user-static", "unshare": "util-linux",
              "ssh-keygen": "openssh-client"}
PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Revision\t: c03111
Serial\t\t: 10000000deadbeef
Model\t\t: Raspberry Pi 4 Model B Rev 1.1
"""
CPU = "cortex-a72"


class PiError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    """Debian packages to install for the host side (empty when all is there)."""
    return sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})


def binfmt_ready() -> bool:
    """Whether aarch64 binaries run here (qemu-user-static registered with binfmt_misc)."""
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
                       capture_output=True)
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    return Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists()


def _chroot(root: Path, *cmd: str, check: bool = True, env_cpu: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    if env_cpu:
        env["QEMU_CPU"] = CPU
    r = subprocess.run(["chroot", str(root), *cmd], env=env, capture_output=True, text=True)
    if check and r.returncode:
        raise PiError(f"{' '.join(cmd)} in the rootfs failed ({r.returncode}): {(r.stderr or r.stdout)[-300:]}")
    return r


def _healthy(root: Path) -> bool:
    return (root / ".tinysense-ready").is_file() and not _chroot(root, "dpkg", "--audit", check=False).stdout.strip()


def build(cache: Path = CACHE, log=print) -> Path:
    """The cached arm64 rootfs, made when missing or broken; returns its folder."""
    root = cache / "arm64"
    if root.is_dir() and _healthy(root):
        return root
    if missing_tools():
        raise PiError(f"install {' '.join(missing_tools())} first (apt-get install)")
    if not binfmt_ready():
        raise PiError("aarch64 binaries do not run here: qemu-user-static is not registered with binfmt_misc")
    tmp = cache / "arm64.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap {SUITE} arm64 into {tmp} (about 10 minutes the first time) ...")
    r = subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                        SUITE, str(tmp), MIRROR], capture_output=True, text=True)
    if r.returncode:
        log(f"debootstrap ended with {r.returncode}; finishing with dpkg --configure -a")
    for _ in range(3):  # qemu-user crashes now and then while packages configure
        if not _chroot(tmp, "dpkg", "--audit", check=False).stdout.strip() and r.returncode == 0:
            break
        r = _chroot(tmp, "dpkg", "--configure", "-a", check=False)
    if _chroot(tmp, "dpkg", "--audit", check=False).stdout.strip():
        raise PiError(f"the rootfs in {tmp} has half-configured packages after retries: delete it and build again")
    _chroot(tmp, "useradd", "-m", "-s", "/bin/bash", "-G", "dialout,video", "pi")
    # useradd leaves the account locked ("!"), and sshd without PAM refuses a locked account even
    # with a key; "*" means no password at all, and an unlocked account
    _chroot(tmp, "usermod", "-p", "*", "pi")
    (tmp / "etc" / "pi-cpuinfo").write_text(PI4_CPUINFO)
    (tmp / "etc" / "sudoers.d").mkdir(exist_ok=True)
    (tmp / ".tinysense-ready").write_text(f"{SUITE} arm64 {time.strftime('%Y-%m-%d')}\n")
    tmp.rename(root)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmulatedPi:
    """sshd inside the rootfs, in its own mount and pid namespaces; ``ssh_config`` logs in as pi."""

    def __init__(self, root: Path, workdir: Path):
        self.root, self.workdir = Path(root), Path(workdir)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.ssh_config = self.workdir / "ssh_config"
        self.host = "pi@127.0.0.1"

    def _keys(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = self.workdir / "pi_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        ssh = self.root / "home" / "pi" / ".ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copy(key.with_suffix(".pub"), ssh / "authorized_keys")
        _chroot(self.root, "usermod", "-p", "*", "pi")  # also for a rootfs cached before this fix
        uid = int(_chroot(self.root, "id", "-u", "pi").stdout)
        for p in (ssh, ssh / "authorized_keys"):
            os.chown(p, uid, uid)
        os.chmod(ssh / "authorized_keys", 0o600)
        host_key = self.root / "etc" / "ssh" / "tinysense_host_key"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        (self.root / "etc" / "ssh" / "sshd_config.tinysense").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey /etc/ssh/tinysense_host_key\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            f"PermitRootLogin no\nUsePAM no\nSetEnv QEMU_CPU={CPU}\nLogLevel ERROR\n")
        self.ssh_config.write_text(
            f"Host 127.0.0.1\n  Port {self.port}\n  User pi\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.workdir / 'known_hosts'}\n  StrictHostKeyChecking accept-new\n")

    def _network(self) -> None:
        """The Pi sits on this machine's network: the same DNS and the same trusted CAs (this network's
        egress proxy signs TLS with its own CA, which the host trusts and a fresh rootfs does not)."""
        shutil.copy("/etc/resolv.conf", self.root / "etc" / "resolv.conf")
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if bundle.is_file():
            shutil.copy(bundle, self.root / "etc" / "ssl" / "certs" / "ca-certificates.crt")
            # pip in a venv uses its own certifi unless told otherwise
            (self.root / "etc" / "pip.conf").write_text(f"[global]\ncert = {bundle}\n")

    def start(self, timeout: float = 60) -> "EmulatedPi":
        self._keys()
        self._network()
        r = str(self.root)
        # inside fresh mount and pid namespaces: our own /proc with a Pi's cpuinfo, the host's /dev
        script = (f"set -e; mount -t proc proc {r}/proc; mount --bind {r}/etc/pi-cpuinfo {r}/proc/cpuinfo; "
                  f"mount --rbind /dev {r}/dev; mount -t tmpfs tmpfs {r}/run; mkdir -p {r}/run/sshd; "
                  f"exec chroot {r} /usr/bin/env QEMU_CPU={CPU} /usr/sbin/sshd -D -e "
                  "-f /etc/ssh/sshd_config.tinysense")
        # --kill-child: the namespace's init (sshd) goes when unshare goes; without it, terminating
        # unshare left sshd and everything it started running for good
        self.proc = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--kill-child=SIGKILL",
                                      "--propagation", "private", "bash", "-c", script],
                                     stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise PiError(f"sshd in the emulated Pi exited: {self.proc.stderr.read()[-300:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.3)
        self.stop()
        raise PiError("sshd in the emulated Pi did not start listening")

    def ssh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", self.host, command],
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        """sshd and every process in the Pi's namespaces ended, and waited for."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # --kill-child ends the namespace's init, and the kernel the rest of it
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        end = time.monotonic() + 10
        while time.monotonic() < end and processes_in(self.root):
            for pid in processes_in(self.root):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        left = processes_in(self.root)
        if left:
            raise PiError(f"processes {left} of the emulated Pi are still running after stop")


def processes_in(root: Path) -> list[int]:
    """Pids of processes whose root directory is ``root`` (the rootfs's chroot)."""
    pids = []
    target = os.path.realpath(root)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/root") == target:
                    pids.append(int(entry))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return pids


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "build"
    try:
        root = build()
        if cmd == "shell":
            pi = EmulatedPi(root, CACHE / "session").start()
            print(f"ssh -F {pi.ssh_config} pi@127.0.0.1   (Ctrl-C stops the emulated Pi)")
            try:
                pi.proc.wait()
            except KeyboardInterrupt:
                pi.stop()
        else:
            print(f"rootfs ready: {root}")
    except PiError as e:
        print(f"emulated_pi: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
