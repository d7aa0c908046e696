"""The live view of a fleet: its state built from decoded messages (fleet.py) and the page that shows
it over HTTP (server.py, web/). The host's monitor and the device's own --dashboard both serve it."""

from contract import TinysenseError


class DashboardError(TinysenseError):
    """A dashboard that cannot be served as asked (an address in use, a bad HOST:PORT); one line, exit 1."""
