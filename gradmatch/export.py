"""``gradmatch export RESULT.pt --to DIR``: a synthetic set as ordinary 8-bit PNGs, one folder per class,
or (``--format hf``) as a Hugging Face ``datasets`` folder.

    DIR/<class>/000.png, 001.png, ...   the images de-normalised (pixels = image * std + mean, clamped
                                        to [0, 1]) and rounded to 8 bits; grey for 1 channel, RGB for 3
    DIR/metadata.json                   where they came from: dataset, classes, mean/std, ipc, settings

DIR reads back as gradmatch's ``folder`` dataset (``gradmatch.data.load(DIR)``, ``--dataset DIR``) with
the same labels: the folder dataset numbers classes by their sorted folder names, so when the class
names do not sort in label order (or are not safe as folder names: characters other than letters,
digits and ``_.+-``, longer than 255 bytes in UTF-8, equal but for case, reserved or hidden) the folders
are named ``<label>_<class>`` with zero-padded labels and the name cut to 255 bytes instead.  Note that
the folder dataset normalises with the mean/std of the images it reads, not with those of the original
dataset; both are in metadata.json.

``--format hf`` writes ``datasets.Dataset.save_to_disk(DIR)`` (read it with ``datasets.load_from_disk``):
features ``image`` (``datasets.Image()``, the same 8-bit pixels as the PNGs) and ``label``
(``datasets.ClassLabel`` with the class names), the metadata as JSON in ``info.description``, and
metadata.json beside it.  ``--format ddranking`` writes DD-Ranking's images.pt (class-major, normalised with
DD-Ranking's constants for the dataset), labels.pt and lr.pt (``gradmatch.sets``), metadata.json beside them.

Nothing is half-written and nothing is written through a link: the export is written into a fresh
hidden folder inside DIR and moved into place only when every file is written (metadata.json last); on
any failure (a full disk, a read-only folder) that folder is removed and DIR is as it was, an earlier
export included.  ``--overwrite`` moves the earlier export's entries (as its metadata.json names them)
and those the new one writes aside and deletes them; a symbolic link among them is removed, never
followed.  A DIR that is itself a link is the folder it points to (the user named it).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from .errors import GradmatchError, warn
from .results import load_torch, save_json
from .synset import SyntheticSet

FORMAT = "gradmatch-export"
FORMAT_VERSION = 1
FORMATS = ("png", "hf", "ddranking")
RESERVED = {"train", "test", "metadata.json"}  # split folders for the folder dataset; our metadata file
NAME_BYTES = 255  # the longest name of one file or folder on common file systems (ext4, APFS, NTFS)
STAGING, REPLACED = ".gradmatch-export-", ".gradmatch-replaced-"  # hidden: the folder dataset skips them
METADATA = "metadata.json"


def folder_names(classes: List[str]) -> List[str]:
    """One folder per class, in label order, such that sorting the folder names gives label order; the
    names are distinct even where case or Unicode normalisation is ignored, and at most 255 bytes."""
    safe = [re.sub(r"[^\w.+-]", "_", unicodedata.normalize("NFC", c)) for c in classes]
    folded = {unicodedata.normalize("NFC", s).casefold() for s in safe}  # macOS, Windows: Cat is cat
    plain_ok = (safe == list(classes) and len(folded) == len(safe) and sorted(safe) == safe
                and all(len(s.encode()) <= NAME_BYTES for s in safe)
                and not any(c.startswith(".") or c.lower() in RESERVED or not c for c in safe))
    if plain_ok:
        return safe
    width = len(str(max(len(classes) - 1, 0)))  # the labels make the names distinct and ordered
    return [f"{i:0{width}d}_{_cut(s, NAME_BYTES - width - 1)}".rstrip("_") for i, s in enumerate(safe)]


def _cut(name: str, limit: int) -> str:
    """``name`` cut to ``limit`` bytes of UTF-8 without splitting a character."""
    return name.encode()[:limit].decode("utf-8", "ignore")


def to_uint8(syn) -> np.ndarray:
    """N x H x W x C uint8: the de-normalised pixels, clamped to [0, 1], rounded to the nearest level."""
    pixels = syn.denormalised()  # clamped to [0, 1]
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise GradmatchError("--format hf needs the Hugging Face datasets package: pip install gradmatch[hf] "
                             "(or pip install datasets)") from None
    return datasets


def export(path, to, experiment: int = -1, overwrite: bool = False, format: str = "png") -> dict:
    """Write experiment ``experiment`` of the set in ``path`` to ``to``; return the metadata written
    (the same keys for both formats; ``files`` has one entry per image, in the set's order)."""
    if format not in FORMATS:
        raise GradmatchError(f"unknown export format (--format) '{format}'; choose one of: {', '.join(FORMATS)}")
    datasets = _import_datasets() if format == "hf" else None  # before any work

    from . import __version__

    payload = load_torch(path, "synthetic-set file")
    syn = SyntheticSet.from_payload(payload, experiment, str(path))  # every key checked
    if syn.channel not in (1, 3):
        raise GradmatchError(f"{path}: images have {syn.channel} channels; {format} export takes 1 (grey) or 3 "
                             "(RGB)")
    to, made = _folder(Path(to))
    try:
        old, extra = _earlier_export(to), _others(to)
    except OSError as err:  # a folder that cannot be listed
        _remove_made(made)
        raise _write_error(to, err, None) from None
    if extra and not overwrite:
        raise _not_empty(to)
    folders = folder_names(list(syn.classes)) if format == "png" else []
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "export_format": format,
        "source": str(Path(path).resolve()), "experiment": experiment % len(payload["data"]),
        "dataset": syn.dataset, "classes": list(syn.classes), "folders": folders,
        "ipc": syn.ipc, "channels": syn.channel, "image_size": list(syn.im_size),
        "mean": list(syn.mean), "std": list(syn.std),
        "pixels": "round(255 * clamp(image * std + mean, 0, 1)); to renormalise: (png / 255 - mean) / std",
        "config": syn.config, "accs_all_exps": payload.get("accs_all_exps") or {}, "source_data": syn.source,
        "gradmatch_version": payload.get("gradmatch_version") or "", "exported_by": __version__,
    }
    if format == "png":
        write = _png_writer(syn, folders, meta)
    elif format == "hf":
        write = _hf_writer(syn, meta, datasets)
    else:
        write = _ddranking_writer(syn, meta)
    _write_in_place(to, write, meta, old, overwrite, made)
    if format == "png":
        replaced = {*old, *meta["written"], METADATA}
        left = [name for name in extra if name not in replaced and not name.startswith(".")]
        if left:
            warn(f"{to} also holds {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}, which the folder "
                 "dataset would read too")
    return meta


