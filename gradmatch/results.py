"""Results on disk: the DC-compatible .pt, JSON results, checkpoints and the JSON-lines log.

Every file is written to a temporary name in the same folder and renamed into place, so a crash
(even SIGKILL) never leaves a half-written file nor damages the previous version.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .condense import SyntheticSet
from .errors import GradmatchError

CHECKPOINT_VERSION = 1


def atomic_write(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_torch(obj: Any, path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def save_json(obj: Any, path) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def load_torch(path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise GradmatchError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise GradmatchError(f"{what} {path} is truncated or corrupt ({type(err).__name__}); "
                             "delete it or point at another file") from None


def reference_payload(sets: List[SyntheticSet], accs_all_exps: Dict[str, List[float]]) -> Dict[str, Any]:
    """DC's layout (``data`` = [[images, labels], ...], ``accs_all_exps``) plus what we need to
    reload a set on its own (class names, normalisation, settings); extra keys do not disturb DC's
    readers."""
    return {
        "data": [[s.images.detach().cpu(), s.labels.cpu()] for s in sets],
        "accs_all_exps": accs_all_exps,
        "classes": sets[0].classes if sets else [],
        "mean": sets[0].mean if sets else (),
        "std": sets[0].std if sets else (),
        "dataset": sets[0].dataset if sets else "",
        "config": sets[0].config if sets else {},
    }


def load_synthetic(path, experiment: int = -1) -> SyntheticSet:
    """Read one experiment's synthetic set from a .pt in DC's layout (ours or DC's own)."""
    payload = load_torch(path, "synthetic-set file")
    if not isinstance(payload, dict) or not payload.get("data"):
        raise GradmatchError(f"{path} holds no synthetic set (expected a dict with 'data' as DC saves it)")
    try:
        images, labels = payload["data"][experiment]
    except IndexError:
        raise GradmatchError(f"{path} has {len(payload['data'])} experiments; "
                             f"--experiment {experiment} is out of range") from None
    num_classes = int(labels.max()) + 1
    channels = images.shape[1]
    return SyntheticSet(images=images.float(), labels=labels.long(),
                        classes=list(payload.get("classes") or [str(c) for c in range(num_classes)]),
                        mean=tuple(payload.get("mean") or (0.0,) * channels),
                        std=tuple(payload.get("std") or (1.0,) * channels),
                        dataset=payload.get("dataset", ""), config=dict(payload.get("config") or {}))


def load_checkpoint(path) -> Dict[str, Any]:
    ckpt = load_torch(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise GradmatchError(f"checkpoint {path} is not a gradmatch checkpoint of version "
                             f"{CHECKPOINT_VERSION}; start the run again with --overwrite")
    return ckpt


def append_log(path, record: Dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path) -> List[Dict[str, Any]]:
    """The JSON-lines log; lines repeated by a resumed run (same event, experiment and iteration)
    keep their last copy, and a torn last line from a crash is skipped."""
    records: Dict[tuple, Dict[str, Any]] = {}
    if not Path(path).is_file():
        return []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[(rec.get("event"), rec.get("experiment"), rec.get("iteration"), rec.get("model"))] = rec
    return list(records.values())


def summarise(accs_all_exps: Dict[str, List[float]]) -> Dict[str, Optional[Dict[str, float]]]:
    out = {}
    for model, accs in accs_all_exps.items():
        t = torch.tensor(accs, dtype=torch.float64)
        out[model] = {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "n": len(accs)} if accs else None
    return out
