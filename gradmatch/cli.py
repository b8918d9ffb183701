"""``gradmatch condense | evaluate | plot | demo``; the seed's flag names, kebab-case aliases too.

Every user error ends as one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import List, Optional

from .config import (
    RESUME_FREE,
    CondenseConfig,
    RunConfig,
    check_device,
    check_eval_models,
    check_field,
    check_learning_rate,
    fields_for_cli,
    flag_of,
)
from .augment.dsa import parse_strategy
from .errors import GradmatchError, unknown_name


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        raise GradmatchError(f"{self.prog}: {message} (see --help)")


def _flag(parser, name: str, dest: Optional[str] = None, **kwargs):
    """Add ``--name`` (the seed's spelling) with a ``--kebab-case`` alias."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, dest=dest or name, **kwargs)


def _field_flags(parser, cls, only=None, defaults: Optional[dict] = None) -> None:
    """One flag per field of ``cls`` (``config.py`` declares them), spelt as the seed spells it.
    Without ``defaults`` a flag left out is absent from the parsed namespace (argparse.SUPPRESS), so
    the dataclass is the one place defaults live and the caller knows which flags were given."""
    for f in fields_for_cli(cls):
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        default = argparse.SUPPRESS if defaults is None else defaults.get(f.name, f.default)
        help = meta.get("help") or ""
        if f.default not in (None, False, dataclasses.MISSING) and "default" not in help:
            help = f"{help} (default {f.default})".strip()
        kwargs = {"help": help or None, "default": default}
        if f.default is False:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = meta.get("type") or type(f.default)
        _flag(parser, meta.get("flag") or f.name, dest=f.name, **kwargs)


METHOD_CHOICES = ("DC", "DSA")


def _add_condense_flags(p: argparse.ArgumentParser, scheme_default: Optional[str]) -> None:
    skip = () if scheme_default is None else ("scheme",)  # a seed script is its scheme
    _field_flags(p, CondenseConfig, only=[f.name for f in fields_for_cli(CondenseConfig) if f.name not in skip])
    _field_flags(p, RunConfig)
    _flag(p, "method", default=argparse.SUPPRESS, help="DC (the default) or DSA (same as --dsa), as DC's scripts")
    _flag(p, "adaptive_step", action="store_true", default=argparse.SUPPRESS,
          help="the paper's adaptive learning step (--schedule adaptive)")
    _flag(p, "resume", nargs="?", const=True, default=argparse.SUPPRESS, metavar="RUN_DIR",
          help="continue the run from its last checkpoint (this run's folder, or RUN_DIR)")


def _given(args) -> dict:
    """The flags given on the command line, by field name (absent ones were suppressed)."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")}


def _run_config(given: dict, scheme_default: Optional[str] = None) -> RunConfig:
    """The RunConfig the given flags describe (defaults: the dataclasses'), validated."""
    given = dict(given)
    condense_names = {f.name for f in dataclasses.fields(CondenseConfig)}
    condense = {k: given.pop(k) for k in list(given) if k in condense_names}
    if scheme_default is not None:
        condense["scheme"] = scheme_default
    method = given.pop("method", "DC")
    if method not in METHOD_CHOICES:
        raise unknown_name("method (--method)", method, METHOD_CHOICES)
    if method == "DSA":
        condense["dsa"] = True
    if given.pop("adaptive_step", False) and "schedule" not in condense:
        condense["schedule"] = "adaptive"
    given.pop("resume", None)
    return RunConfig(condense=CondenseConfig(**condense), **given).validate()


def _flag_name(name: str) -> str:
    for cls in (CondenseConfig, RunConfig):
        if name in {f.name for f in dataclasses.fields(cls)}:
            return flag_of(cls, name)
    return f"--{name}"


def _resume_config(run_dir: str, given: dict) -> RunConfig:
    """``--resume RUN_DIR``: the run's saved settings; of the given flags only where and how loudly
    to run (RESUME_FREE) apply, and the others are named as ignored."""
    config_file = Path(run_dir) / "config.json"
    if not config_file.is_file():
        raise GradmatchError(f"--resume {run_dir}: no config.json there; point at a run folder")
    try:
        saved = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise GradmatchError(f"--resume {run_dir}: {config_file} is not readable JSON ({err}); restore it, or "
                             "start the run again with --overwrite") from None
    config = RunConfig.from_dict(saved, source=str(config_file))
    config.save_path = str(Path(run_dir).parent)
    defaults = RunConfig()
    for name in RESUME_FREE:
        if name == "save_path":
            continue
        if name in given:
            setattr(config, name, given[name])
        elif name != "data_path":  # where the data is stays as saved unless given
            setattr(config, name, getattr(defaults, name))
    ignored = [_flag_name(k) for k in given if k not in RESUME_FREE and k != "resume"]
    if ignored:
        print(f"note: --resume {run_dir} continues with the run's saved settings; ignoring "
              f"{', '.join(ignored)}", file=sys.stderr)
    return config.validate()


def cmd_condense(args) -> int:
    from .run import Run

    given = _given(args)
    scheme_default = given.pop("scheme_script", None)
    resume = given.get("resume", False)
    if isinstance(resume, str):
        config = _resume_config(resume, given)
    else:
        config = _run_config(given, scheme_default)
    Run(config).start(resume=bool(resume))
    return 0


EVALUATE_SETTINGS = ("model", "eval_mode", "dataset", "data_path", "num_eval", "epoch_eval_train", "lr_net",
                     "batch_train", "seed", "device", "eval_method", "download")


def cmd_evaluate(args) -> int:
    from . import data, distributed
    from .evaluate import check_models_fit, evaluate
    from .results import load_synthetic

    # the same per-setting checks as a condense run's, before the file or the data is read
    for cls in (RunConfig, CondenseConfig):
        for name in EVALUATE_SETTINGS:
            if name in {f.name for f in dataclasses.fields(cls)}:
                check_field(cls, name, getattr(args, name))
    check_learning_rate("--lr_net", args.lr_net)
    check_device(args.device)
    models = check_eval_models(args.eval_mode, args.model)
    syn = load_synthetic(args.file, args.experiment)
    dataset = args.dataset or syn.dataset
    if not dataset:
        raise GradmatchError(f"{args.file} does not say its dataset; pass --dataset")
    test = data.load(dataset, args.data_path, "test", download=args.download)
    from .export import check_normalisation  # a set normalised otherwise would score near chance
    check_normalisation(syn, test, args.file)
    if test.images.shape[1:] != syn.images.shape[1:]:
        raise GradmatchError(f"images in {args.file} are {tuple(syn.images.shape[1:])}, {dataset} test images "
                             f"are {tuple(test.images.shape[1:])}; pass the dataset the set was made from")
    if not syn.dataset:
        syn.dataset, syn.mean, syn.std = test.name, test.mean, test.std
    check_models_fit(models, syn.channel, syn.num_classes, syn.im_size, flag="--eval_mode/--model")
    augment = "auto"
    if args.dsa:  # DSA's evaluation: every network trains on DSA-augmented batches (1000 epochs by default)
        parse_strategy(args.dsa_strategy)
        augment = f"dsa:{args.dsa_strategy}"
    for model in models:
        result = evaluate(syn, model, test, num_eval=args.num_eval, epochs=args.epoch_eval_train,
                          lr=args.lr_net, batch_size=args.batch_train, seed=args.seed, device=args.device,
                          method=args.eval_method, augment=augment)
        if distributed.current().is_main:
            print(result.line())
    if args.baseline:  # a random real subset of the same ipc, same networks and seeds
        from .reproduce import random_baseline
        random_baseline(args, syn, test)
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def cmd_models(args) -> int:
    from .models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_demo(args) -> int:
    from .demo import demo

    demo(iterations=args.Iteration, quiet=args.quiet)
    return 0


def _reproduce_parser(sub) -> None:
    from .reproduce import DIGITS_MODEL, PRESET_ROWS

    r = sub.add_parser("reproduce", help="run one of the paper's tables (the seed's commands) and write table.md")
    r.add_argument("preset", help=f"one of: {', '.join(PRESET_ROWS)}")
    _flag(r, "dataset", default="CIFAR10", help="MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, digits, ...")
    _flag(r, "ipc", type=int, default=1, help="images per class (default 1, the setting measured on GPU and "
          "at --scale cpu; the seed README's lines use 10)")
    _flag(r, "scale", default="cpu", help="quick (minutes), cpu (hours on a CPU), full (the paper's protocol)")
    _flag(r, "model", default=None, help=f"default ConvNet, {DIGITS_MODEL} for digits")
    _flag(r, "data_path", default="data")
    _flag(r, "save_path", default=None, help="default result/reproduce/<preset>_<dataset>_<ipc>ipc_<scale>")
    _flag(r, "device", default=None)
    _flag(r, "resume", action="store_true", help="continue an unfinished row (finished rows are always reused)")
    _flag(r, "overwrite", action="store_true", help="run every row again")
    _flag(r, "dry_run", action="store_true", help="print the expanded commands and stop")
    _flag(r, "download", action="store_true")
    _flag(r, "quiet", action="store_true")
    r.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args) -> int:
    from .reproduce import Reproduction

    rep = Reproduction(args.preset, dataset=args.dataset, ipc=args.ipc, scale=args.scale, model=args.model,
                       data_path=args.data_path, save_path=args.save_path, device=args.device, resume=args.resume,
                       overwrite=args.overwrite, quiet=args.quiet, download=args.download)
    if args.dry_run:
        print(rep.dry_run())
        return 0
    rep.run(main)
    return 0


def _export_parser(sub) -> None:
    x = sub.add_parser("export", help="write a saved synthetic set as PNGs, one folder per class, + metadata.json")
    x.add_argument("file", help="a .pt in DC's layout")
    _flag(x, "to", required=True, help="the folder to write (new or empty)")
    _flag(x, "experiment", type=int, default=-1, help="which experiment's set (default: the last)")
    _flag(x, "overwrite", action="store_true", help="replace an earlier export in --to")
    _flag(x, "format", default="png", help="png (a folder per class, default) or hf (a Hugging Face datasets "
          "folder, save_to_disk)")
    x.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from .export import export

    meta = export(args.file, args.to, args.experiment, args.overwrite, format=args.format)
    print(f"wrote {len(meta['files'])} images of {len(meta['classes'])} classes to {args.to} "
          f"(experiment {meta['experiment']}; metadata.json beside them)")
    return 0


def build_parser(scheme_default: Optional[str] = None) -> argparse.ArgumentParser:
    if scheme_default is not None:  # the seed's scripts: the condense flags only
        p = _Parser(prog=f"{scheme_default}.py", description=f"gradmatch: {scheme_default} gradient matching")
        _add_condense_flags(p, scheme_default)
        p.set_defaults(func=cmd_condense, scheme_script=scheme_default)
        return p
    p = _Parser(prog="gradmatch", description="Dataset condensation by gradient matching.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("condense", help="learn a synthetic set and evaluate it (the seed's scripts)")
    _add_condense_flags(c, None)
    c.set_defaults(func=cmd_condense)
    e = sub.add_parser("evaluate", help="train fresh networks on a saved synthetic set")
    e.add_argument("file", help="a .pt in DC's layout")
    _field_flags(e, CondenseConfig, only=("model", "lr_net", "batch_train", "seed", "dsa", "dsa_strategy"),
                 defaults={})
    _field_flags(e, RunConfig, only=EVALUATE_SETTINGS, defaults={"dataset": None})
    _flag(e, "experiment", type=int, default=-1, help="which experiment's set (default: the last)")
    e.set_defaults(func=cmd_evaluate)
    _flag(e, "baseline", default=None, help="random: also evaluate a random real subset of the same ipc")
    pl = sub.add_parser("plot", help="draw a run's curves and image grid")
    pl.add_argument("run_dir")
    pl.set_defaults(func=cmd_plot)
    m = sub.add_parser("models", help="list the model names")
    m.set_defaults(func=cmd_models)
    d = sub.add_parser("demo", help="condense the bundled digits and compare with random real images")
    _flag(d, "Iteration", type=int, default=None)
    _flag(d, "quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    _reproduce_parser(sub)
    _export_parser(sub)
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"  # as errors.warn: no file, no line of code


def main(argv: Optional[List[str]] = None, scheme: Optional[str] = None) -> int:
    import warnings

    from . import distributed

    warnings.formatwarning = _one_line_warning
    clean = False
    try:
        args = build_parser(scheme).parse_args(argv)
        if args.func in (cmd_condense, cmd_evaluate):  # under torchrun: join the job, one device each
            check_device(getattr(args, "device", None))
            _, device = distributed.init(getattr(args, "device", None))
            if device is not None:
                args.device = device
        code = args.func(args)
        clean = True
        return code
    except GradmatchError as err:
        group = distributed.current()
        where = f"process {group.rank} of {group.world}: " if group.active else ""
        print(f"error: {where}{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(wait_for_others=clean)  # after an error, others may never reach a barrier


def seed_script(scheme: str) -> None:
    """Entry point of the seed's scripts (baseline.py etc.)."""
    sys.exit(main(scheme=scheme))


if __name__ == "__main__":
    sys.exit(main())
