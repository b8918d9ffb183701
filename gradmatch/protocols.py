"""How a set is evaluated: a ``Protocol`` is every setting of the evaluation, a named one an entry of ``PROTOCOLS``.
A set and its random-real baseline are given the same object, so they are trained the same way by construction."""
from __future__ import annotations

from dataclasses import fields
from functools import partial
from typing import Optional

from . import checks
from .augment import check_strategy
from .settings import Settings, declared, setting

DEFAULT_EPOCHS, AUGMENTED_EPOCHS = 300, 1000  # DC's rule where a protocol leaves the epochs to it
EVAL_METHODS = ("auto", "sequential", "parallel", "batched")
REPORTS = ("final", "best", "best_and_last")


def _models(value, what: str) -> tuple:
    from .models import check_model_name  # the registry, imported where a protocol is checked

    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise checks.GradmatchError(f"{what} takes a list of model names, got {checks.show(value)}")
    for name in value:
        check_model_name(name)
    return tuple(value)


def _each(check):
    return lambda value, what: tuple(check(v, what) for v in value)


@declared("protocol")
class Protocol(Settings):
    """Every setting of an evaluation; ``flag``: the seed's flag that overrides it where given (the seed trains its
    evaluation networks with the condensation's --lr_net and --batch_train: no flags of their own)."""
    name: str = setting("dc", "the named protocol it follows", check=checks.text)
    models: tuple = setting(("ConvNet",), "the evaluated architectures", check=_models)
    num_eval: int = setting(20, "networks per model", check=partial(checks.whole, minimum=1), flag="num_eval")
    epochs: Optional[int] = setting(None, "training epochs (None: 300, or 1000 with augmentation)",
                                    check=partial(checks.whole, minimum=1), flag="epoch_eval_train")
    lr: Optional[float] = setting(0.01, "SGD learning rate (None: the set's own learned rate)",
                                  check=checks.learning_rate, flag="lr_net")
    lr_grid: tuple = setting((), "rates to choose from by test accuracy where the set carries none",
                             check=_each(checks.learning_rate))
    batch_size: int = setting(256, "batch size", check=partial(checks.whole, minimum=1), flag="batch_train")
    momentum: float = setting(0.9, "SGD momentum", check=partial(checks.number, minimum=0))
    weight_decay: float = setting(5e-4, "SGD weight decay", check=partial(checks.number, minimum=0))
    milestones: tuple = setting((0.5,), "the lr drops, as fractions of the epochs",
                                check=_each(partial(checks.number, minimum=0, below=1.0000001)))
    gamma: float = setting(0.1, "the lr's factor at each drop", check=partial(checks.number, minimum=0))
    augment: str = setting("auto", "auto (DC's choice by dataset and model), none, crop_scale_rotate, crop_noise, "
                           "dsa[:ops]", check=lambda value, what: check_strategy(checks.text(value, what)),
                           flag="augment")
    cutmix: float = setting(0.0, "the probability of CutMix per batch (the loss mixed by area)",
                            check=partial(checks.number, minimum=0, below=1.0000001))
    zca: bool = setting(False, "ZCA whitening fitted on the training images")
    test_every: int = setting(0, "epochs between test checks (0: only after the last)",
                              check=partial(checks.whole, minimum=0))
    test_checks: int = setting(0, "test checks spread evenly over the epochs (IDC's 4), where test_every is 0",
                               check=partial(checks.whole, minimum=0))
    report: str = setting("final", f"which accuracy: {', '.join(REPORTS)}",
                          check=partial(checks.choice, choices=REPORTS, kind="accuracy to report"))
    method: str = setting("auto", "how the networks are trained: auto, sequential, parallel or batched (same "
                          "numbers)", check=partial(checks.choice, choices=EVAL_METHODS, kind="evaluation method"),
                          flag="eval_method")
    seed: int = setting(0, "network k of a model draws from seeds of (seed, model, k)", check=checks.seed)
    overrides: tuple = setting((), "the flags given over the named protocol, as said with each result")

    def label(self, f) -> str:
        return f"protocol {f.name}"  # a Protocol is built in Python: its fields have no flags of their own

    def checks_at(self, epochs: int) -> set:
        """The (0-based) epochs after which the networks are tested."""
        every = self.test_every or (epochs // self.test_checks if self.test_checks else 0)
        return {e for e in range(epochs) if every and (e + 1) % every == 0}

    def epochs_for(self, strategy: Optional[str]) -> int:
        if self.epochs is not None:
            return self.epochs
        return AUGMENTED_EPOCHS if strategy not in (None, "none") else DEFAULT_EPOCHS

    def which(self) -> str:
        if self.report == "final":
            return "final epoch"
        every = f"every {self.test_every} epochs" if self.test_every else f"{self.test_checks} checks" \
            if self.test_checks else "the end"
        return f"best of {every}" if self.report == "best" else f"best and last of {every}"


# The named protocols; every number is cited, file by file, in docs/protocols.md.
PROTOCOLS = {p.name: p for p in (
    Protocol(),  # the seed's evaluate_synset (utils.py:320-341): E epochs, MultiStepLR([E // 2], 0.1)
    Protocol(name="dsa", augment="dsa", epochs=AUGMENTED_EPOCHS),  # DC main.py:111-121, utils.py:474-516
    Protocol(name="dcbench", num_eval=5, augment="none"),  # dc_benchmark evaluator.py:50-72, evaluator_utils.py
    Protocol(name="idc", batch_size=64, epochs=1000, milestones=(2 / 3, 5 / 6), gamma=0.2, augment="idc",
             cutmix=0.5, test_checks=4, report="best_and_last", num_eval=1),  # IDC train.py:104-166, argument.py
    Protocol(name="ddranking", num_eval=5, epochs=1000, lr=None, lr_grid=(0.001, 0.005, 0.01, 0.05, 0.1),
             augment="by_method", test_every=10, report="best"),  # ddranking/metrics/hard_label.py:119-288
    Protocol(name="mtt", num_eval=5, epochs=1000, lr=None, augment="dsa", zca=True),  # mtt distill.py:118-450
)}

def resolve(name: str, given: dict, **fixed) -> Protocol:
    """Protocol ``name`` with the ``given`` flags (None: not given) over it, each recorded in ``overrides`` where it
    changes the protocol, and ``fixed`` (models, seed, augment) set."""
    base = PROTOCOLS[name]
    flags = {f.metadata["flag"]: f.name for f in fields(Protocol) if f.metadata.get("flag")}
    changes = {flags[k]: v for k, v in given.items() if k in flags and v is not None}
    said = tuple(f"--{k} {given[k]} (its {f}: {_shown(f, getattr(base, f))})" for k, f in flags.items()
                 if f in changes and changes[f] != getattr(base, f) and f != "method")
    return base.replace(**changes, **fixed, overrides=said)


def _shown(name: str, value) -> str:
    if value is None:
        return f"{DEFAULT_EPOCHS} or {AUGMENTED_EPOCHS} with augmentation" if name == "epochs" else "None"
    return str(value)


def describe(protocol: Protocol) -> str:
    """Every setting of ``protocol`` on one line."""
    return ", ".join(f"{f.name} {getattr(protocol, f.name)}" for f in fields(protocol) if f.name != "name")
