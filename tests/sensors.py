"""A simulated sensor on a pty for the tests that record from one (test_record, the record view in
the browser): three axes of text lines at a steady rate, with a gesture that can change while it runs."""

import math
import threading
import time

import numpy as np
import serial


class Sensor:
    """Lines of three axes at ``rate`` Hz on the pty's other end: a slow wave or a fast shake (``gesture``
    may be changed while it runs)."""

    def __init__(self, path, rate=50.0, gesture="wave", sep=","):
        self.port = serial.Serial(str(path), timeout=0.1)
        self.rate, self.gesture, self.sep = rate, gesture, sep
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        rng = np.random.default_rng(0)
        n, start = 0, time.monotonic()
        while not self.stop.is_set():
            t = n / self.rate
            f = 1.0 if self.gesture == "wave" else 6.0
            values = [math.sin(2 * math.pi * f * t + k) + 0.1 * rng.standard_normal() for k in range(3)]
            try:
                self.port.write((self.sep.join(f"{v:.4f}" for v in values) + "\n").encode())
            except (OSError, serial.SerialException):
                return
            n += 1
            time.sleep(max(0.0, start + n / self.rate - time.monotonic()))

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.port.close()
