"""Evaluation (SPEC section 7): train fresh networks on a synthetic set, test them on real data."""
from __future__ import annotations

import statistics
import zlib
from dataclasses import dataclass
from typing import List, Optional

import torch

from .augment import make_augment, strategy_for
from .condense import SyntheticSet, default_device, derive_seed
from .data import Dataset
from .errors import GradmatchError
from .models import create_model
from .train import accuracy, train_epoch

EVAL_POOLS = {
    "M": ["MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18"],
    "W": ["ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256"],
    "D": ["ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4"],
    "A": ["ConvNetAS", "ConvNetAR", "ConvNetAL"],
    "P": ["ConvNetNP", "ConvNetMP", "ConvNetAP"],
    "N": ["ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN"],
}
DEFAULT_EPOCHS, AUGMENTED_EPOCHS = 300, 1000


def eval_pool(eval_mode: str, model: str) -> List[str]:
    """Models to evaluate on: S = the training model without its batch-norm suffix (too few synthetic
    images to estimate batch statistics), M/W/D/A/P/N the pools above, or model names, comma-separated."""
    if eval_mode == "S":
        return [model[:model.index("BN")] if "BN" in model else model]
    if eval_mode in EVAL_POOLS:
        return list(EVAL_POOLS[eval_mode])
    names = [m.strip() for m in eval_mode.split(",") if m.strip()]
    if not names:
        raise GradmatchError(f"empty --eval_mode; choose S, {', '.join(EVAL_POOLS)} or model names")
    return names


@dataclass
class EvalResult:
    model: str
    accuracies: List[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def line(self) -> str:
        return (f"Evaluate {len(self.accuracies)} random {self.model}, mean = {100 * self.mean:.2f} "
                f"std = {100 * self.std:.2f}")


def train_and_test(net, images, labels, test: Dataset, epochs: int, lr: float, batch_size: int,
                   augment, generator: torch.Generator) -> float:
    """DC's evaluate_synset: SGD (momentum 0.9, weight decay 5e-4) for epochs + 1 passes, lr x0.1
    (fresh optimiser) after pass epochs // 2 + 1, then the test accuracy."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    for ep in range(epochs + 1):
        train_epoch(net, optimizer, images, labels, batch_size, generator, augment)
        if ep == epochs // 2 + 1:
            lr *= 0.1
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    return accuracy(net, test.images, test.labels)


def evaluate(syn: SyntheticSet, model: str, test: Dataset, *, num_eval: int = 20,
             epochs: Optional[int] = None, lr: float = 0.01, batch_size: int = 256,
             augment: Optional[str] = "auto", seed: int = 0, device=None) -> EvalResult:
    """Train ``num_eval`` fresh ``model`` networks on ``syn`` and test each on ``test``.

    ``augment``: "auto" (DC's rule), None/"none", "crop_scale_rotate" or "crop_noise".
    ``epochs`` defaults to 300, or 1000 with augmentation.
    """
    device = torch.device(device) if device is not None else default_device()
    strategy = strategy_for(syn.dataset, model) if augment == "auto" else augment
    if epochs is None:
        epochs = AUGMENTED_EPOCHS if strategy not in (None, "none") else DEFAULT_EPOCHS
    images, labels = syn.images.detach().to(device), syn.labels.to(device)
    test_on_device = Dataset(images=test.images.to(device), labels=test.labels.to(device),
                             classes=test.classes, mean=test.mean, std=test.std, name=test.name)
    model_key = zlib.crc32(model.encode())
    accs = []
    for k in range(num_eval):
        gen = torch.Generator().manual_seed(derive_seed(seed, model_key, k, 0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, model_key, k, 1))
            net = create_model(model, syn.channel, syn.num_classes, syn.im_size).to(device)
        accs.append(train_and_test(net, images, labels, test_on_device, epochs, lr, batch_size,
                                   make_augment(strategy, gen), gen))
    return EvalResult(model, accs)


def random_real_subset(real: Dataset, ipc: int, seed: int = 0) -> SyntheticSet:
    """ipc random real images per class: the baseline every synthetic set must beat."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(real.num_classes):
        idx = torch.nonzero(real.labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:ipc]])
    idx = torch.cat(picks)
    return SyntheticSet(images=real.images[idx].clone(), labels=real.labels[idx].clone(),
                        classes=list(real.classes), mean=real.mean, std=real.std, dataset=real.name,
                        config={"random_real_subset": True, "ipc": ipc, "seed": seed})
