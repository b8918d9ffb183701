"""One error type for everything a user can get wrong (printed as one line: it says what and how to fix it), and
one channel for warnings, each said once within a ``scope`` from process 0 and handed to its listeners."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Callable, List, Optional


def one_line(text: str) -> str:
    """A line break inside a quoted value (a class or file name) shown as ``\\n``: the CLI promises one line."""
    return str(text).replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


class GradmatchError(Exception):
    """A user-facing error: bad name, missing or corrupt file, impossible setting; always one line."""

    def __init__(self, *args):
        super().__init__(*(one_line(a) if isinstance(a, str) else a for a in args))


def is_out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError, or torch's CPU or GPU allocator failing (a RuntimeError saying so)."""
    return isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and any(
        words in str(err) for words in ("can't allocate memory", "out of memory")))


def out_of_memory(what: str, fix: str) -> GradmatchError:
    return GradmatchError(f"not enough memory for {what}; {fix}")


class Interrupted(GradmatchError):
    """Ctrl-C: the message says what was kept and what to do next (the CLI exits with 130)."""


def unknown_name(kind: str, name: str, valid) -> GradmatchError:
    return GradmatchError(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(str(v) for v in valid))}")


_SCOPES: List[SimpleNamespace] = []  # the open scope: said (each message once) and listeners


@contextmanager
def scope(listener: Optional[Callable[[str], None]] = None):
    """Within the block each warning is said once and heard by ``listener``; nested scopes join the outermost."""
    created = not _SCOPES
    if created:
        _SCOPES.append(SimpleNamespace(said=set(), listeners=[]))
    if listener is not None:
        _SCOPES[0].listeners.append(listener)
    try:
        yield
    finally:
        if listener is not None:
            _SCOPES[0].listeners.remove(listener)
        if created:
            _SCOPES.pop()


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr: allowed, but probably not what was meant."""
    if _SCOPES:
        if message in _SCOPES[0].said:
            return
        _SCOPES[0].said.add(message)
        for listener in list(_SCOPES[0].listeners):
            listener(message)
    dist = sys.modules.get("torch.distributed")  # process 0 only under torchrun
    if not (dist is not None and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        print(f"warning: {one_line(message)}", file=sys.stderr)
