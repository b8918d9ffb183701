"""Code a user names on purpose (``--model`` and ``--dis_metric package.module:function``): the one place
such a name is imported, so a malformed name, a module that fails to import, or a missing function is one line."""
from __future__ import annotations

import importlib
import os
import re
from contextlib import contextmanager
from typing import Callable

from .errors import GradmatchError, warn

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # a module path; after the colon a function or Class.method


def check_function_name(flag: str, name: str) -> bool:
    """True for a well-formed ``package.module:function``; GradmatchError otherwise.  Nothing is imported."""
    module_name, _, attr = name.partition(":")
    if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(attr):
        raise GradmatchError(f"{flag} {name!r} is not package.module:function (an importable module, a colon, a "
                             "function in it); fix the name")
    return True


def import_function(flag: str, name: str) -> Callable:
    """The function ``package.module:function`` names (``flag`` names it in errors)."""
    check_function_name(flag, name)
    module_name, _, attr = name.partition(":")
    try:
        with staying_here(flag, name, "while it was imported"):
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise GradmatchError(f"{flag} {name}: cannot import module '{module_name}' ({err}); make it importable "
                             "(PYTHONPATH) or fix the name") from None
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the module's own code failed while importing
        raise GradmatchError(f"{flag} {name}: importing module '{module_name}' failed ({type(err).__name__}: "
                             f"{err}); fix the module") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise GradmatchError(f"{flag} {name}: module '{module_name}' has no function '{attr}'")
    return fn


@contextmanager
def staying_here(flag: str, name: str, doing: str):
    """Run a user's code, then come back to the working folder it found (said): gradmatch reads and writes there."""
    try:
        here = os.getcwd()
    except OSError:  # the working folder is gone already: nothing to come back to
        yield
        return
    try:
        yield
    finally:
        try:
            moved = os.getcwd()
        except OSError:
            moved = "a removed folder"
        if moved != here:
            os.chdir(here)
            warn(f"{flag} {name} changed the working folder (to {moved}) {doing}; gradmatch went back to {here}, "
                 "where it reads and writes: leave the working folder as it is")
