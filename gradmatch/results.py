"""Results on disk: the DC-compatible .pt, JSON results and the JSON-lines log (checkpoints: ``runstate``).

Every file is written to a temporary name in the same folder and renamed into place, so a crash
(even SIGKILL) never leaves a half-written file nor damages the previous version.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from .synset import SyntheticSet
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
    a missing, truncated or corrupt file, and ``NeedsCode`` for one that holds other objects."""
    path = Path(path)
    if not path.is_file():
        raise GradmatchError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            raise NeedsCode(needs_code_message(path, what, hint)) from None
        size = path.stat().st_size
        raise GradmatchError(f"{what} {path} is truncated or corrupt ({type(err).__name__}, {size} bytes); "
                             f"{hint}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for truncated or foreign files
        size = path.stat().st_size
        raise GradmatchError(f"{what} {path} is truncated or corrupt ({type(err).__name__}, {size} bytes); "
                             f"{hint}") from None


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
        "format_version": SET_FORMAT_VERSION,
        "gradmatch_version": _version(),
    }


def load_synthetic(path, experiment: int = -1) -> SyntheticSet:
    """Read one experiment's synthetic set from a .pt in DC's layout (ours or DC's own)."""
    payload = load_torch(path, "synthetic-set file")
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), (list, tuple)) or not payload["data"]:
        raise GradmatchError(f"{path} holds no synthetic set (expected a dict with 'data' as DC saves it)")
    try:
        entry = payload["data"][experiment]
    except (IndexError, TypeError):
        raise GradmatchError(f"{path} has {len(payload['data'])} experiments; "
                             f"--experiment {experiment} is out of range") from None
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2
            and all(isinstance(t, torch.Tensor) for t in entry)):
        raise GradmatchError(f"{path}: data[{experiment}] is not an [images, labels] pair of tensors, as DC "
                             "saves each experiment's set")
    images, labels = entry
    if images.dim() != 4 or labels.dim() != 1 or len(labels) != len(images) or not len(labels):
        raise GradmatchError(f"{path}: data[{experiment}] holds images {tuple(images.shape)} and labels "
                             f"{tuple(labels.shape)}; expected N images (N, C, H, W) and N labels")
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise GradmatchError(f"{path}: data[{experiment}] holds non-finite (nan or inf) pixels; it cannot be "
                             "evaluated; use a set saved before the values diverged")
    if labels.is_floating_point() or int(labels.min()) < 0:
        raise GradmatchError(f"{path}: data[{experiment}]'s labels must be class indices 0, 1, ...")
    num_classes = int(labels.max()) + 1
    channels = images.shape[1]
    if int(payload.get("format_version", 0)) > SET_FORMAT_VERSION:  # a newer layout: refuse, not misread
        raise GradmatchError(f"{path} is a set of format {payload['format_version']} (gradmatch "
                             f"{payload.get('gradmatch_version', '?')}); this gradmatch reads up to "
                             f"{SET_FORMAT_VERSION}; upgrade gradmatch")
    return SyntheticSet(images=images.float(), labels=labels.long(),
                        classes=list(payload.get("classes") or [str(c) for c in range(num_classes)]),
                        mean=tuple(payload.get("mean") or (0.0,) * channels),
                        std=tuple(payload.get("std") or (1.0,) * channels),
                        dataset=payload.get("dataset", ""), config=dict(payload.get("config") or {}))


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
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        key = (rec.get("event"), rec.get("experiment"), rec.get("iteration"), rec.get("model"))
        records.pop(key, None)
        records[key] = rec
    return list(records.values())


def summarise(accs_all_exps: dict[str, list[float]]) -> dict[str, dict[str, float] | None]:
    out = {}
    for model, accs in accs_all_exps.items():
        t = torch.tensor(accs, dtype=torch.float64)
        out[model] = {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "n": len(accs)} if accs else None
    return out


SET_FORMAT_VERSION = 1  # the .pt of a synthetic set: DC's layout + reference_payload's metadata keys


def _version() -> str:
    from . import __version__  # at call time: gradmatch/__init__ imports this module

    return __version__
