"""tinysense on the host: read devices' streams (serial, pty or MQTT), show them in a terminal or on the
dashboard, and the offline demo. Never runs on the Pi; imports contract/ and dashboard/, not device/."""

from contract import TinysenseError


class MonitorError(TinysenseError):
    """A monitor that cannot run as asked (a port that does not open, a bad option); one line, exit 1."""
