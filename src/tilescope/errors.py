"""The errors tilescope raises. Every message names the file and what is wrong."""

from __future__ import annotations


class TilescopeError(Exception):
    """Base class of every error tilescope raises on purpose."""


class UnsupportedFormatError(TilescopeError):
    """The file is not an image tilescope reads, or uses a feature it does not support."""


class CorruptDataError(TilescopeError):
    """The file claims to be a supported format but its structure or encoded data is broken."""


class InvalidRequestError(TilescopeError, ValueError):
    """A read or lookup asked for something that cannot exist (negative size, bad channel...)."""


class NotFoundError(TilescopeError, KeyError):
    """A name that is not there (an associated image): also a ``KeyError``, as a mapping raises;
    the message lists the names there are."""

    def __str__(self) -> str:  # the message as it is, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


class TooLargeError(InvalidRequestError):
    """A request would allocate more than the configured memory budget."""


class SlideClosedError(TilescopeError):
    """The slide was closed and can no longer be read."""


class SourceNotFoundError(TilescopeError, FileNotFoundError):
    """The path does not exist."""


class RemoteError(TilescopeError, OSError):
    """A server could not be reached or refused a request (DICOMweb): names the server and object."""


class SourceChangedError(TilescopeError):
    """A pickled slide's file changed (size or modification time) before the other side opened it."""


class WriteError(TilescopeError, OSError):
    """Writing an output failed (no space left, no permission, an encoder refusing the data): names
    the output; what was written of it is removed."""
