"""Code a user names on purpose: ``--model package.module:function`` and ``--dis_metric
package.module:function``.  The one place such a name is imported, so both flags refuse a malformed
name, a module that cannot be imported (for any reason: missing, a syntax error, an exception or an
``exit()`` while importing) or a missing function in one line."""
from __future__ import annotations

import importlib
import re
from typing import Callable

from .errors import GradmatchError

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
