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

import functools
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


@dataclass(slots=True)
class Ticket:
    """What to open: ``tilescope.open(source, driver, **options)``, and the (size, mtime) of the
    file at the time (``stamp``; (size, ETag) for a file on a server or in a bucket, None for
    DICOMweb): a file that changed since raises :class:`SourceChangedError` when the other side
    opens it."""

    source: Any  # an absolute path, a list of them, or a URL
    driver: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # open()'s keywords: Options and URL options
    stamp: tuple[Any, ...] | None = None

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


class _Pending:
    """Mixed into an unpickled object's class until its first use. ``__getattr__`` is reached only
    for a name not found, that is, on first use: it opens what the object stands for and turns the
    object into its own class again. (A class of its own, not a ``__getattr__`` on Slide and Scene:
    a class with ``__getattr__`` loses CPython's fast attribute access on every read. No
    ``__slots__`` here: with them the object could not take its own class back.)"""

    def __getattr__(self, name: str) -> Any:
        d = object.__getattribute__(self, "__dict__")
        if name.startswith("__") or not ("_pending" in d or "_pending_in" in d):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        _resolve(self)
        return getattr(self, name)


@functools.cache
def _pending_class(cls: type) -> type:
    return type(cls.__name__, (_Pending, cls), {"__module__": cls.__module__})


def _resolve(obj: Any) -> None:
    """Open a pending slide, or look up a pending scene in its slide, in place; once, whichever
    thread gets here first."""
    with _open_lock:
        d = obj.__dict__
        if "_pending" in d:
            obj._adopt(d["_pending"].open())
            del d["_pending"]
        elif "_pending_in" in d:
            slide, index = d["_pending_in"]
            d.update(slide.scenes[index].__dict__)  # opens the slide if it is pending too
            del d["_pending_in"]
        else:
            return
        obj.__class__ = own_class(obj)


def own_class(obj: Any) -> type:
    """The class an object is (or becomes on first use, if it is still pending)."""
    cls = type(obj)
    return cls.__bases__[1] if issubclass(cls, _Pending) else cls


def pending(cls: type, ticket: Ticket) -> Any:
    """An unpickled Slide: only its ticket, opened on first use."""
    obj: Any = object.__new__(_pending_class(cls))
    obj.__dict__["_pending"] = ticket
    return obj


def pending_scene(cls: type, slide: Any, index: int) -> Any:
    """An unpickled Scene: scene ``index`` of ``slide``, looked up on first use."""
    if "_pending" not in slide.__dict__:
        return slide.scenes[index]
    obj: Any = object.__new__(_pending_class(cls))
    obj.__dict__["_pending_in"] = (slide, index)
    return obj
