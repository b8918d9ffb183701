"""A synthetic set and what every layer shares about it (the loop is not imported for it).

One place checks a set's values: ``SyntheticSet.validate`` (images, labels, class names, mean/std,
dataset, config), for a set built in Python and for one read from a file.  ``SyntheticSet.from_payload``
reads one experiment of a saved .pt in DC's layout (``results.reference_payload`` writes it) and adds
the checks of the file's own keys (``data``, ``format_version``, ``ipc``, ...), so a malformed file is
refused in one line naming the key instead of failing later in ``evaluate`` or ``export``.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor

from .errors import GradmatchError, keywords_checked

SET_FORMAT_VERSION = 1  # the .pt of a synthetic set: DC's layout + reference_payload's metadata keys


def _show(value: Any) -> str:
    """A value as a message shows it: tensors by dtype and shape, anything else by a short repr."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@keywords_checked("SyntheticSet")
@dataclass
class SyntheticSet:
    """A condensed dataset: normalised images, fixed labels, and what made them."""
    images: Tensor
    labels: Tensor
    classes: List[str]
    mean: tuple
    std: tuple
    dataset: str = ""
    config: Dict[str, Any] = field(default_factory=dict)

    @property
    def ipc(self) -> int:
        return len(self.labels) // max(len(self.classes), 1)

    @property
    def channel(self) -> int:
        return self.images.shape[1]

    @property
    def im_size(self) -> tuple:
        return tuple(self.images.shape[2:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> Dict[str, Any]:
        """Tensors and plain data only (what a checkpoint may hold: read with weights_only)."""
        return {"images": self.images.detach().cpu(), "labels": self.labels.cpu(), "classes": list(self.classes),
                "mean": tuple(self.mean), "std": tuple(self.std), "dataset": self.dataset,
                "config": dict(self.config)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SyntheticSet":
        return cls(images=d["images"], labels=d["labels"], classes=list(d["classes"]), mean=tuple(d["mean"]),
                   std=tuple(d["std"]), dataset=d.get("dataset", ""), config=dict(d.get("config") or {}))

    def denormalised(self) -> Tensor:
        """Pixels in [0, 1] (clamped), for pictures."""
        self.validate()
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (self.images.detach().cpu() * std + mean).clamp(0, 1)

    def to_torch(self) -> torch.utils.data.TensorDataset:
        """The set as a ``TensorDataset`` of (image, label) pairs for one's own training loop: the
        normalised float images as stored (detached) and the labels as int64 class indices."""
        self.validate()
        return torch.utils.data.TensorDataset(self.images.detach(), self.labels.long())

    # ---- checks ------------------------------------------------------------------------------------
    def validate(self, where: str = "SyntheticSet", names: Optional[Dict[str, str]] = None,
                 fix: Optional[Callable[[str], str]] = None) -> "SyntheticSet":
        """Check every value and return the set; GradmatchError (one line naming the value and what it
        should be) otherwise.  ``where``, ``names`` (attribute -> name in the message) and ``fix`` (the
        advice for a key) let ``from_payload`` name a file's keys instead of the attributes.

        images: a float tensor (N, C, H, W), every size >= 1, finite.  Integer pixels (uint8 0..255)
        are refused: they are not normalised, and a network trained on them would score near chance.
        labels: N integer class indices >= 0 (any integer dtype).  classes: a list or tuple of distinct
        str, at least max label + 1 of them.  mean, std: one finite number per channel, std > 0.  dataset:
        a str ("" when unknown).  config: a dict that JSON can hold (str keys)."""
        fail = _failure(where, names, fix)
        self._check_tensors(fail)
        self._check_metadata(fail)
        return self

    def _check_tensors(self, fail) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, Tensor):
            raise fail("images", f"are {_show(images)}", "a float tensor (N, C, H, W)")
        if not _dense(images):
            raise fail("images", f"are a {_kind_of(images)} tensor", "an ordinary (dense) float tensor in memory "
                       "(images.to_dense(), or made on the CPU)")
        if not images.is_floating_point():
            raise fail("images", f"are {_show(images)}",
                       "float pixels normalised as the dataset is ((pixels / 255 - mean) / std)")
        if images.dim() != 4 or 0 in images.shape:
            raise fail("images", f"have shape {tuple(images.shape)}",
                       "N images (N, C, H, W) and N labels, every size at least 1")
        if not bool(torch.isfinite(images).all()):
            raise fail("images", "hold non-finite (nan or inf) pixels", "finite pixels")
        if not isinstance(labels, Tensor):
            raise fail("labels", f"are {_show(labels)}", "an integer tensor of N class indices 0, 1, ...")
        if not _dense(labels):
            raise fail("labels", f"are a {_kind_of(labels)} tensor", "an ordinary (dense) integer tensor in memory")
        if not _integral(labels):
            raise fail("labels", f"are {_show(labels)}", "integer class indices 0, 1, ... (labels.long())")
        if labels.dim() != 1 or len(labels) != len(images):
            raise fail("labels", f"have shape {tuple(labels.shape)} for {len(images)} images",
                       "N images (N, C, H, W) and N labels")
        if int(labels.min()) < 0:
            raise fail("labels", f"include {int(labels.min())}", "class indices 0, 1, ...")

    def _check_metadata(self, fail) -> None:
        """Everything but the tensors, which ``_check_tensors`` has checked."""
        top = int(self.labels.max())
        classes = self.classes
        if not isinstance(classes, (list, tuple)):
            raise fail("classes", f"is {_show(classes)}", f"a list of {top + 1} or more class names (str)")
        odd = [c for c in classes if not isinstance(c, str)]
        if odd:
            raise fail("classes", f"holds {_show(odd[0])} ({type(odd[0]).__name__})", "class names as str")
        seen: set = set()
        for name in classes:
            if name in seen:
                raise fail("classes", f"names {name!r} twice", "one distinct name per class")
            seen.add(name)
        if len(classes) <= top:
            raise fail("classes", f"names {len(classes)} classes but the labels go up to {top}",
                       f"at least {top + 1} names, one per label")
        channels = self.images.shape[1]
        for key in ("mean", "std"):
            value = getattr(self, key)
            values = value.tolist() if isinstance(value, Tensor) and value.dim() == 1 else value
            expected = f"one finite number per channel ({channels} for images {tuple(self.images.shape)})"
            if not isinstance(values, (list, tuple)) or not all(_is_number(v) for v in values):
                raise fail(key, f"is {_show(value)}", expected)
            if len(values) != channels:
                raise fail(key, f"has {len(values)} values for {channels}-channel images", expected)
            if not all(math.isfinite(v) for v in values):
                raise fail(key, f"is {_show(value)}", expected)
            if key == "std" and not all(v > 0 for v in values):
                raise fail(key, f"is {_show(value)}", "a positive number per channel")
        if not isinstance(self.dataset, str):
            raise fail("dataset", f"is {_show(self.dataset)}", "the dataset's name (str), '' when unknown")
        if not isinstance(self.config, dict):
            raise fail("config", f"is {_show(self.config)}", "a dict of the settings that made the set")
        try:
            json.dumps(self.config, default=str)
        except (TypeError, ValueError) as err:
            raise fail("config", f"cannot be written as JSON ({err})", "a dict of settings with str keys") from None

    @classmethod
    def from_payload(cls, payload: Any, experiment: int = -1, where: str = "synthetic-set file") -> "SyntheticSet":
        """Experiment ``experiment`` of a .pt in DC's layout (``{"data": [[images, labels], ...],
        "accs_all_exps": ...}``, ours or DC's own), every key checked: GradmatchError (one line naming
        the key) if any is malformed.  Keys DC does not write default to class names "0".."K-1",
        mean 0 and std 1 per channel, dataset "" and config {}; keys we do not know are ignored."""
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), (list, tuple)) or not payload["data"]:
            raise GradmatchError(f"{where} holds no synthetic set (expected a dict with 'data' as DC saves it)")

        def bad(key: str, expected: str) -> GradmatchError:
            return GradmatchError(f"{where}: '{key}' is {_show(payload[key])}; expected {expected}; "
                                  f"{_file_fix(key)}")

        version = payload.get("format_version")
        if version is not None and not (_is_int(version) and version >= 1):
            raise bad("format_version", "a whole number >= 1")
        if version is not None and version > SET_FORMAT_VERSION:  # a newer layout: refuse, not misread
            raise GradmatchError(f"{where} is a set of format {version} (gradmatch "
                                 f"{payload.get('gradmatch_version', '?')}); this gradmatch reads up to "
                                 f"{SET_FORMAT_VERSION}; upgrade gradmatch")
        if payload.get("gradmatch_version") is not None and not isinstance(payload["gradmatch_version"], str):
            raise bad("gradmatch_version", "the version (str) of the gradmatch that wrote the file")
        if payload.get("ipc") is not None and not (_is_int(payload["ipc"]) and payload["ipc"] >= 0):
            raise bad("ipc", "the number of images per class (a whole number)")
        if payload.get("accs_all_exps") is not None and not isinstance(payload["accs_all_exps"], dict):
            raise bad("accs_all_exps", "a dict of model name -> accuracies, as DC saves it")
        data = payload["data"]
        if not _is_int(experiment) or not -len(data) <= experiment < len(data):
            raise GradmatchError(f"{where} has {len(data)} experiments; --experiment {experiment} is out of range")
        index = int(experiment) % len(data)
        entry = data[index]
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(t, Tensor) for t in entry)):
            raise GradmatchError(f"{where}: data[{index}] is not an [images, labels] pair of tensors, as DC "
                                 "saves each experiment's set")
        given = {k: payload.get(k) for k in ("classes", "mean", "std", "dataset", "config")}
        syn = cls(images=entry[0], labels=entry[1], classes=given["classes"], mean=given["mean"], std=given["std"],
                  dataset="" if given["dataset"] is None else given["dataset"],
                  config={} if given["config"] is None else given["config"])
        fail = _failure(where, {"images": f"data[{index}] images", "labels": f"data[{index}] labels",
                                **{k: f"'{k}'" for k in given}}, _file_fix)
        syn._check_tensors(fail)
        channels = syn.images.shape[1]
        top = int(syn.labels.max())
        if syn.classes is None and top >= len(syn.labels):  # DC's layout: ipc images of every class
            raise fail("labels", f"go up to {top} for {len(syn.labels)} images (and 'classes' is absent)",
                       "class indices 0..K-1 with images of every class, as DC saves a set")
        if syn.classes is None:  # DC's files: the labels' numbers, and no normalisation
            syn.classes = [str(c) for c in range(int(syn.labels.max()) + 1)]
        syn.mean = (0.0,) * channels if syn.mean is None else syn.mean
        syn.std = (1.0,) * channels if syn.std is None else syn.std
        syn._check_metadata(fail)
        if _is_int(payload.get("ipc")) and payload["ipc"] != len(syn.labels) // len(syn.classes):
            raise bad("ipc", f"{len(syn.labels) // len(syn.classes)}, as data[{index}] holds ({len(syn.labels)} "
                             f"images of {len(syn.classes)} classes)")
        return cls(images=syn.images.float(), labels=syn.labels.long(), classes=list(syn.classes),
                   mean=_floats(syn.mean), std=_floats(syn.std), dataset=syn.dataset, config=dict(syn.config))


LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # torch computes on these


def _integral(t: Tensor) -> bool:
    return t.dtype in LABEL_DTYPES


def _dense(t: Tensor) -> bool:
    """An ordinary tensor with values: not sparse, not on the meta device (shapes without data)."""
    return t.layout == torch.strided and t.device.type != "meta"


def _kind_of(t: Tensor) -> str:
    return "meta (no values)" if t.device.type == "meta" else f"{str(t.layout).replace('torch.', '')}"


def _floats(value: Any) -> tuple:
    return tuple(float(v) for v in (value.tolist() if isinstance(value, Tensor) else value))


def _failure(where: str, names: Optional[Dict[str, str]], fix: Optional[Callable[[str], str]]):
    """The error for one bad value: '<where>: <name> <problem>; expected <what>[; <fix>]'."""
    names = names or {}

    def fail(key: str, problem: str, expected: str) -> GradmatchError:
        advice = fix(key) if fix else ""
        return GradmatchError(f"{where}: {names.get(key, key)} {problem}; expected {expected}"
                              f"{'; ' + advice if advice else ''}")
    return fail


_WITHOUT = {"classes": "classes are named 0, 1, ...", "mean": "mean 0", "std": "std 1",
            "dataset": "evaluate needs --dataset", "config": "no settings are recorded",
            "ipc": "it is counted from the labels", "format_version": "version 1 is assumed",
            "gradmatch_version": "none is recorded", "accs_all_exps": "no accuracies are recorded"}


def _file_fix(key: str) -> str:
    """How to repair a malformed key of a saved set."""
    if key in ("images", "labels"):
        return "repair them in the file (torch.load, convert, torch.save) or use another --experiment"
    return f"fix or delete '{key}' in the file (torch.load, edit, torch.save); without it {_WITHOUT[key]}"
