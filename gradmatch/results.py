"""Results on disk: the DC-compatible .pt, JSON results and the JSON-lines log (checkpoints: ``runstate``).

Every file is written to a temporary name in the same folder and renamed into place, so a crash
(even SIGKILL) never leaves a half-written file nor damages the previous version.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import pickletools
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .synset import SET_FORMAT_VERSION, SyntheticSet  # the format's version lives beside its reader
from .errors import GradmatchError

def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: setting it is process-wide, not safe to repeat beside threads


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsynced, then renamed
    over ``path``: readers see the old file or the new one, never a part of either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_torch(obj: Any, path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def save_json(obj: Any, path) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


class NeedsCode(GradmatchError):
    """A file that only unpickling arbitrary Python objects (running code) could read."""


def needs_code_message(path, what: str, hint: str) -> str:
    return (f"{what} {path} holds Python objects other than tensors and plain data; gradmatch reads such "
            f"files only with weights_only (no code runs when reading); {hint}")


def load_torch(path, what: str = "file", hint: str = "re-save it as tensors/lists/dicts") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain data (dict, list, tuple, str, int,
    float, bool, None) only, so reading a file never runs code from it.  GradmatchError (one line) for
    a missing, unreadable, truncated, corrupt or foreign file, and ``NeedsCode`` for a well-formed
    pickle that names Python objects weights_only refuses (told apart by reading the pickle's opcodes
    with pickletools, which runs nothing)."""
    if not isinstance(path, (str, os.PathLike)):
        raise GradmatchError(f"{what}: give the path of a file (str or pathlib.Path), got {type(path).__name__}")
    path = Path(path)
    if "\0" in str(path):
        raise GradmatchError(f"{what} {str(path)!r} holds a NUL character, which no file name can; fix the path")
    if path.is_dir():
        raise GradmatchError(f"{what} {path} is a folder; give the file")
    if not path.is_file():
        raise GradmatchError(_not_a_file(what, path))
    try:  # the file system's refusal (permissions, I/O) is not a corrupt file: say which
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise GradmatchError(f"{what} {path} cannot be read: {err.strerror}; make it readable to you "
                             "(chmod, or ask its owner)") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: one line only
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _names_python_objects(path):
            raise NeedsCode(needs_code_message(path, what, hint)) from None
        corrupt = err
    except Exception as err:  # noqa: BLE001 - torch raises many types for truncated or foreign files
        corrupt = err
    raise GradmatchError(f"{what} {path} is not a torch file or corrupt (a foreign, truncated or corrupt file: "
                         f"{type(corrupt).__name__}, {path.stat().st_size} bytes); {hint}")


def _not_a_file(what: str, path: Path) -> str:
    """Why ``path``, which is not a regular file or a folder, cannot be read: said as it is."""
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13: a symlink loop
            return f"{what} {path} is a symbolic link that loops back to itself; point it at the file"
        except OSError as err:
            if err.errno == errno.ELOOP:
                return f"{what} {path} is a symbolic link that loops back to itself; point it at the file"
            return (f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist; point it at "
                    "the file")
        return f"{what} {path} is a link to {target}, which is not a file; give the file"
    if os.path.lexists(path):
        return f"{what} {path} is not a regular file (a device, pipe or socket); give the file"
    return f"{what} not found: {path}"


_SCAN_LIMIT = 64 << 20  # a pickle that names objects does so in its first bytes; never read a huge file whole


def _names_python_objects(path: Path) -> bool:
    """Whether ``path`` holds a well-formed pickle (torch's zip ``data.pkl``, or the pickles at the
    start of torch's legacy format or of a plain pickle) that names Python objects (GLOBAL,
    STACK_GLOBAL, INST).  Random or truncated bytes are not a well-formed pickle.  Nothing is
    unpickled: pickletools only decodes the opcodes."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return False
                stream = io.BytesIO(archive.read(member))
        else:
            with open(path, "rb") as f:
                stream = io.BytesIO(f.read(_SCAN_LIMIT))  # BytesIO: a bogus length cannot allocate it
        names = False
        for count in range(5):  # torch's legacy format: magic, protocol, sys info, object, storage keys
            try:
                ops = [op.name for op, _, _ in pickletools.genops(stream)]
            except Exception:  # noqa: BLE001 - not (or no longer) a pickle
                return names if count else False
            names = names or bool({"GLOBAL", "STACK_GLOBAL", "INST"} & set(ops))
            if stream.tell() >= len(stream.getbuffer()):
                break
        return names
    except Exception:  # noqa: BLE001 - an unreadable zip or file is corrupt, not code
        return False


def reference_payload(sets: list[SyntheticSet | dict], accs_all_exps: dict[str, list[float]]) -> dict[str, Any]:
    """DC's layout (``data`` = [[images, labels], ...], ``accs_all_exps``) plus what we need to
    reload a set on its own (class names, normalisation, settings); extra keys do not disturb DC's
    readers.  ``sets`` are SyntheticSets or their ``to_dict()`` form."""
    sets = [SyntheticSet.from_dict(s) if isinstance(s, dict) else s for s in sets]
    return {
        "data": [[s.images.detach().cpu(), s.labels.cpu()] for s in sets],
        "accs_all_exps": accs_all_exps,
        "classes": sets[0].classes if sets else [],
        "mean": sets[0].mean if sets else (),
        "std": sets[0].std if sets else (),
        "dataset": sets[0].dataset if sets else "",
        "config": sets[0].config if sets else {},
        "ipc": sets[0].ipc if sets else 0,
        "source": sets[0].source if sets else None,
        "lr": sets[0].lr if sets else None,
        "format_version": SET_FORMAT_VERSION,
        "gradmatch_version": _version(),
    }


def load_synthetic(path, experiment: int = -1) -> SyntheticSet:
    """Read one experiment's synthetic set from a .pt in DC's layout (ours or DC's own), every key
    checked once (``SyntheticSet.from_payload``): GradmatchError, one line naming the key, if any is
    malformed."""
    return SyntheticSet.from_payload(load_torch(path, "synthetic-set file"), experiment, str(path))


def append_log(path, record: dict[str, Any]) -> None:
    """Append one JSON line.  If the file ends in a line torn by a crash, start on a new line so the
    torn one stays the only casualty (``read_log`` skips it)."""
    line = (json.dumps(record) + "\n").encode()
    with open(path, "ab+") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)


def read_log(path) -> list[dict[str, Any]]:
    """The JSON-lines log in file order; a record repeated by a resumed run (same event, experiment,
    iteration and model) keeps its last copy, in the place of the last copy, and a torn line from a
    crash is skipped."""
    records: dict[tuple, dict[str, Any]] = {}
    if not Path(path).is_file():
        return []
    # bytes that are not UTF-8 (a damaged or foreign file) spoil their line only, which is then skipped
    for line in Path(path).read_bytes().decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if not isinstance(rec, dict):
            continue
        key = tuple(v if v is None or isinstance(v, (str, int, float)) else repr(v)  # a list would not hash
                    for v in (rec.get("event"), rec.get("experiment"), rec.get("iteration"), rec.get("model")))
        records.pop(key, None)
        records[key] = rec
    return list(records.values())


def summarise(accs_all_exps: dict[str, list[float]]) -> dict[str, dict[str, float] | None]:
    out = {}
    for model, accs in accs_all_exps.items():
        t = torch.tensor(accs, dtype=torch.float64)
        out[model] = {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "n": len(accs)} if accs else None
    return out


def _version() -> str:
    from . import __version__  # at call time: gradmatch/__init__ imports this module

    return __version__
