"""Other tools' synthetic sets (DC's, IDC's, DD-Ranking's, MTT's layouts, folders of images), read as they are
and brought into the evaluation's space (``STORED``: how their pixels are normalised); DD-Ranking's layout written."""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .errors import GradmatchError, warn
from .results import load_synthetic, load_torch, read_json_object, save_torch
from .synset import SyntheticSet

STORED = ("ours", "vico", "ddranking", "pixels", "zca")
VICO = {"MNIST": ((0.1307,), (0.3081,)), "FashionMNIST": ((0.2861,), (0.3530,)),
        "SVHN": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
        "CIFAR10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        "CIFAR100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762))}  # DC utils.py:17-62
DDRANKING = {**VICO, "CIFAR100": VICO["CIFAR10"]}  # ddranking/utils/data.py:58-96, IDC data.py:15-26
LAYOUTS = {"pt": "DC's layout", "idc": "IDC's data.pt", "ddranking": "DD-Ranking's layout",
           "mtt": "MTT's layout", "folder": "a folder of class subfolders"}
ZCA_EPS = 0.1  # MTT utils.py:137-165, ddranking/utils/data.py:179-210


def constants(stored: str, dataset: str) -> Optional[Tuple[tuple, tuple]]:
    return {"vico": VICO, "ddranking": DDRANKING}.get(stored, {}).get(dataset)


def layout_of(path: Path) -> str:
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if {"images.pt", "labels.pt"} <= names:
            return "ddranking"
        if {"images_best.pt", "labels_best.pt"} <= names:
            return "mtt"
        return "folder"
    return "pt"


def _tensor(path: Path, what: str) -> torch.Tensor:
    value = load_torch(path, what)
    if not isinstance(value, torch.Tensor):
        raise GradmatchError(f"{what} {path} holds {type(value).__name__}, not a tensor")
    return value


def read_set(path, experiment: int = -1, stored: Optional[str] = None, factor: int = 1) -> Tuple[SyntheticSet, str]:
    """(the set at ``path``, how its pixels are stored): ``stored`` says it where the layout does not (MTT's)."""
    path = Path(path)
    layout = layout_of(path)
    if layout == "pt":
        payload = load_torch(path, "synthetic-set file")
        if isinstance(payload, (list, tuple)) and len(payload) == 2:
            layout, default = "idc", "pixels"
            syn = SyntheticSet.from_payload({"data": [list(payload)]}, -1, str(path))
        else:
            syn, default = load_synthetic(path, experiment), "ours"
    elif layout == "folder":
        from .data import load

        real = load(str(path), split="train", test_fraction=0)
        syn, default = SyntheticSet(images=real.images, labels=real.labels, classes=real.classes, mean=real.mean,
                                    std=real.std, config={"read_from": str(path)}), "ours"
    else:
        names = ("images.pt", "labels.pt") if layout == "ddranking" else ("images_best.pt", "labels_best.pt")
        images, labels = (_tensor(path / n, "synthetic-set file") for n in names)
        syn = SyntheticSet.from_payload({"data": [[images, labels]]}, -1, str(path))
        meta = read_json_object(path / "metadata.json")  # a gradmatch export says its dataset and classes
        meta = meta if meta.get("format") == "gradmatch-export" else {}
        rate = next((path / n for n in ("lr.pt", "lr_best.pt", "syn_lr.pt") if (path / n).is_file()), None)
        lr = float(_tensor(rate, "learning-rate file").reshape(-1)[0]) if rate is not None else None
        syn = dataclasses.replace(syn, lr=lr,
                                  dataset=str(meta.get("dataset") or ""), source=meta.get("source_data"),
                                  classes=meta.get("classes") or syn.classes).checked(str(path))
        default = "ddranking" if layout == "ddranking" else None
    stored = stored or default
    if stored is None:
        raise GradmatchError(f"{path} is an MTT/DATM set, stored in ZCA space or normalised as its run said; pass "
                             "--stored_as zca (a --zca run) or --stored_as ddranking")
    if layout != "pt" or not syn.dataset:
        warn(f"{path}: read as {LAYOUTS[layout]} ({len(syn.labels)} images, stored as {stored})")
    return (decode(syn, factor, stored) if factor > 1 else syn), stored


