"""Processes: what a forked child cannot inherit, and slides that pickle as *what to open*.

A slide is three things: what to open (a :class:`Ticket`: path or URL, driver, options), the parsed
structure (immutable, shared through the parse cache) and per-process handles (descriptors, HTTP
sessions, threads, locks). Objects holding the last kind register with :func:`reset_after_fork`
and get ``_after_fork()`` called in a forked child, which keeps the parsed structure and drops
the rest (a lock held by a parent thread at the fork would otherwise stay held forever; a thread
pool would count threads that do not exist there). Pickling sends the ticket alone: the other side
re-opens on first use (the parse cache makes a re-open ~20 µs), so unpickling touches no file and
never needs the parent (a Dask scheduler may unpickle a graph on a machine without the slides).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from .errors import SourceChangedError

_objects: weakref.WeakSet = weakref.WeakSet()


def reset_after_fork(obj: Any) -> None:
    """Call ``obj._after_fork()`` in every forked child of this process while ``obj`` lives."""
    _objects.add(obj)


def _in_child() -> None:
    global _open_lock
    _open_lock = threading.RLock()
    for obj in list(_objects):
        obj._after_fork()


os.register_at_fork(after_in_child=_in_child)

# one first use of an unpickled slide opens it, not every thread (re-entered: a scene's first use
# opens its slide)
_open_lock = threading.RLock()


@dataclass(frozen=True)
class Ticket:
    """What to open: ``tilescope.open(source, driver, **options)``, and the (size, mtime) of the
    file at the time (``stamp``; None for URLs): a file that changed since raises
    :class:`SourceChangedError` when the other side opens it."""

    source: Any  # an absolute path, a list of them, or a URL
    driver: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # open()'s keywords: Options and URL options
    stamp: tuple[int, int] | None = None

    def open(self) -> Any:
        import tilescope

        slide = tilescope.open(self.source, self.driver, **self.options)
        identity = getattr(slide.source, "identity", None)
        if self.stamp is not None and identity is not None and tuple(identity[2:]) != self.stamp:
            slide.close()
            raise SourceChangedError(
                f"{slide.path}: changed since the slide was pickled (size, mtime {self.stamp} then, "
                f"{tuple(identity[2:])} now)")
        return slide


def pending(cls: type, ticket: Ticket) -> Any:
    """An unpickled Slide: only its ticket, opened on first attribute access (``Slide.__getattr__``)."""
    obj: Any = object.__new__(cls)
    obj.__dict__["_pending"] = ticket
    return obj


def resolve(obj: Any) -> None:
    """Open a pending slide in place (once, whichever thread gets here first)."""
    with _open_lock:
        ticket = obj.__dict__.get("_pending")
        if ticket is not None:
            obj._adopt(ticket.open())


def pending_scene(cls: type, slide: Any, index: int) -> Any:
    """An unpickled Scene: scene ``index`` of ``slide``, looked up on first attribute access
    (``Scene.__getattr__``)."""
    if "_pending" not in slide.__dict__:
        return slide.scenes[index]
    obj: Any = object.__new__(cls)
    obj.__dict__["_pending_in"] = (slide, index)
    return obj


def resolve_scene(obj: Any) -> None:
    """Make a pending scene its slide's scene (opening the slide if it is pending too), once."""
    with _open_lock:
        where = obj.__dict__.get("_pending_in")
        if where is not None:
            slide, index = where
            obj.__dict__.update(slide.scenes[index].__dict__)
            del obj.__dict__["_pending_in"]
