"""One error type for everything a user can get wrong, and one channel for warnings.

The CLI prints ``GradmatchError`` as a single line (no traceback) and exits with code 2, so the
message must name what was wrong and how to fix it.  ``warn`` is the one way anything is said that
is allowed but probably not meant (or that changes how, not what, is computed): one ``warning: ...``
line on stderr, from process 0 only under torchrun, said once within a ``scope`` (a command, a run,
a Python call), and also handed to the scope's listeners (a run writes them into its log).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, List, Optional, Set


def one_line(text: str) -> str:
    """``text`` on one line: a line break inside a value it quotes (a class or file name) is shown as
    ``\\n``, so that an error or a warning stays the one line the CLI promises."""
    return str(text).replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


class GradmatchError(Exception):
    """A user-facing error: bad name, missing or corrupt file, impossible setting.  Its message is one
    line whatever the values it quotes hold (``one_line``)."""

    def __init__(self, *args):
        super().__init__(*(one_line(a) if isinstance(a, str) else a for a in args))


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that failed (Python's MemoryError, torch's CPU or GPU allocator,
    whose errors are RuntimeErrors saying so)."""
    return isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and any(
        words in str(err) for words in ("can't allocate memory", "out of memory")))


def out_of_memory(what: str, fix: str) -> GradmatchError:
    """The one line for an allocation that failed while doing ``what``."""
    return GradmatchError(f"not enough memory for {what}; {fix}")


class Interrupted(GradmatchError):
    """Ctrl-C: the message says what was kept and what to do next (the CLI exits with 130)."""


def unknown_name(kind: str, name: str, valid) -> GradmatchError:
    """Error for an unknown registry name that lists the valid choices."""
    return GradmatchError(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(str(v) for v in valid))}")


class _Scope:
    def __init__(self):
        self.said: Set[str] = set()
        self.listeners: List[Callable[[str], None]] = []


_SCOPES: List[_Scope] = []


@contextmanager
def scope(listener: Optional[Callable[[str], None]] = None):
    """Within the block each warning is said once; ``listener(message)`` hears every one said.  Nested
    scopes join the outermost (what a command or a run says once, it says once)."""
    created = not _SCOPES
    if created:
        _SCOPES.append(_Scope())
    if listener is not None:
        _SCOPES[0].listeners.append(listener)
    try:
        yield
    finally:
        if listener is not None:
            _SCOPES[0].listeners.remove(listener)
        if created:
            _SCOPES.pop()


def _is_main_process() -> bool:
    dist = sys.modules.get("torch.distributed")
    return not (dist is not None and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr: allowed, but probably not what was meant."""
    if _SCOPES:
        if message in _SCOPES[0].said:
            return
        _SCOPES[0].said.add(message)
        for listener in list(_SCOPES[0].listeners):
            listener(message)
    if _is_main_process():
        print(f"warning: {one_line(message)}", file=sys.stderr)
