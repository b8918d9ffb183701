"""``gradmatch export RESULT.pt --to DIR``: a synthetic set as 8-bit PNGs, one folder per class (read back by the
``folder`` dataset with the same labels), as a Hugging Face ``datasets`` folder or in DD-Ranking's layout, with
``DIR/metadata.json``.  The export is staged in a hidden folder inside DIR and moved into place when every file is
written, never through a link: a failure leaves DIR as it was, an earlier export included."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .checks import NAME_BYTES
from .data.hf import quiet
from .errors import GradmatchError, warn
from .results import load_torch, read_json_object, save_json
from .synset import SyntheticSet

FORMAT = "gradmatch-export"
FORMAT_VERSION = 1
FORMATS = ("png", "hf", "ddranking")
RESERVED = {"train", "test", "metadata.json"}  # split folders for the folder dataset; our metadata file
STAGING, REPLACED = ".gradmatch-export-", ".gradmatch-replaced-"  # hidden: the folder dataset skips them
METADATA = "metadata.json"


def folder_names(classes: List[str]) -> List[str]:
    """Folder names that sort in label order and stay distinct where case or Unicode normalisation is ignored."""
    safe = [re.sub(r"[^\w.+-]", "_", unicodedata.normalize("NFC", c)) for c in classes]
    folded = {unicodedata.normalize("NFC", s).casefold() for s in safe}  # macOS, Windows: Cat is cat
    plain_ok = (safe == list(classes) and len(folded) == len(safe) and sorted(safe) == safe
                and all(len(s.encode()) <= NAME_BYTES for s in safe)
                and not any(c.startswith(".") or c.lower() in RESERVED or not c for c in safe))
    if plain_ok:
        return safe
    width = len(str(max(len(classes) - 1, 0)))  # the labels make the names distinct and ordered
    limit = NAME_BYTES - width - 1  # bytes of UTF-8 left for the name, cut without splitting a character
    return [f"{i:0{width}d}_{s.encode()[:limit].decode('utf-8', 'ignore')}".rstrip("_") for i, s in enumerate(safe)]


def to_uint8(syn) -> np.ndarray:
    """N x H x W x C uint8: the de-normalised pixels, clamped to [0, 1], rounded to the nearest level."""
    return (syn.denormalised() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def export(path, to, experiment: int = -1, overwrite: bool = False, format: str = "png") -> dict:
    """Write experiment ``experiment`` of the set in ``path`` to ``to``; the metadata written."""
    if format not in FORMATS:
        raise GradmatchError(f"unknown export format (--format) '{format}'; choose one of: {', '.join(FORMATS)}")
    if format == "hf":  # before any work
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise GradmatchError("--format hf needs the Hugging Face datasets package: pip install gradmatch[hf] "
                                 "(or pip install datasets)") from None

    from . import __version__

    payload = load_torch(path, "synthetic-set file")
    syn = SyntheticSet.from_payload(payload, experiment, str(path))  # every key checked
    if syn.channel not in (1, 3):
        raise GradmatchError(f"{path}: images have {syn.channel} channels; {format} export takes 1 (grey) or 3 (RGB)")
    to, made = _folder(Path(to))
    try:
        old, extra = _earlier_export(to), _others(to)
    except OSError as err:  # a folder that cannot be listed
        _remove_made(made)
        raise _write_error(to, err, None) from None
    if extra and not overwrite:
        raise _not_empty(to)
    folders = folder_names(list(syn.classes)) if format == "png" else []
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "export_format": format,
            "source": str(Path(path).resolve()), "experiment": experiment % len(payload["data"]),
            "dataset": syn.dataset, "classes": list(syn.classes), "folders": folders, "ipc": syn.ipc,
            "channels": syn.channel, "image_size": list(syn.im_size), "mean": list(syn.mean), "std": list(syn.std),
            "pixels": "round(255 * clamp(image * std + mean, 0, 1)); to renormalise: (png / 255 - mean) / std",
            "config": syn.config, "accs_all_exps": payload.get("accs_all_exps") or {}, "source_data": syn.source,
            "gradmatch_version": payload.get("gradmatch_version") or "", "exported_by": __version__}
    write = {"png": _write_png, "hf": _write_hf, "ddranking": _write_ddranking}[format]
    stage = None  # written in a hidden folder inside ``to``, then swapped in: a failure leaves ``to`` as it was
    try:
        stage = Path(tempfile.mkdtemp(prefix=STAGING, dir=to))
        write(syn, meta, stage)
        meta["written"] = sorted(p.name for p in stage.iterdir())
        save_json(meta, stage / METADATA)
        _swap_in(to, stage, meta["written"], old, overwrite)
    except BaseException as err:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        _remove_made(made)
        if isinstance(err, OSError):
            raise _write_error(to, err, old) from None
        raise
    shutil.rmtree(stage, ignore_errors=True)  # empty by now
    if format == "png":
        replaced = {*old, *meta["written"], METADATA}
        left = [name for name in extra if name not in replaced and not name.startswith(".")]
        if left:
            warn(f"{to} also holds {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}, which the folder "
                 "dataset would read too")
    return meta


def _write_png(syn, meta: dict, stage: Path) -> None:
    from PIL import Image

    folders, labels = meta["folders"], syn.labels.tolist()
    files, counts = [], [0] * len(folders)
    width = max(3, len(str(max(labels.count(c) for c in range(len(folders))) - 1)))
    for folder in sorted(set(folders[label] for label in labels)):
        (stage / folder).mkdir()
    for image, label in zip(to_uint8(syn), labels):
        name = f"{folders[label]}/{counts[label]:0{width}d}.png"
        counts[label] += 1
        Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(stage / name)
        files.append({"file": name, "label": label})
    meta["files"] = files


def _write_ddranking(syn, meta: dict, stage: Path) -> None:
    from .sets import write_ddranking

    lr = syn.lr or syn.config.get("lr_net") or 0.01  # the rate its networks trained at (the seed's default)
    meta["files"] = [{"file": name} for name in write_ddranking(syn, stage, lr)]
    meta["lr"] = lr


def _write_hf(syn, meta: dict, stage: Path) -> None:
    import datasets  # there: export() checked

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(syn.classes))})
    described = {k: v for k, v in meta.items() if k not in ("files", "written", "folders")}
    info = datasets.DatasetInfo(description=json.dumps(described, default=str), features=features)
    images = [image[..., 0] if image.shape[2] == 1 else image for image in to_uint8(syn)]
    labels = syn.labels.tolist()
    table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features, info=info)
    with quiet(datasets):  # the CLI prints one line
        table.save_to_disk(str(stage), num_shards=1)
    meta["files"] = [{"file": "data-00000-of-00001.arrow", "row": row, "label": label}
                     for row, label in enumerate(labels)]


# ---- writing safely -------------------------------------------------------------------------------------
def _folder(to: Path) -> tuple:
    """The folder to export into (a link named by --to is followed) and the folders made for it."""
    if "\0" in str(to):
        raise GradmatchError(f"--to {str(to)!r} holds a NUL character, which no folder name can; fix the path")
    if to.is_symlink():
        try:
            real = to.resolve()
        except (OSError, RuntimeError):  # a loop of links (Python < 3.13 raises for it)
            raise GradmatchError(f"--to {to} is a symbolic link that loops back to itself; pass a folder") from None
        if not real.is_dir():
            raise GradmatchError(f"--to {to} is a link to {real}, which is not a folder; pass a folder")
        return real, []
    if to.exists() and not to.is_dir():
        raise GradmatchError(f"--to {to} is a file; give a folder")
    made = [p for p in (to, *to.parents) if not os.path.lexists(p)][::-1]
    try:
        for folder in made:
            folder.mkdir()
    except OSError as err:
        _remove_made(made)
        raise _write_error(to, err, None) from None
    return to, made


def _remove_made(made: List[Path]) -> None:
    for folder in reversed(made):
        with contextlib.suppress(OSError):  # not made after all, or not empty: leave it
            folder.rmdir()


def _is_ours(entry: Path) -> bool:
    """A folder a killed export left: hidden, never read, cleared by --overwrite."""
    return entry.name.startswith((STAGING, REPLACED)) and entry.is_dir() and not entry.is_symlink()


def _earlier_export(to: Path) -> List[str]:
    """The entries an earlier export wrote in ``to`` (its metadata.json names them), names only."""
    meta = {} if (to / METADATA).is_symlink() else read_json_object(to / METADATA)
    if meta.get("format") != FORMAT:
        return []
    names = meta.get("written") or meta.get("folders") or []
    return [n for n in names if isinstance(n, str) and n not in ("", ".", "..") and "/" not in n
            and "\\" not in n and not n.startswith((STAGING, REPLACED))] if isinstance(names, list) else []


def _others(to: Path) -> List[str]:
    return sorted(p.name for p in to.iterdir() if not _is_ours(p))


def _not_empty(to: Path) -> GradmatchError:
    return GradmatchError(f"{to} is not empty; pass --overwrite to replace an earlier export there, or choose an "
                          "empty or new folder")


def _swap_in(to: Path, stage: Path, names: List[str], old: List[str], overwrite: bool) -> None:
    """Move the earlier export's entries and any in the way aside (links are moved, not followed), the new ones
    in, metadata.json last; then delete the old.  A failure moves everything back."""
    if not overwrite and _others(to):  # written to meanwhile
        raise _not_empty(to)
    aside = Path(tempfile.mkdtemp(prefix=REPLACED, dir=to))
    moved_out, moved_in = [], []
    try:
        for name in sorted(set(old) | set(names) | {METADATA}):
            if os.path.lexists(to / name):
                os.rename(to / name, aside / name)
                moved_out.append(name)
        for name in [*names, METADATA]:
            os.rename(stage / name, to / name)
            moved_in.append(name)
    except BaseException as err:
        try:
            for name in reversed(moved_in):
                os.rename(to / name, stage / name)
            for name in reversed(moved_out):
                os.rename(aside / name, to / name)
            aside.rmdir()
        except OSError:  # the earlier export is kept in ``aside``: never deleted
            raise GradmatchError(f"exporting to {to} failed half-way ({err}) and could not be undone; move the "
                                 f"entries of {aside} (the earlier export) back into {to}") from None
        raise
    shutil.rmtree(aside, ignore_errors=True)  # rmtree removes links, never what they point to
    if overwrite:  # what killed exports left
        for entry in to.iterdir():
            if _is_ours(entry) and entry != stage:
                shutil.rmtree(entry, ignore_errors=True)


_ADVICE = {**dict.fromkeys((errno.ENOSPC, errno.EDQUOT), "free some space or choose a --to on another disk"),
           **dict.fromkeys((errno.EROFS, errno.EACCES, errno.EPERM), "choose a --to you can write to"),
           errno.ENAMETOOLONG: "choose a shorter --to"}


def _write_error(to: Path, err: OSError, old: Optional[List[str]]) -> GradmatchError:
    what = err.strerror or str(err) or type(err).__name__
    where = f" ({err.filename})" if err.filename else ""
    kept = "; an earlier export there is intact" if old else ""
    return GradmatchError(f"cannot write the export to {to}: {what}{where}; nothing was written{kept}; "
                          f"{_ADVICE.get(err.errno, 'check --to and try again')}")
