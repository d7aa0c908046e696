"""tinysense device side: runs a bundle's int8 model on a Raspberry Pi.

Only numpy, the LiteRT interpreter and pyserial are needed here; nothing in this
package imports TensorFlow, Keras or build_model.
"""


from contract import TinysenseError


class DeviceError(TinysenseError):
    """A problem on the device side the user can fix; the CLI prints it as one line."""
