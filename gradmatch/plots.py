"""Pictures: the synthetic images as a grid (one row per class) and a run's curves (``gradmatch plot RUN_DIR``)."""
from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np

from . import checks
from .errors import GradmatchError, warn
from .results import atomic_write, load_synthetic, load_torch, read_json_object, read_log
from .rundir import RunFiles
from .synset import SyntheticSet

CURVES_SIZE = (10.0, 4.0)   # inches; at DPI this is 1000 x 400 pixels
DPI = 100
SEPARATOR = 0.5             # grey level between the images of a grid
DRAWABLE = 1e100            # values beyond are left out of a curve (and said)


def image_grid(syn: SyntheticSet, min_cell: int = 32) -> np.ndarray:
    """uint8 H x W x C: row c holds the images of class c, de-normalised, each upscaled (nearest) to at least
    ``min_cell`` pixels; mid grey between them (white or black would hide the edge of a saturated image)."""
    images = syn.denormalised().numpy()                    # N, C, h, w in [0, 1]
    n, c, h, w = images.shape
    ipc = max(n // max(syn.num_classes, 1), 1)
    zoom = max(1, -(-min_cell // max(h, w)))
    images = images.repeat(zoom, axis=2).repeat(zoom, axis=3)
    h, w, pad = h * zoom, w * zoom, 2
    rows = max(syn.num_classes, -(-n // ipc))
    grid = np.full((rows * (h + pad) + pad, ipc * (w + pad) + pad, c), SEPARATOR, dtype=np.float32)
    for i in range(n):
        row, col = divmod(i, ipc)
        grid[pad + row * (h + pad): pad + row * (h + pad) + h,
             pad + col * (w + pad): pad + col * (w + pad) + w] = images[i].transpose(1, 2, 0)
    return (grid * 255).round().astype(np.uint8)


def save_image_grid(syn: SyntheticSet, path) -> Path:
    """The bare grid (no labels) as a PNG of exactly ``image_grid``'s size."""
    from PIL import Image

    grid = image_grid(syn)
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
    return Path(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_text(draw):
    """``draw`` with every label drawn as the plain text it is: a name holding ``$...$`` is not TeX."""
    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return drawn


def _save_figure(plt, fig, path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return Path(path)


def labelled_grid_size(syn: SyntheticSet) -> tuple[float, float]:
    """Figure size (inches) of ``save_labelled_grid``: a row per class, the grid's aspect kept, room for names."""
    grid_h, grid_w = image_grid(syn).shape[:2]
    rows = max(syn.num_classes, 1)
    fig_h = max(2.0, (0.55 if rows <= 20 else 0.3) * rows + 1.0)
    fig_w = max(4.0, (fig_h - 1.0) * grid_w / grid_h + 1.6)
    return round(fig_w, 2), round(fig_h, 2)


@_plain_text
def save_labelled_grid(syn: SyntheticSet, path, title: str = "") -> Path:
    """The grid with each row's class name on the left, image numbers below, and a title."""
    plt = _pyplot()
    grid = image_grid(syn)
    rows, ipc = syn.num_classes, max(syn.ipc, 1)
    fig, ax = plt.subplots(figsize=labelled_grid_size(syn), dpi=DPI)
    ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    cell_h, cell_w = (grid.shape[0] - 2) / rows, (grid.shape[1] - 2) / ipc
    fontsize = 9 if rows <= 20 else 7
    ax.set_yticks([1 + cell_h * (r + 0.5) for r in range(rows)], [str(n) for n in syn.classes], fontsize=fontsize)
    step = 1 if ipc <= 20 else int(np.ceil(ipc / 10))
    cols = list(range(0, ipc, step))
    ax.set_xticks([1 + cell_w * (c + 0.5) for c in cols], [str(c + 1) for c in cols], fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel("synthetic image of the class", fontsize=8)
    ax.set_ylabel("class", fontsize=8)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title or f"{syn.dataset} synthetic set, {syn.ipc} per class", fontsize=9, wrap=True)
    fig.tight_layout()
    return _save_figure(plt, fig, path)


def _running_mean(values: list[float], window: int) -> np.ndarray:
    c = np.cumsum(np.insert(np.asarray(values, dtype=np.float64), 0, 0.0))
    end = np.arange(1, len(values) + 1)
    start = np.maximum(0, end - window)  # a trailing window, shorter at the start
    return (c[end] - c[start]) / (end - start)


@_plain_text
def save_curves(log_path, path, title: str = "", iterations: int | None = None,
                chance: float | None = None) -> Path | None:
    """Matching loss per iteration and accuracy at each evaluation point, from a run's log; ``iterations`` fixes
    the x axes, ``chance`` (a fraction) draws guessing's accuracy.  None when the log has nothing to draw."""
    from matplotlib.ticker import MaxNLocator

    records = read_log(log_path)
    # a record whose values are not of their kind (a damaged or hand-edited log) is left out, not drawn
    losses = sorted((r["experiment"], r["iteration"], r["loss"]) for r in records
                    if r.get("event") == "iteration" and checks.is_whole(r.get("experiment"))
                    and _drawable(r.get("iteration")) and _drawable(r.get("loss")))
    evals = sorted((r["experiment"], r["iteration"], r["model"], r["mean"], r["std"])
                   for r in records if r.get("event") == "eval" and checks.is_whole(r.get("experiment"))
                   and _drawable(r.get("iteration")) and isinstance(r.get("model"), str)
                   and all(_drawable(r.get(k)) and 0 <= r[k] <= 1 for k in ("mean", "std")))
    left_out = sum(r.get("event") in ("iteration", "eval") for r in records) - len(losses) - len(evals)
    if left_out:
        warn(f"{log_path}: {left_out} record(s) hold values that cannot be drawn (not numbers, beyond +-{DRAWABLE:g}, "
             "or accuracies outside 0 to 1); they are left out of the curves")
    if not losses and not evals:
        return None
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=CURVES_SIZE, dpi=DPI)
    experiments = sorted({e for e, _, _ in losses})
    for exp in experiments:
        its, vals = zip(*[(it, v) for e, it, v in losses if e == exp])
        label = f"experiment {exp}" if len(experiments) > 1 else "loss"
        if len(vals) > 50:
            line, = ax_loss.plot(its, vals, lw=0.6, alpha=0.35)
            window = max(5, len(vals) // 50)
            ax_loss.plot(its, _running_mean(vals, window), lw=1.5, color=line.get_color(),
                         label=f"{label}, mean of {window}")
        else:
            ax_loss.plot(its, vals, lw=1.2, marker="." if len(vals) <= 20 else None, label=label)
    ax_loss.set(xlabel="iteration", ylabel="matching loss (per class and outer step)", title="matching loss")
    if losses:
        ax_loss.legend(fontsize=8)
    else:
        ax_loss.text(0.5, 0.5, "no iterations logged", ha="center", va="center", transform=ax_loss.transAxes)
    keys = sorted({(e, m) for e, _, m, _, _ in evals})
    for key in keys:
        pts = [(it, mu, sd) for e, it, m, mu, sd in evals if (e, m) == key]
        label = key[1] if len(experiments) <= 1 and len({e for e, _ in keys}) <= 1 else f"{key[1]} (exp {key[0]})"
        ax_acc.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts],
                        marker="o", capsize=3, label=label)
        last = pts[-1]
        ax_acc.annotate(f"{100 * last[1]:.1f}%", (last[0], 100 * last[1]), textcoords="offset points",
                        xytext=(-6, 7), ha="right", fontsize=8)
    if chance is not None:
        ax_acc.axhline(100 * chance, color="grey", ls="--", lw=1, label=f"chance ({100 * chance:.0f}%)")
    ax_acc.set(xlabel="iteration", ylabel="test accuracy (%)", title="accuracy at evaluation points", ylim=(0, 100))
    if evals or chance is not None:
        ax_acc.legend(fontsize=8, loc="upper left")
    if not evals:
        ax_acc.text(0.5, 0.5, "no evaluations yet", ha="center", va="center", transform=ax_acc.transAxes)
    last_it = iterations if iterations else max([it for _, it, _ in losses] + [it for _, it, *_ in evals] + [1])
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(0, last_it + max(1, last_it) * 0.03)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save_figure(plt, fig, path)


def _drawable(value) -> bool:
    """A number matplotlib can place on an axis (its range arithmetic overflows near float's limit)."""
    return checks.is_number(value) and math.isfinite(value) and abs(value) <= DRAWABLE


def _one_run(folder: Path) -> RunFiles:
    """``folder`` itself if it is a run's folder; else the one run of a --save_path."""
    if RunFiles(folder).exists():
        return RunFiles(folder)
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and RunFiles(p).exists())
    if len(runs) > 1:
        raise GradmatchError(f"{folder} holds {len(runs)} runs; plot one of: {', '.join(str(p) for p in runs)}")
    return RunFiles(runs[0] if runs else folder)


def plot_run(run_dir) -> list[Path]:
    """Draw curves.png, grid.png and (several experiments) grid_expE.png into ``run_dir``."""
    run_dir = Path(run_dir)
    if "\0" in str(run_dir):
        raise GradmatchError(f"run folder {str(run_dir)!r} holds a NUL character, which no folder name can; fix the "
                             "path")
    if not run_dir.is_dir():
        raise GradmatchError(f"run folder not found: {run_dir}")
    files = _one_run(run_dir)
    condense = read_json_object(files.config).get("condense")
    condense = condense if isinstance(condense, dict) else {}
    iterations = condense.get("iterations") if checks.is_whole(condense.get("iterations")) and \
        0 <= condense["iterations"] < 2**53 else None  # a damaged config.json: the axes from the log
    sets: list[tuple[str, SyntheticSet]] = []
    if files.pt.is_file():
        payload = load_torch(files.pt, "synthetic-set file")
        count = len(payload.get("data") or []) if isinstance(payload, dict) else 0
        after = f", after {iterations} iterations" if iterations is not None else ""
        sets = [(f"experiment {e}{after}", load_synthetic(files.pt, e)) for e in range(count)]
    elif files.checkpoint.is_file():
        from .runstate import load_checkpoint

        latest = load_checkpoint(files.checkpoint, code=False).latest()  # reading it runs no user code
        sets = [latest] if latest is not None else []
    chance = 1.0 / sets[-1][1].num_classes if sets and sets[-1][1].num_classes else None
    written = [save_curves(files.log, files.curves, title=files.dir.name, iterations=iterations, chance=chance)]
    titled = [(f"{syn.dataset or files.dir.name}: {syn.ipc} synthetic images per class\n({what})", syn)
              for what, syn in sets]
    if len(sets) > 1:
        written += [save_labelled_grid(syn, files.picture(e), title) for e, (title, syn) in enumerate(titled)]
    if sets:
        written.append(save_labelled_grid(titled[-1][1], files.picture(), titled[-1][0]))
    written = [w for w in written if w]
    if not written:
        raise GradmatchError(f"{files.dir} holds no log.jsonl, checkpoint or result to plot")
    return written