def _png_writer(syn, folders: List[str], meta: dict) -> Callable[[Path], None]:
    def write(stage: Path) -> None:
        from PIL import Image

        labels = syn.labels.tolist()
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
    return write


def _ddranking_writer(syn, meta: dict) -> Callable[[Path], None]:
    from .sets import write_ddranking

    lr = syn.lr or syn.config.get("lr_net") or 0.01  # the rate its networks trained at (the seed's default)

    def write(stage: Path) -> None:
        meta["files"] = [{"file": name} for name in write_ddranking(syn, stage, lr)]
        meta["lr"] = lr
    return write


def _hf_writer(syn, meta: dict, datasets) -> Callable[[Path], None]:
    def write(stage: Path) -> None:
        features = datasets.Features({"image": datasets.Image(),
                                      "label": datasets.ClassLabel(names=list(syn.classes))})
        described = {k: v for k, v in meta.items() if k not in ("files", "written", "folders")}
        info = datasets.DatasetInfo(description=json.dumps(described, default=str), features=features)
        images = [image[..., 0] if image.shape[2] == 1 else image for image in to_uint8(syn)]
        labels = syn.labels.tolist()
        table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features, info=info)
        quiet = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # the CLI prints one line
        try:
            table.save_to_disk(str(stage), num_shards=1)
        finally:
            if not quiet:
                datasets.enable_progress_bars()
        shard = "data-00000-of-00001.arrow"
        meta["files"] = [{"file": shard, "row": row, "label": label} for row, label in enumerate(labels)]
    return write


# ---- writing safely -------------------------------------------------------------------------------------
def _folder(to: Path) -> tuple:
    """The folder to export into (a link named by --to is followed) and the folders made for it, which a
    failure removes again."""
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
        try:
            folder.rmdir()
        except OSError:  # not made after all, or not empty: leave it
            continue


def _is_ours(entry: Path) -> bool:
    """A folder a killed export left (staging or replaced entries): hidden, never read, cleared by
    --overwrite."""
    return entry.name.startswith((STAGING, REPLACED)) and entry.is_dir() and not entry.is_symlink()


def _earlier_export(to: Path) -> List[str]:
    """The entries an earlier export wrote in ``to`` (its metadata.json names them), names only."""
    path = to / METADATA
    if path.is_symlink() or not path.is_file():
        return []
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return []
    names = meta.get("written") or meta.get("folders") or []
    return [n for n in names if isinstance(n, str) and n not in ("", ".", "..") and "/" not in n
            and "\\" not in n and not n.startswith((STAGING, REPLACED))] if isinstance(names, list) else []


def _others(to: Path) -> List[str]:
    """What ``to`` holds other than what a killed export left, sorted."""
    return sorted(p.name for p in to.iterdir() if not _is_ours(p))


def _not_empty(to: Path) -> GradmatchError:
    return GradmatchError(f"{to} is not empty; pass --overwrite to replace an earlier export there, or choose an "
                          "empty or new folder")


def _write_in_place(to: Path, write: Callable[[Path], None], meta: dict, old: List[str], overwrite: bool,
                    made: List[Path]) -> None:
    """``write`` into a fresh hidden folder inside ``to``, then swap its entries in (metadata.json
    last); on any failure remove what was written and leave ``to`` as it was."""
    stage = None
    try:
        stage = Path(tempfile.mkdtemp(prefix=STAGING, dir=to))
        write(stage)
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


def _swap_in(to: Path, stage: Path, names: List[str], old: List[str], overwrite: bool) -> None:
    """Move the earlier export's entries and any entry in the way aside (links are moved, not
    followed), move the new ones in, metadata.json last; then delete the old.  A failure moves
    everything back."""
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


_ADVICE = {errno.ENOSPC: "free some space or choose a --to on another disk",
           errno.EDQUOT: "free some space or choose a --to on another disk",
           errno.EROFS: "choose a --to you can write to", errno.EACCES: "choose a --to you can write to",
           errno.EPERM: "choose a --to you can write to", errno.ENAMETOOLONG: "choose a shorter --to"}


def _write_error(to: Path, err: OSError, old: Optional[List[str]]) -> GradmatchError:
    what = err.strerror or str(err) or type(err).__name__
    where = f" ({err.filename})" if err.filename else ""
    kept = "; an earlier export there is intact" if old else ""
    return GradmatchError(f"cannot write the export to {to}: {what}{where}; nothing was written{kept}; "
                          f"{_ADVICE.get(err.errno, 'check --to and try again')}")
