"""Error types. Each message names the problem and the fix."""


class QResearchError(Exception):
    """Base class of every error qresearch raises on purpose."""


class UnknownNameError(QResearchError, KeyError):
    """A registry was asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(QResearchError, ValueError):
    """A spec or config value is invalid."""


class KerasVersionError(QResearchError, TypeError):
    """A Keras 3 object reached code that needs Keras 2 (tf_keras)."""


class UnsupportedLayerError(QResearchError, ValueError):
    """A layer has no quantization config and is not skipped."""


class IncompatibleTargetError(QResearchError, ValueError):
    """A scheme asks for something the hardware target cannot do."""
