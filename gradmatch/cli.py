"""``gradmatch condense | evaluate | reproduce | export | plot | models | demo``; the seed's flag names,
kebab-case aliases too.  Every flag is generated from its declaration in ``gradmatch.config``.

Every user error ends as one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .config import (
    CondenseConfig,
    EvalConfig,
    RunConfig,
    apply,
    check_device,
    fields_for_cli,
    owner_of,
)
from .errors import GradmatchError, Interrupted, is_out_of_memory, out_of_memory, scope, unknown_name, warn

METHOD_CHOICES = ("DC", "DSA")
DEMO_ITERATIONS = 10
BASELINES = ("random",)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        raise GradmatchError(f"{self.prog}: {message} (see --help)")


def _flag(parser, name: str, dest: Optional[str] = None, **kwargs):
    """Add ``--name`` (the seed's spelling) with a ``--kebab-case`` alias."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, dest=dest or name, **kwargs)


def _field_flags(parser, cls, only=None, skip=(), defaults: Optional[Dict[str, Any]] = None) -> None:
    """One flag per field of ``cls`` (``config.py`` declares them), spelt as the seed spells it.  A flag
    left out is absent from the parsed namespace (argparse.SUPPRESS): the dataclass is the one place
    defaults live, and the caller knows which flags were given."""
    for f in fields_for_cli(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        meta = f.metadata
        help = meta.get("help") or ""
        default = (defaults or {}).get(f.name, f.default)  # a command of its own default (demo's iterations)
        if default not in (None, False, dataclasses.MISSING) and "default" not in help:
            help = f"{help} (default {default})".strip()
        kwargs = {"help": help or None, "default": argparse.SUPPRESS}
        if f.default is False:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = meta.get("type") or type(f.default)
        _flag(parser, meta.get("flag") or f.name, dest=f.name, **kwargs)


def _given(args) -> Dict[str, Any]:
    """The flags given on the command line, by field name (absent ones were suppressed)."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command", "scheme_script")}


# ---- condense -----------------------------------------------------------------------------------------
def _add_condense_flags(p: argparse.ArgumentParser, scheme_default: Optional[str]) -> None:
    _field_flags(p, CondenseConfig, skip=("scheme",) if scheme_default else ())  # a seed script is its scheme
    _field_flags(p, EvalConfig)
    _field_flags(p, RunConfig)
    _flag(p, "method", default=argparse.SUPPRESS, help="DC (the default) or DSA (same as --dsa), as DC's scripts")
    _flag(p, "adaptive_step", action="store_true", default=argparse.SUPPRESS,
          help="the paper's adaptive learning step (--schedule adaptive)")
    _flag(p, "resume", nargs="?", const=True, default=argparse.SUPPRESS, metavar="RUN_DIR",
          help="continue the run from its last checkpoint (this run's folder, or RUN_DIR)")


def _settings(given: Dict[str, Any], scheme_default: Optional[str] = None) -> Dict[str, Any]:
    """The given flags as settings ({field name: value}): --method and --adaptive_step folded in."""
    settings = {k: v for k, v in given.items() if k not in ("method", "adaptive_step", "resume")}
    if scheme_default is not None:
        settings["scheme"] = scheme_default
    method = given.get("method", "DC")
    if method not in METHOD_CHOICES:
        raise unknown_name("method (--method)", method, METHOD_CHOICES)
    if method == "DSA":
        settings["dsa"] = True
    if given.get("adaptive_step") and "schedule" not in settings:
        settings["schedule"] = "adaptive"
    return settings


def parse_run(argv: List[str], scheme: Optional[str] = None) -> Tuple[RunConfig, Dict[str, Any], Any]:
    """``gradmatch condense ARGV`` (or a seed script's ARGV): the validated RunConfig, the settings given,
    and --resume (False, True, or a run folder)."""
    args = build_parser(scheme).parse_args(argv if scheme else ["condense", *argv])
    given = _given(args)
    settings = _settings(given, scheme)
    return apply(RunConfig(), settings).validate(), settings, given.get("resume", False)


def cmd_condense(args) -> int:
    from .run import Run
    from .runstate import load_checkpoint

    given = _given(args)
    settings = _settings(given, getattr(args, "scheme_script", None))
    config = apply(RunConfig(), settings).validate()
    resume = given.get("resume", False)
    if isinstance(resume, str):  # --resume RUN_DIR: the run there, whatever the flags would name
        run_dir = Path(resume)
        checkpoint = run_dir / "checkpoint.pt"
        if not checkpoint.is_file():
            raise GradmatchError(f"nothing to resume: no checkpoint at {checkpoint}; point --resume at a run folder")
        config = load_checkpoint(checkpoint).config
        config.save_path = settings["save_path"] = str(run_dir.parent)
        if config.run_dir.resolve() != run_dir.resolve():
            raise GradmatchError(f"{run_dir} holds the run {config.name} (by the settings in its checkpoint); its "
                                 f"folder was renamed or its checkpoint edited: name the folder {config.name} to "
                                 "resume it, or start the run again with --overwrite")
    Run(config, settings).start(resume=bool(resume))
    return 0


# ---- evaluate -----------------------------------------------------------------------------------------
EVALUATE_CONDENSE = ("model", "lr_net", "batch_train", "seed", "dsa", "dsa_strategy")
EVALUATE_RUN = ("dataset", "data_path", "device", "download", "test_fraction", "image_column", "label_column", "size")


def cmd_evaluate(args) -> int:
    from . import data, distributed
    from .evaluate import check_models_fit, evaluate, random_real_subset
    from .export import check_normalisation
    from .results import load_synthetic

    given = _given(args)
    settings = {k: v for k, v in given.items() if k not in ("file", "experiment", "baseline")}
    config = apply(RunConfig(dataset=None), settings)  # no dataset: the set's own, unless given
    if config.size is not None or config.test_fraction is not None:
        dataclasses.replace(config, dataset="x").validate()  # the data settings' own checks
    config.condense.validate()
    config.evaluation.validate(config.condense.model)
    check_device(config.device)
    protocol = config.protocol()  # one protocol: the set and its baseline are trained the same way
    if args.baseline is not None and args.baseline not in BASELINES:
        raise unknown_name("baseline (--baseline)", args.baseline, BASELINES)
    syn = load_synthetic(args.file, args.experiment)  # checked once, here
    dataset = config.dataset or syn.dataset
    if not dataset:
        raise GradmatchError(f"{args.file} does not say its dataset; pass --dataset")
    test = data.load(dataset, config.data_path, "test", **config.data_options())
    if test.note:
        warn(test.note)
    if test.images.shape[1:] != syn.images.shape[1:]:  # first: a resize changes the statistics too
        resized = f" resized by --size {','.join(map(str, config.size))}" if config.size else ""
        raise GradmatchError(f"images in {args.file} are {tuple(syn.images.shape[1:])}, {dataset} test images{resized} "
                             f"are {tuple(test.images.shape[1:])}; pass the dataset the set was made from"
                             f"{' and the --size it was made at' if config.size else ''}")
    check_normalisation(syn, test, args.file)
    if not syn.dataset:  # DC's own layout: the set does not say how it was normalised, nor its classes
        warn(f"{args.file} names no dataset, classes or normalisation (DC's layout): its labels are read as "
             f"classes of --dataset {dataset} and its pixels as normalised like {dataset}'s")
        syn.dataset, syn.mean, syn.std = test.name, test.mean, test.std
        if int(syn.labels.max()) >= test.num_classes:
            raise GradmatchError(f"{args.file} has labels up to {int(syn.labels.max())}, beyond the "
                                 f"{test.num_classes} classes of {dataset}; pass the dataset the set was made from")
        syn.classes = list(test.classes)  # its labels are the dataset's classes, those it lacks included
    check_models_fit(protocol.models, syn.channel, syn.num_classes, syn.im_size, flag="--eval_mode/--model")
    main_process = distributed.current().is_main
    for model in protocol.models:
        result = evaluate(syn, model, test, protocol, device=config.device)
        if main_process:
            print(result.line())
    if args.baseline == "random":  # a random real subset of the same ipc, the same protocol
        train = data.load(dataset, config.data_path, "train", **config.data_options())
        subset = random_real_subset(train, syn.ipc, seed=protocol.seed)
        counts = subset.labels.bincount(minlength=subset.num_classes).tolist()
        size = f"{syn.ipc} per class" if min(counts) == syn.ipc else \
            f"{min(counts)} to {max(counts)} per class: some classes hold fewer than {syn.ipc}"
        for model in protocol.models:
            result = evaluate(subset, model, test, protocol, device=config.device)
            if main_process:
                print(f"random real subset ({size}): {result.line()}")
    return 0


# ---- the other commands -------------------------------------------------------------------------------
def cmd_plot(args) -> int:
    from .plots import plot_run

    try:
        written = plot_run(args.run_dir)
    except OSError as err:  # a read-only or full disk: the pictures cannot be written beside the run
        raise GradmatchError(f"cannot write the pictures into {args.run_dir} ({err.strerror or err}); copy the run "
                             "folder somewhere writable and plot it there") from None
    for path in written:
        print(path)
    return 0


def cmd_models(args) -> int:
    from .models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_demo(args) -> int:
    from .demo import demo

    given = _given(args)
    demo(iterations=given.get("iterations", DEMO_ITERATIONS), quiet=given.get("quiet", False))
    return 0


REPRODUCE_CONDENSE = ("ipc", "model")
REPRODUCE_RUN = ("dataset", "data_path", "save_path", "device", "download", "quiet", "overwrite", "experiments",
                 "test_fraction", "image_column", "label_column", "size")


def cmd_reproduce(args) -> int:
    from .reproduce import Reproduction, default_save_path

    given = _given(args)
    settings = {k: v for k, v in given.items() if owner_of_or_none(k)}
    base = apply(RunConfig(), settings)
    if "save_path" not in settings:
        base.save_path = str(default_save_path(args.preset, base.dataset, base.condense.ipc, args.scale))
    base.validate()
    rep = Reproduction(args.preset, base, scale=args.scale, resume=args.resume)
    if args.dry_run:
        print(rep.dry_run())
        return 0
    rep.run()
    return 0


def owner_of_or_none(name: str) -> bool:
    try:
        owner_of(name)
    except GradmatchError:
        return False
    return True


def cmd_export(args) -> int:
    from .export import export

    meta = export(args.file, args.to, args.experiment, bool(getattr(args, "overwrite", False)), format=args.format)
    print(f"wrote {len(meta['files'])} images of {len(meta['classes'])} classes to {args.to} "
          f"(experiment {meta['experiment']}; metadata.json beside them)")
    return 0


def build_parser(scheme_default: Optional[str] = None) -> argparse.ArgumentParser:
    from .reproduce import PRESET_ROWS, SCALES

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
    _field_flags(e, CondenseConfig, only=EVALUATE_CONDENSE)
    _field_flags(e, EvalConfig)
    _field_flags(e, RunConfig, only=EVALUATE_RUN)
    _flag(e, "experiment", type=int, default=-1, help="which experiment's set (default: the last)")
    _flag(e, "baseline", default=None, help="random: also evaluate a random real subset of the same ipc, "
          "trained the same way")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("reproduce", help="run one of the paper's tables (the seed's commands) and write table.md")
    r.add_argument("preset", help=f"one of: {', '.join(PRESET_ROWS)}")
    _field_flags(r, CondenseConfig, only=REPRODUCE_CONDENSE)
    _field_flags(r, RunConfig, only=REPRODUCE_RUN)
    _flag(r, "scale", default="cpu", help=f"{', '.join(SCALES)}: quick (minutes), cpu (hours on a CPU), full (the "
          "paper's protocol)")
    _flag(r, "resume", action="store_true", help="continue an unfinished row (finished rows are always reused)")
    _flag(r, "dry_run", action="store_true", help="print the expanded commands and stop")
    r.set_defaults(func=cmd_reproduce)

    x = sub.add_parser("export", help="write a saved synthetic set as PNGs, one folder per class, + metadata.json")
    x.add_argument("file", help="a .pt in DC's layout")
    _flag(x, "to", required=True, help="the folder to write (new or empty)")
    _flag(x, "experiment", type=int, default=-1, help="which experiment's set (default: the last)")
    _field_flags(x, RunConfig, only=("overwrite",))
    _flag(x, "format", default="png", help="png (a folder per class, default) or hf (a Hugging Face datasets "
          "folder, save_to_disk)")
    x.set_defaults(func=cmd_export)

    pl = sub.add_parser("plot", help="draw a run's curves and image grid")
    pl.add_argument("run_dir")
    pl.set_defaults(func=cmd_plot)
    m = sub.add_parser("models", help="list the model names")
    m.set_defaults(func=cmd_models)
    d = sub.add_parser("demo", help="condense the bundled digits and compare with random real images")
    _field_flags(d, CondenseConfig, only=("iterations",), defaults={"iterations": DEMO_ITERATIONS})
    _field_flags(d, RunConfig, only=("quiet",))
    d.set_defaults(func=cmd_demo)
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"  # as errors.warn: no file, no line of code


def main(argv: Optional[List[str]] = None, scheme: Optional[str] = None) -> int:
    import warnings

    from . import distributed

    warnings.formatwarning = _one_line_warning
    clean = False
    try:
        with scope():
            args = build_parser(scheme).parse_args(argv)
            if args.func in (cmd_condense, cmd_evaluate):  # under torchrun: join the job, one device each
                device = getattr(args, "device", None)
                check_device(device)
                _, device = distributed.init(device)
                if device is not None:
                    args.device = device
            code = args.func(args)
        clean = True
        return code
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    except GradmatchError as err:
        group = distributed.current()
        where = f"process {group.rank} of {group.world}: " if group.active else ""
        print(f"error: {where}{err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # an allocation that failed, wherever: one line, not a traceback
        if not is_out_of_memory(err):
            raise
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        fix = "lower the sizes that set it: --ipc, --batch_real, --size, --num_eval, --num_exp or the model"
        print(f"error: {out_of_memory('this command', fix)} ({first})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(wait_for_others=clean)  # after an error, others may never reach a barrier


def seed_script(scheme: str) -> None:
    """Entry point of the seed's scripts (baseline.py etc.)."""
    sys.exit(main(scheme=scheme))


__all__ = ["build_parser", "main", "parse_run", "seed_script"]


if __name__ == "__main__":
    sys.exit(main())
