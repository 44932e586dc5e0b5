"""Typed errors. Each carries a one-line message a user can act on and an exit code.

Bad input or usage exits 2; a conversion or verification that failed on valid input exits 1.
The CLI maps these to one line of output; library callers catch them by type.
"""

from __future__ import annotations


class BitconvError(Exception):
    """Base of every error bitconv raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(BitconvError):
    """The input (files, options, source) cannot be used as given."""

    exit_code = 2


class UsageError(InputError):
    """Options that contradict each other or name something unknown."""


class SourceNotFoundError(InputError, FileNotFoundError):
    """A local path or a Hub repo that does not exist or is not cached while offline."""


class CorruptFileError(InputError):
    """A file that exists but cannot be parsed: truncated, bad header, unsafe index."""


class UnsupportedArchitectureError(InputError):
    """The checkpoint's architecture has no registered family."""


class LayoutError(InputError):
    """A tensor shape or option that a layout cannot represent."""


class BadWeightsError(InputError):
    """Weights with NaN/Inf, non-ternary codes or invalid scales."""


class OutputExistsError(InputError, FileExistsError):
    """The output path exists and --force was not given."""


class ConversionError(BitconvError):
    """The conversion failed on valid input (disk full, engine limitation at write time)."""


class SourceChangedError(ConversionError):
    """A source file was replaced, truncated or rewritten while a conversion read it."""


class UploadError(BitconvError):
    """The release is written but could not be published (offline, network, auth, no repo).
    Exit 2 when the fix is the user's input or setup (offline mode, a token, a repo name),
    1 when the Hub or the network failed."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code
