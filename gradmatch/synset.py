"""A synthetic set and what every layer shares about it.  A set made by gradmatch is trusted; one from
outside is checked once where it enters (``SyntheticSet.checked``, ``from_payload`` for a saved .pt)."""
from __future__ import annotations

import json
from dataclasses import field
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from . import checks
from .errors import GradmatchError
from .settings import declared

SET_FORMAT_VERSION = 1  # the .pt of a synthetic set: DC's layout + reference_payload's metadata keys


@declared("SyntheticSet")
class SyntheticSet:
    """A condensed dataset: normalised images, fixed labels, and what made them.  ``source``: the data settings that
    read its dataset again; ``lr``: a rate the set carries, for protocols without a rate of their own."""
    images: Tensor
    labels: Tensor
    classes: List[str]
    mean: tuple
    std: tuple
    dataset: str = ""
    config: Dict[str, Any] = field(default_factory=dict)
    source: Optional[Dict[str, Any]] = None
    lr: Optional[float] = None

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
                "mean": tuple(self.mean), "std": tuple(self.std), "dataset": self.dataset, "config": dict(self.config),
                "source": self.source, "lr": self.lr}

    def denormalised(self) -> Tensor:
        """Pixels in [0, 1] (clamped), for pictures."""
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return (self.images.detach().cpu() * std + mean).clamp(0, 1)

    def to_torch(self) -> torch.utils.data.TensorDataset:
        """The set as a ``TensorDataset`` of (image, label) pairs for one's own training loop."""
        return torch.utils.data.TensorDataset(self.images.detach(), self.labels.long())

    def checked(self, where: str = "SyntheticSet", names: Optional[Dict[str, str]] = None,
                fix=lambda key: "") -> "SyntheticSet":
        """This set normalised, or one line naming the bad value (``names``, ``fix``: a file's keys)."""
        def check(key: str, run):
            try:
                return run(f"{where}: {(names or {}).get(key, key)}")
            except GradmatchError as err:
                advice = fix(key)
                raise GradmatchError(f"{err}{'; ' + advice if advice else ''}") from None

        images = check("images", lambda what: checks.images(self.images, what))
        labels = check("labels", lambda what: checks.labels(self.labels, len(images), what))
        classes = check("classes", lambda what: checks.class_names(self.classes, what, int(labels.max()) + 1))
        mean = check("mean", lambda what: checks.per_channel(self.mean, images.shape[1], what))
        std = check("std", lambda what: checks.per_channel(self.std, images.shape[1], what, positive=True))
        check("dataset", lambda what: _is(self.dataset, str, what, "the dataset's name (str), '' when unknown"))
        check("config", lambda what: _json(self.config, what))
        lr = None if self.lr is None else check("lr", lambda what: checks.learning_rate(self.lr, what))
        return SyntheticSet(images=images, labels=labels, classes=classes, mean=mean, std=std, dataset=self.dataset,
                            config=dict(self.config), source=self.source, lr=lr)

    @classmethod
    def from_payload(cls, payload: Any, experiment: int = -1, where: str = "synthetic-set file") -> "SyntheticSet":
        """Experiment ``experiment`` of a .pt in DC's layout, every key checked, missing keys defaulted."""
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), (list, tuple)) or not payload["data"]:
            raise GradmatchError(f"{where} holds no synthetic set (expected a dict with 'data' as DC saves it)")

        def bad(key: str, expected: str) -> GradmatchError:
            return GradmatchError(f"{where}: '{key}' is {checks.show(payload[key])}; expected {expected}; "
                                  f"{_file_fix(key)}")

        version = payload.get("format_version")
        if version is not None and not (checks.is_whole(version) and version >= 1):
            raise bad("format_version", "a whole number >= 1")
        if version is not None and version > SET_FORMAT_VERSION:  # a newer layout: refuse, not misread
            raise GradmatchError(f"{where} is a set of format {version} (gradmatch "
                                 f"{payload.get('gradmatch_version', '?')}); this gradmatch reads up to "
                                 f"{SET_FORMAT_VERSION}; upgrade gradmatch")
        for key, kind, expected in (("gradmatch_version", str, "the version (str) of the gradmatch that wrote it"),
                                    ("accs_all_exps", dict, "a dict of model name -> accuracies, as DC saves it"),
                                    ("source", dict, "the data settings (a dict) that read its dataset")):
            if payload.get(key) is not None and not isinstance(payload[key], kind):
                raise bad(key, expected)
        if payload.get("ipc") is not None and not (checks.is_whole(payload["ipc"]) and payload["ipc"] >= 0):
            raise bad("ipc", "the number of images per class (a whole number)")
        data = payload["data"]
        if not checks.is_whole(experiment) or not -len(data) <= experiment < len(data):
            raise GradmatchError(f"{where} has {len(data)} experiments; --experiment {experiment} is out of range")
        index = int(experiment) % len(data)
        entry = data[index]
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(t, Tensor) for t in entry)):
            raise GradmatchError(f"{where}: data[{index}] is not an [images, labels] pair of tensors, as DC saves each "
                                 "experiment's set; use another --experiment")
        images = entry[0].float() if entry[0].is_floating_point() and entry[0].dim() == 4 else entry[0]
        names = {"images": f"data[{index}] images", "labels": f"data[{index}] labels",
                 **{k: f"'{k}'" for k in ("classes", "mean", "std", "dataset", "config", "lr")}}
        try:
            labels = checks.labels(entry[1], len(images), f"{where}: {names['labels']}")
        except GradmatchError as err:
            raise GradmatchError(f"{err}; {_file_fix('labels')}") from None
        top = int(labels.max())
        if payload.get("classes") is None and top >= len(labels):  # DC's layout: ipc images of every class
            raise GradmatchError(f"{where}: {names['labels']} go up to {top} for {len(labels)} images (and 'classes' "
                                 "is absent); expected class indices 0..K-1 with images of every class, as DC saves "
                                 "a set; use another --experiment")
        channels = images.shape[1] if images.dim() == 4 else 1
        defaults = {"classes": [str(c) for c in range(top + 1)], "mean": (0.0,) * channels, "std": (1.0,) * channels,
                    "dataset": "", "config": {}}
        syn = cls(images=images, labels=labels, source=payload.get("source"), lr=payload.get("lr"),
                  **{k: d if payload.get(k) is None else payload[k] for k, d in defaults.items()})
        syn = syn.checked(where, names, _file_fix)
        if checks.is_whole(payload.get("ipc")) and payload["ipc"] != syn.ipc:
            raise bad("ipc", f"{syn.ipc}, as data[{index}] holds ({len(syn.labels)} images of {syn.num_classes} "
                             "classes)")
        return syn


def _is(value: Any, kind: type, what: str, expected: str) -> Any:
    if not isinstance(value, kind):
        raise GradmatchError(f"{what} is {checks.show(value)}; expected {expected}")
    return value


def _json(config: Any, what: str) -> dict:
    _is(config, dict, what, "a dict of the settings that made the set")
    try:
        json.dumps(config, default=str)
    except (TypeError, ValueError) as err:
        raise GradmatchError(f"{what} cannot be written as JSON ({err}); expected a dict of settings with str keys") \
            from None
    return config


_WITHOUT = {"classes": "classes are named 0, 1, ...", "mean": "mean 0", "std": "std 1",
            "dataset": "evaluate needs --dataset", "config": "no settings are recorded", "lr": "no rate is recorded",
            "ipc": "it is counted from the labels", "format_version": "version 1 is assumed",
            "gradmatch_version": "none is recorded", "accs_all_exps": "no accuracies are recorded",
            "source": "evaluate needs --dataset"}


def _file_fix(key: str) -> str:
    if key in ("images", "labels"):
        return "repair them in the file (torch.load, convert, torch.save) or use another --experiment"
    return f"fix or delete '{key}' in the file (torch.load, edit, torch.save); without it {_WITHOUT[key]}"
