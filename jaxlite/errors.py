"""The exceptions a user of jaxlite can see; each message says what to do about it.

A leaf module: it imports nothing from jaxlite, so every layer may raise these."""


class JaxliteError(Exception):
    """Base class of every jaxlite error."""


class UnsupportedPrimitiveError(JaxliteError):
    """The traced function uses a jax primitive jaxlite has no op for."""

    def __init__(self, primitive: str, where: str, detail: str = ""):
        self.primitive = primitive
        self.where = where
        msg = f"jaxlite cannot convert primitive '{primitive}' (at {where})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class ModelFormatError(JaxliteError):
    """A .jlite file (or IR text) is damaged, from another format version, or malformed."""


class SignatureError(JaxliteError, TypeError):
    """A compiled model was called with arguments that do not match its signature."""


class DeviceError(JaxliteError, RuntimeError):
    """The requested device is unknown or not present on this machine."""


class ConversionError(JaxliteError, ValueError):
    """convert() was given something it cannot trace (bad arguments, bad options)."""


class SaveError(JaxliteError, OSError):
    """A model could not be written (the message names the file and the reason)."""


class ExportError(JaxliteError, ValueError):
    """A model cannot be written in another format (.tflite): the message names the op and
    what the format lacks."""