def in_space(syn: SyntheticSet, stored: str, dataset: str) -> SyntheticSet:
    """``syn`` with its mean/std saying how it is stored (``ours``: as recorded)."""
    if stored in ("zca", "pixels"):
        config = {**syn.config, "space": "zca"} if stored == "zca" else syn.config
        return dataclasses.replace(syn, mean=(0.0,) * syn.channel, std=(1.0,) * syn.channel, config=config)
    if stored == "ours":
        return syn
    stats = constants(stored, dataset)
    if stats is None:
        raise GradmatchError(f"{stored}'s constants for {dataset or 'this dataset'} are not known; pass --dataset "
                             f"(one of {', '.join(VICO)}) or --stored_as ours/pixels")
    if stored == "ddranking" and dataset == "CIFAR100":
        warn("CIFAR-100 set normalised with CIFAR-10's constants (as DD-Ranking, MTT and IDC do): re-normalised")
    return dataclasses.replace(syn, mean=stats[0], std=stats[1])


def renormalised(syn: SyntheticSet, mean, std) -> SyntheticSet:
    """The same pixels normalised with ``mean``/``std``."""
    old_m, old_s = (torch.tensor(v).view(1, -1, 1, 1) for v in (syn.mean, syn.std))
    new_m, new_s = (torch.tensor(v).view(1, -1, 1, 1) for v in (mean, std))
    images = ((syn.images * old_s + old_m) - new_m) / new_s
    return dataclasses.replace(syn, images=images, mean=tuple(mean), std=tuple(std))


def decode(syn: SyntheticSet, factor: int, stored: str) -> SyntheticSet:
    """IDC's multi-formation (test.py:136-204): each image cut into factor x factor crops (padded with 0.5 in pixel
    space), each resized back bilinearly; class by class, crop by crop."""
    h, w = syn.im_size
    side = math.ceil(h / factor)
    pad = 0.5 if stored == "pixels" else 0.0
    images = F.pad(syn.images, (0, side * factor - w, 0, side * factor - h), value=pad)
    out, labels = [], []
    for c in range(syn.num_classes):
        members = images[syn.labels == c]
        for i in range(factor):
            for j in range(factor):
                crop = members[:, :, i * side:(i + 1) * side, j * side:(j + 1) * side]
                out.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
                labels.append(torch.full((len(members),), c, dtype=torch.long))
    return dataclasses.replace(syn, images=torch.cat(out), labels=torch.cat(labels))


class ZCA:
    """Kornia's ZCAWhitening (eps 0.1) fitted on unnormalised training pixels, as MTT and DD-Ranking use it."""

    def __init__(self, train_pixels: torch.Tensor):
        from kornia.enhance import ZCAWhitening

        self.zca = ZCAWhitening(eps=ZCA_EPS, compute_inv=True).fit(train_pixels)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.zca(pixels)


def write_ddranking(syn: SyntheticSet, to, lr: float) -> list:
    """DD-Ranking's images.pt (class-major, its normalisation), labels.pt and lr.pt; the files written."""
    stats = constants("ddranking", syn.dataset)
    if stats is None:
        raise GradmatchError(f"DD-Ranking's normalisation for {syn.dataset or 'this set'} is not known (it has "
                             f"constants for {', '.join(DDRANKING)}); export it as --format png instead")
    order = torch.sort(syn.labels, stable=True).indices
    out = renormalised(dataclasses.replace(syn, images=syn.images[order], labels=syn.labels[order]), *stats)
    os.makedirs(to, exist_ok=True)
    files = {"images.pt": out.images.detach().cpu(), "labels.pt": out.labels.long().cpu(),
             "lr.pt": torch.tensor(float(lr))}
    for name, tensor in files.items():
        save_torch(tensor, Path(to) / name)
    return list(files)
