"""One error type for everything a user can get wrong.

The CLI prints ``GradmatchError`` as a single line (no traceback) and exits with code 2, so the
message must name what was wrong and how to fix it.
"""


class GradmatchError(Exception):
    """A user-facing error: bad name, missing or corrupt file, impossible setting."""


def unknown_name(kind: str, name: str, valid) -> GradmatchError:
    """Error for an unknown registry name that lists the valid choices."""
    return GradmatchError(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(valid))}")


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr: allowed, but probably not what was meant."""
    import sys

    print(f"warning: {message}", file=sys.stderr)
