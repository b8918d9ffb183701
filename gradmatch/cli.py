"""``gradmatch condense | evaluate | plot | demo``; the seed's flag names, kebab-case aliases too.

Every user error ends as one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .errors import GradmatchError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        raise GradmatchError(f"{self.prog}: {message} (see --help)")


def _flag(parser, name: str, **kwargs):
    """Add ``--snake_case`` (the seed's spelling) with a ``--kebab-case`` alias."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, dest=name, **kwargs)


def _add_condense_flags(p: argparse.ArgumentParser, scheme_default: Optional[str]) -> None:
    if scheme_default is None:
        _flag(p, "scheme", default="intra-class",
              help="intra-class (the baseline), inter-class, interleaved, multi-level")
    _flag(p, "method", default="DC", help="accepted for compatibility with DC's scripts; ignored")
    _flag(p, "dataset", default="CIFAR10", help="MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, digits, "
          "folder, or a path to an image folder")
    _flag(p, "model", default="ConvNet", help="see `gradmatch models`")
    _flag(p, "ipc", type=int, default=1, help="images per class")
    _flag(p, "eval_mode", default="S", help="S (same model), M, W, D, A, P, N, or model names, comma-separated")
    _flag(p, "num_exp", type=int, default=5, help="independent condensations")
    _flag(p, "num_eval", type=int, default=20, help="networks evaluated per model")
    _flag(p, "epoch_eval_train", type=int, default=None, help="evaluation epochs (default 300, 1000 with augmentation)")
    _flag(p, "Iteration", type=int, default=1000, help="outer iterations")
    _flag(p, "lr_img", type=float, default=None, help="image learning rate (default 0.1, 0.01 for MLP)")
    _flag(p, "lr_net", type=float, default=0.01)
    _flag(p, "batch_real", type=int, default=256)
    _flag(p, "batch_train", type=int, default=256)
    _flag(p, "init", default="noise", help="noise or real")
    _flag(p, "data_path", default="data")
    _flag(p, "save_path", default="result")
    _flag(p, "dis_metric", default="baseline", help="baseline (DC; also 'ours'), improved, mse, cos, or "
          "package.module:function (a per-tensor distance of two row matrices)")
    _flag(p, "adaptive_step", action="store_true", help="the paper's adaptive learning step")
    _flag(p, "schedule", default=None, help="fixed, adaptive or overfit (overrides --adaptive_step)")
    _flag(p, "outer_loop", type=int, default=None)
    _flag(p, "inner_loop", type=int, default=None)
    _flag(p, "seed", type=int, default=0)
    _flag(p, "precision", default="fp32", help="fp32 (default), bf16 (real-gradient targets under bf16 autocast; "
          "for CPUs with bf16 arithmetic or a GPU), bf16-sim (bf16 rounding computed in fp32)")
    _flag(p, "matching", default="fast", help="fast (default), loop (the textbook per-class loop) or vmap (all "
          "classes in one torch.func pass; for GPUs)")
    _eval_method_flag(p)
    _flag(p, "device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    _flag(p, "eval_iterations", default=None, help="comma-separated iterations to evaluate at")
    _flag(p, "checkpoint_every", type=int, default=10, help="iterations between checkpoints")
    _flag(p, "resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
          help="continue the run from its last checkpoint (this run's folder, or RUN_DIR)")
    _flag(p, "overwrite", action="store_true", help="replace a finished or unfinished run of the same name")
    _flag(p, "download", action="store_true", help="fetch missing dataset files (checksummed)")
    _flag(p, "quiet", action="store_true", help="no progress bar")


def _eval_method_flag(parser) -> None:
    _flag(parser, "eval_method", default="auto", help="how the num_eval networks are trained: auto, sequential, "
          "parallel (worker threads) or batched (one torch.func ensemble; for GPUs): same accuracies")


def _run_config(args):
    from .condense import CondenseConfig
    from .run import RunConfig

    schedule = args.schedule or ("adaptive" if args.adaptive_step else "fixed")
    condense = CondenseConfig(ipc=args.ipc, model=args.model, scheme=args.scheme, dis_metric=args.dis_metric,
                              iterations=args.Iteration, lr_img=args.lr_img, lr_net=args.lr_net,
                              batch_real=args.batch_real, batch_train=args.batch_train, init=args.init,
                              schedule=schedule, outer_loop=args.outer_loop, inner_loop=args.inner_loop,
                              seed=args.seed, precision=args.precision, matching=args.matching)
    condense = condense.resolved()  # checks names before any data is read
    from .evaluate import check_eval_method, eval_pool
    from .models import is_model, list_models

    check_eval_method(args.eval_method)

    for model in eval_pool(args.eval_mode, condense.model):
        if not is_model(model):
            raise GradmatchError(f"--eval_mode names unknown model '{model}'; choose S, M, W, D, A, P, N or "
                                 f"names from: {', '.join(list_models())}")
    points = None
    if args.eval_iterations:
        try:
            points = [int(x) for x in args.eval_iterations.split(",")]
        except ValueError:
            raise GradmatchError(
                f"--eval_iterations takes comma-separated integers, got '{args.eval_iterations}'") from None
    for name in ("num_exp", "num_eval", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise GradmatchError(f"--{name} must be at least 1, got {getattr(args, name)}")
    return RunConfig(condense=condense, dataset=args.dataset, data_path=args.data_path, save_path=args.save_path,
                     eval_mode=args.eval_mode, num_exp=args.num_exp, num_eval=args.num_eval,
                     epoch_eval_train=args.epoch_eval_train, eval_iterations=points,
                     checkpoint_every=args.checkpoint_every, device=args.device, download=args.download,
                     eval_method=args.eval_method,
                     overwrite=args.overwrite, quiet=args.quiet)


def cmd_condense(args) -> int:
    import json

    from .run import Run, RunConfig

    if isinstance(args.resume, str):  # --resume RUN_DIR: its own settings
        config_file = Path(args.resume) / "config.json"
        if not config_file.is_file():
            raise GradmatchError(f"--resume {args.resume}: no config.json there; point at a run folder")
        config = RunConfig.from_dict(json.loads(config_file.read_text()))
        config.save_path = str(Path(args.resume).parent)
        config.device, config.quiet, config.eval_method = args.device, args.quiet, args.eval_method
        if args.data_path != "data":
            config.data_path = args.data_path
    else:
        config = _run_config(args)
    Run(config).start(resume=bool(args.resume))
    return 0


def cmd_evaluate(args) -> int:
    from . import data, distributed
    from .evaluate import check_eval_method, eval_pool, evaluate
    from .results import load_synthetic

    check_eval_method(args.eval_method)
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
    for model in eval_pool(args.eval_mode, args.model):
        result = evaluate(syn, model, test, num_eval=args.num_eval, epochs=args.epoch_eval_train,
                          lr=args.lr_net, batch_size=args.batch_train, seed=args.seed, device=args.device,
                          method=args.eval_method)
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


def build_parser(scheme_default: Optional[str] = None) -> argparse.ArgumentParser:
    if scheme_default is not None:  # the seed's scripts: the condense flags only
        p = _Parser(prog=f"{scheme_default}.py", description=f"gradmatch: {scheme_default} gradient matching")
        _add_condense_flags(p, scheme_default)
        p.set_defaults(func=cmd_condense, scheme=scheme_default)
        return p
    p = _Parser(prog="gradmatch", description="Dataset condensation by gradient matching.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("condense", help="learn a synthetic set and evaluate it (the seed's scripts)")
    _add_condense_flags(c, None)
    c.set_defaults(func=cmd_condense)
    e = sub.add_parser("evaluate", help="train fresh networks on a saved synthetic set")
    e.add_argument("file", help="a .pt in DC's layout")
    _flag(e, "model", default="ConvNet")
    _flag(e, "eval_mode", default="S")
    _flag(e, "dataset", default=None, help="default: the one saved in the file")
    _flag(e, "data_path", default="data")
    _flag(e, "experiment", type=int, default=-1, help="which experiment's set (default: the last)")
    _flag(e, "num_eval", type=int, default=20)
    _flag(e, "epoch_eval_train", type=int, default=None)
    _flag(e, "lr_net", type=float, default=0.01)
    _flag(e, "batch_train", type=int, default=256)
    _flag(e, "seed", type=int, default=0)
    _flag(e, "device", default=None)
    _eval_method_flag(e)
    _flag(e, "download", action="store_true")
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
    from . import export, reproduce
    reproduce.add_command(sub)
    export.add_command(sub)
    return p


def main(argv: Optional[List[str]] = None, scheme: Optional[str] = None) -> int:
    from . import distributed

    clean = False
    try:
        args = build_parser(scheme).parse_args(argv)
        if args.func in (cmd_condense, cmd_evaluate):  # under torchrun: join the job, one device each
            _, args.device = distributed.init(args.device)
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
