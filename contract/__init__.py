"""tinysense's contract: what every side agrees on, imported by all of them and importing none.

The bundle (model.json and its gate against the .tflite), reading a .tflite, the int8
quantization math, preprocessing, the wire records and their codecs, strict option specs,
MQTT connection settings, atomic writes, the error root and the one CLI runner. numpy and the
standard library only (the LiteRT interpreter and paho-mqtt where a function needs them), so
it runs on a Raspberry Pi beside device/.
"""

from .errors import ContractError, TinysenseError, UsageError

__all__ = ["ContractError", "TinysenseError", "UsageError"]
