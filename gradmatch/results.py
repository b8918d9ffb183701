"""Results on disk: the DC-compatible .pt, JSON and the JSON-lines log, each written to a temporary name and
renamed into place, so a crash (even SIGKILL) never leaves a half-written file nor damages the previous one."""
from __future__ import annotations

import contextlib
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

from .errors import GradmatchError
from .synset import SET_FORMAT_VERSION, SyntheticSet  # the format's version lives beside its reader

_UMASK = os.umask(0)  # read once (setting it is process-wide, not safe to repeat beside threads), then restored
os.umask(_UMASK)


def atomic_write(path, data: bytes) -> None:
    """Through a fsynced temporary file renamed over ``path``: readers see the old file or the new, never a part."""
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
    with contextlib.suppress(OSError):  # the rename made durable (POSIX), where folders can be opened
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_torch(obj: Any, path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def save_json(obj: Any, path) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def read_json_object(path) -> dict:
    """The JSON object in ``path``; {} where it is not a regular file, unreadable or not an object."""
    try:
        obj = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


class NeedsCode(GradmatchError):
    """A file that only unpickling arbitrary Python objects (running code) could read."""


def load_torch(path, what: str = "file", hint: str = "re-save it as tensors/lists/dicts") -> Any:
    """``torch.load`` with ``weights_only=True``, so reading a file never runs code from it; one line for a
    missing, unreadable or corrupt file, and ``NeedsCode`` for a well-formed pickle that names Python objects."""
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
            raise NeedsCode(f"{what} {path} holds Python objects other than tensors and plain data; gradmatch reads "
                            f"such files only with weights_only (no code runs when reading); {hint}") from None
        corrupt = err
    except Exception as err:  # noqa: BLE001 - torch raises many types for truncated or foreign files
        corrupt = err
    raise GradmatchError(f"{what} {path} is not a torch file or corrupt (a foreign, truncated or corrupt file: "
                         f"{type(corrupt).__name__}, {path.stat().st_size} bytes); {hint}")


def _not_a_file(what: str, path: Path) -> str:
    """Why ``path``, which is not a regular file or a folder, cannot be read."""
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop before Python 3.13
            if isinstance(err, RuntimeError) or err.errno == errno.ELOOP:
                return f"{what} {path} is a symbolic link that loops back to itself; point it at the file"
            return (f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist; point it at "
                    "the file")
        return f"{what} {path} is a link to {target}, which is not a file; give the file"
    if os.path.lexists(path):
        return f"{what} {path} is not a regular file (a device, pipe or socket); give the file"
    return f"{what} not found: {path}"


_SCAN_LIMIT = 64 << 20  # a pickle that names objects does so in its first bytes; never read a huge file whole


def _names_python_objects(path: Path) -> bool:
    """Whether ``path`` holds a well-formed pickle (torch's zip ``data.pkl``, torch's legacy format, a plain
    pickle) that names Python objects.  Nothing is unpickled: pickletools only decodes the opcodes."""
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
    """DC's layout (``data`` = [[images, labels], ...], ``accs_all_exps``) plus what reloads a set on its own
    (class names, normalisation, settings); extra keys do not disturb DC's readers."""
    from . import __version__  # at call time: gradmatch/__init__ imports this module

    sets = [SyntheticSet.from_dict(s) if isinstance(s, dict) else s for s in sets]
    empty = {"classes": [], "mean": (), "std": (), "dataset": "", "config": {}, "ipc": 0, "source": None, "lr": None}
    return {"data": [[s.images.detach().cpu(), s.labels.cpu()] for s in sets], "accs_all_exps": accs_all_exps,
            **{key: getattr(sets[0], key) if sets else value for key, value in empty.items()},
            "format_version": SET_FORMAT_VERSION, "gradmatch_version": __version__}


def load_synthetic(path, experiment: int = -1) -> SyntheticSet:
    """One experiment's synthetic set from a .pt in DC's layout (ours or DC's own), every key checked."""
    return SyntheticSet.from_payload(load_torch(path, "synthetic-set file"), experiment, str(path))


def append_log(path, record: dict[str, Any]) -> None:
    """Append one JSON line, on a new line after one torn by a crash (which ``read_log`` skips)."""
    line = (json.dumps(record) + "\n").encode()
    with open(path, "ab+") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)


def read_log(path) -> list[dict[str, Any]]:
    """The JSON-lines log in file order; a record repeated by a resumed run (same event, experiment, iteration
    and model) keeps its last copy, in its place, and a torn line is skipped."""
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

