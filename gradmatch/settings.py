"""How a setting is declared: once, as a field of a frozen dataclass with its default, help, flag and check.
``validate()`` reports every failing setting in one line; the CLI makes its flags from the same fields, so a
value is accepted or refused alike from Python and from the command line."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import MISSING, field, fields
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import GradmatchError
from .usercode import check_function_name


def setting(default: Any = None, help: Any = "", *, check: Optional[Callable] = None, flag: Optional[str] = None,
            type: Optional[Callable] = None, cli: bool = True, free: bool = False, also: Tuple[str, ...] = (),
            code: bool = False, default_factory: Any = MISSING):
    """A field: ``check(value, flag)`` returns the value normalised or raises; ``flag``: the seed's spelling;
    ``type``: the CLI's converter; ``help``: text or a function giving it; ``free``: where and how loudly to run,
    taken from the command line on resume; ``also``: other commands that take it; ``code``: the check runs user code."""
    meta = dict(help=help, check=check, flag=flag, type=type, cli=cli, free=free, also=also, code=code)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name)


def help_of(f: dataclasses.Field) -> str:
    help = f.metadata.get("help") or ""
    return help() if callable(help) else help


def plain(value: Any) -> Any:
    """A value as JSON holds it (and as two are compared): a function as module:qualname, a tuple as a list."""
    if callable(value):
        return f"{value.__module__}:{value.__qualname__}"
    return list(value) if isinstance(value, tuple) else value


def boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise GradmatchError(f"{what} takes true or false, got {value!r}")
    return value


def declared(what: str):
    """A frozen dataclass of settings whose constructor refuses bad arguments in one line."""
    def decorate(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        cls.what = what
        init = cls.__init__
        names = [f.name for f in fields(cls) if f.init]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            unknown = sorted(set(kwargs) - set(names))
            twice = sorted(set(names[:len(args)]) & set(kwargs))
            missing = [n for n in required if n not in set(names[:len(args)]) | set(kwargs)]
            if unknown or twice or missing or len(args) > len(names):
                problem = (f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}" if unknown else
                           f"{', '.join(twice)} given twice" if twice else f"missing {', '.join(missing)}" if missing
                           else f"{len(args)} positional arguments for {len(names)} settings")
                raise GradmatchError(f"{what}: {problem}; it takes {', '.join(names)}")
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        return cls
    return decorate


class Settings:
    """What every declared part has: ``validate``, ``replace``, ``to_dict``/``from_dict``."""
    what = "settings"

    def label(self, f: dataclasses.Field) -> str:
        return flag_of(f)  # how a message names the setting

    def rules(self) -> List[str]:
        """Cross-field rules of a part whose fields passed their own checks: the failures, as lines."""
        return []

    def problems(self, code: bool = True) -> Tuple[List[str], Any]:
        """(every failure, the normalised copy): each field's declared check, each part's, then the rules."""
        errors, values = [], {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Settings):
                part_errors, values[f.name] = value.problems(code)
                errors += part_errors
                continue
            check, flag = f.metadata.get("check"), self.label(f)
            try:
                if value is None and (f.default is None or str(f.type).startswith("Optional")):
                    pass  # None means "unset" only where the declaration allows it
                elif f.metadata.get("code") and not code and isinstance(value, str) and ":" in value:
                    check_function_name(flag, value)  # a saved run's package.module:function, never imported
                elif check is not None:
                    values[f.name] = check(value, flag)
            except GradmatchError as err:
                errors.append(str(err))
        if errors:
            return errors, self
        normalised = dataclasses.replace(self, **values)
        return normalised.rules(), normalised

    def validate(self, code: bool = True):
        """The normalised copy, or one line naming every failing setting; ``code=False``: user code as a name only."""
        errors, normalised = self.problems(code)
        if len(errors) == 1:
            raise GradmatchError(errors[0])
        if errors:
            raise GradmatchError(f"{len(errors)} settings are invalid: " + "; ".join(errors))
        return normalised

    def replace(self, **changes):
        """A copy with ``changes``; an unknown name is refused in one line."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise GradmatchError(f"{self.what}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                 f"choose from: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: v.to_dict() if isinstance(v, Settings) else plain(v) for name, v in values.items()}

    @classmethod
    def from_dict(cls, d: Any, source: str = "the settings"):
        """The inverse of ``to_dict`` (``validate`` checks the values); unknown settings are refused."""
        if not isinstance(d, dict):
            raise GradmatchError(f"{source}: {cls.what} settings must be a JSON object, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise GradmatchError(f"{source} has unknown {cls.what} settings {', '.join(map(str, unknown))}; it was "
                                 "written by another gradmatch version or edited by hand; fix or remove them")
        values = {}
        for name, value in d.items():
            part = known[name].type
            part = part if isinstance(part, type) else known[name].default_factory
            values[name] = part.from_dict(value, source) if isinstance(part, type) and issubclass(part, Settings) \
                else tuple(value) if isinstance(value, list) and isinstance(known[name].default, tuple) else value
        return cls(**values)
