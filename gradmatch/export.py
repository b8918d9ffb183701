"""``gradmatch export RESULT.pt --to DIR``: a synthetic set as ordinary 8-bit PNGs, one folder per class.

    DIR/<class>/000.png, 001.png, ...   the images de-normalised (pixels = image * std + mean, clamped
                                        to [0, 1]) and rounded to 8 bits; grey for 1 channel, RGB for 3
    DIR/metadata.json                   where they came from: dataset, classes, mean/std, ipc, settings

DIR reads back as gradmatch's ``folder`` dataset (``gradmatch.data.load(DIR)``, ``--dataset DIR``) with
the same labels: the folder dataset numbers classes by their sorted folder names, so when the class
names do not sort in label order (or are not safe as folder names) the folders are named
``<label>_<class>`` with zero-padded labels instead.  Note that the folder dataset normalises with the
mean/std of the images it reads, not with those of the original dataset; both are in metadata.json.

Also here: ``check_normalisation``, which stops ``gradmatch evaluate`` from scoring a set against a test
set normalised differently (its networks would see shifted pixels and score near chance).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .errors import GradmatchError

FORMAT = "gradmatch-export"
FORMAT_VERSION = 1
RESERVED = {"train", "test"}  # the folder dataset reads these as split folders


def folder_names(classes: List[str]) -> List[str]:
    """One folder per class, in label order, such that sorting the folder names gives label order."""
    safe = [re.sub(r"[^\w.+-]", "_", c) for c in classes]
    plain_ok = (safe == list(classes) and len(set(safe)) == len(safe) and sorted(safe) == safe
                and not any(c.startswith(".") or c.lower() in RESERVED or not c for c in safe))
    if plain_ok:
        return safe
    width = len(str(max(len(classes) - 1, 0)))
    return [f"{i:0{width}d}_{s}".rstrip("_") for i, s in enumerate(safe)]


def to_uint8(syn) -> np.ndarray:
    """N x H x W x C uint8: the de-normalised pixels, clamped to [0, 1], rounded to the nearest level."""
    pixels = syn.denormalised()  # clamped to [0, 1]
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _clear(to: Path, folders: List[str], overwrite: bool) -> None:
    if not to.exists():
        return
    if not to.is_dir():
        raise GradmatchError(f"--to {to} is a file; give a folder")
    entries = [p for p in to.iterdir()]
    if not entries:
        return
    if not overwrite:
        raise GradmatchError(f"{to} is not empty; pass --overwrite to replace an earlier export there, or choose "
                             "an empty or new folder")
    # replace what an export writes (its metadata names its folders) and nothing else
    old = []
    try:
        meta = json.loads((to / "metadata.json").read_text())
        if meta.get("format") == FORMAT:
            old = list(meta.get("folders", []))
    except (OSError, ValueError):
        pass
    for name in set(old) | set(folders):
        target = to / name
        if target.is_dir() and target.resolve().parent == to.resolve():
            shutil.rmtree(target)
    (to / "metadata.json").unlink(missing_ok=True)
    left = sorted(p.name for p in to.iterdir())
    if left:
        print(f"warning: {to} also holds {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}, which the "
              "folder dataset would read too")


def export(path, to, experiment: int = -1, overwrite: bool = False, format: str = "png") -> dict:
    """Write experiment ``experiment`` of the set in ``path`` to ``to``; return the metadata written."""
    if format != "png":
        raise GradmatchError(f"unknown export format (--format) '{format}'; choose one of: png")
    from PIL import Image

    from . import __version__
    from .results import load_synthetic, load_torch, save_json

    syn = load_synthetic(path, experiment)
    payload = load_torch(path, "synthetic-set file")
    if syn.channel not in (1, 3):
        raise GradmatchError(f"{path}: images have {syn.channel} channels; PNG export takes 1 (grey) or 3 (RGB)")
    to = Path(to)
    folders = folder_names(list(syn.classes))
    _clear(to, folders, overwrite)
    pixels = to_uint8(syn)
    labels = syn.labels.tolist()
    files, counts = [], [0] * len(folders)
    width = max(3, len(str(max(labels.count(c) for c in range(len(folders))) - 1)))
    for image, label in zip(pixels, labels):
        name = f"{folders[label]}/{counts[label]:0{width}d}.png"
        counts[label] += 1
        (to / folders[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(to / name)
        files.append({"file": name, "label": label})
    n = len(payload["data"])
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "source": str(Path(path).resolve()), "experiment": experiment % n,
        "dataset": syn.dataset, "classes": list(syn.classes), "folders": folders,
        "ipc": syn.ipc, "channels": syn.channel, "image_size": list(syn.im_size),
        "mean": list(syn.mean), "std": list(syn.std),
        "pixels": "round(255 * clamp(image * std + mean, 0, 1)); to renormalise: (png / 255 - mean) / std",
        "config": syn.config, "accs_all_exps": payload.get("accs_all_exps", {}),
        "gradmatch_version": payload.get("gradmatch_version", ""), "exported_by": __version__,
        "files": files,
    }
    save_json(meta, to / "metadata.json")
    return meta


def check_normalisation(syn, test, file, tol: float = 1e-4) -> None:
    """Refuse to evaluate a set on test images normalised with other statistics; DC's files say
    nothing (no dataset saved) and pass."""
    if not syn.dataset:
        return
    same = (len(syn.mean) == len(test.mean) and len(syn.std) == len(test.std)
            and all(abs(float(a) - float(b)) <= tol for a, b in zip((*syn.mean, *syn.std), (*test.mean, *test.std))))
    if not same:
        raise GradmatchError(
            f"{file} was normalised with mean {_fmt(syn.mean)} std {_fmt(syn.std)} ({syn.dataset}), the test set "
            f"{test.name} with mean {_fmt(test.mean)} std {_fmt(test.std)}; networks trained on one and tested on "
            f"the other would see shifted pixels; evaluate on --dataset {syn.dataset}")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4f}" for v in values) + ")"


def read_metadata(folder) -> Optional[dict]:
    """An export's metadata.json, or None when ``folder`` holds none."""
    path = Path(folder) / "metadata.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise GradmatchError(f"{path} is not valid JSON; export the set again") from None
