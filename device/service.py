"""What deploy.sh asks of the app's own code, so that each rule is written once.

    python -m device.service check [--interpreter] -- DEVICE_OPTIONS...
    python -m device.service unit --dir DIR --user USER -- DEVICE_OPTIONS...

``check`` refuses, with one line, what the service would refuse at its start: the device CLI's
own parser and range checks, the source spec, every --port (an MQTT URL through the same parser
the sink uses), the --dashboard address and the bundle (model.json against the .tflite; with
``--interpreter``, on the Pi, the whole gate with the LiteRT interpreter). ``unit`` prints the
systemd unit that runs ``python -m device DEVICE_OPTIONS`` from DIR as USER, every value quoted
for systemd (``@DIR@`` in an option stands for DIR).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract import UsageError, bundle, specs
from contract.cli import run_cli
from contract.mqtt import parse as parse_broker
from contract.runtime import open_bundle
from dashboard.server import check_access, read_token

from . import DeviceError
from .cli import check_args, dashboard_options, parser as device_parser
from .sources import SCHEMES


class _OneLine(argparse.ArgumentParser):
    """argparse's usage errors as one line (deploy.sh shows them as its own)."""

    def error(self, message):
        raise UsageError(f"{message} (see python -m device --help)")


def device_options(argv: list[str]) -> argparse.Namespace:
    """The device's options as the service will run them, checked as the app checks them at start."""
    args = device_parser(_OneLine).parse_args(argv)
    check_args(args)
    dashboard_options(args)
    specs.parse(args.source, SCHEMES, "source")
    for port in args.port:
        if port.startswith(("mqtt:", "mqtts:")):
            parse_broker(port)
    if args.dashboard:  # the token and certificate files are read on the Pi, where they are copied to
        check_access(args.dashboard, args.dashboard_token, args.dashboard_cert, args.dashboard_key, "--dashboard")
    return args


def _device_argv(args) -> list[str]:
    return args.device[1:] if args.device[:1] == ["--"] else args.device


def check(args) -> int:
    options = device_options(_device_argv(args))
    if args.token_file is not None:  # what the Pi would refuse at start, refused here before anything changes
        read_token(args.token_file, "--dashboard-token")
    if args.interpreter:
        open_bundle(options.model, num_threads=1)  # the gate the app opens its bundle with
    else:
        bundle.load(options.model)  # model.json, field by field, and the .tflite's sha256
    return 0


def systemd_quote(text: str) -> str:
    """One systemd command-line word: double quotes, with \\, ", % and $ escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


UNIT = """# Written by tinysense deploy.sh. Remove with: ./deploy.sh remove {user}@<host>
[Unit]
Description=tinysense classifier: predictions over serial or MQTT
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
# the app says READY=1 and pings the watchdog from its frame loop: a hung loop is restarted
Type=notify
NotifyAccess=main
WatchdogSec=30
User={user}
SupplementaryGroups=dialout video
WorkingDirectory={workdir}/current
ExecStart={exec}
Restart=on-failure
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec=15
StandardOutput=journal
StandardError=journal
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={dir}
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes

[Install]
WantedBy=multi-user.target
"""


def unit_text(folder: str, user: str, device_argv: list[str]) -> str:
    """The unit for ``python -m device DEVICE_ARGV`` run from ``folder`` as ``user``.

    Inside ExecStart's quotes systemd_quote's rules apply; in WorkingDirectory= (a path, not a
    command line) specifiers are escaped; a backslash in the folder is refused, since systemd
    would read it as an escape in one place and not in the other.
    """
    if not folder.startswith("/"):
        raise DeviceError(f"the folder {folder!r} must be an absolute path: pass another --remote-dir")
    if "\\" in folder or any(ord(c) < 32 for c in folder + user):
        raise DeviceError(f"the folder {folder!r} holds a backslash or a control character: "
                          "pass another --remote-dir")
    words = [f"{folder}/venv/bin/python", "-m", "device", *(a.replace("@DIR@", folder) for a in device_argv)]
    return UNIT.format(user=user, workdir=folder.replace("%", "%%"), dir=systemd_quote(folder),
                       exec=" ".join(map(systemd_quote, words)))


def unit(args) -> int:
    argv = _device_argv(args)
    device_options([a.replace("@DIR@", args.dir) for a in argv])
    sys.stdout.write(unit_text(args.dir, args.user, argv))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.service", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="refuse what the service would refuse at its start")
    c.add_argument("--interpreter", action="store_true", help="the whole bundle gate, with the LiteRT interpreter")
    c.add_argument("--token-file", type=Path, help="also read this dashboard token file, before it is copied")
    c.add_argument("device", nargs=argparse.REMAINDER, help="-- then the options of python -m device")
    c.set_defaults(run=check)
    u = sub.add_parser("unit", help="print the systemd unit")
    u.add_argument("--dir", required=True, help="the deploy folder (absolute)")
    u.add_argument("--user", required=True)
    u.add_argument("device", nargs=argparse.REMAINDER, help="-- then the options of python -m device")
    u.set_defaults(run=unit)
    return run_cli("deploy.sh", p, lambda args: args.run(args), argv)  # its errors are deploy.sh's own


if __name__ == "__main__":
    sys.exit(main())
