"""Pictures: the synthetic images as a grid (one row per class) and the curves of a run."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from .condense import SyntheticSet
from .results import read_log


def image_grid(syn: SyntheticSet, min_cell: int = 32) -> np.ndarray:
    """uint8 H x W x C array: row c holds the ipc images of class c, de-normalised and clamped,
    each upscaled (nearest) to at least ``min_cell`` pixels so tiny images stay visible."""
    images = syn.denormalised().numpy()                    # N, C, h, w in [0, 1]
    n, c, h, w = images.shape
    ipc = max(n // syn.num_classes, 1)
    zoom = max(1, -(-min_cell // max(h, w)))
    images = images.repeat(zoom, axis=2).repeat(zoom, axis=3)
    h, w, pad = h * zoom, w * zoom, 2
    grid = np.ones((syn.num_classes * (h + pad) + pad, ipc * (w + pad) + pad, c), dtype=np.float32)
    for i in range(n):
        row, col = divmod(i, ipc)
        grid[pad + row * (h + pad): pad + row * (h + pad) + h,
             pad + col * (w + pad): pad + col * (w + pad) + w] = images[i].transpose(1, 2, 0)
    return (grid * 255).round().astype(np.uint8)


def save_image_grid(syn: SyntheticSet, path) -> Path:
    from PIL import Image

    from .results import atomic_write
    import io

    grid = image_grid(syn)
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
    return Path(path)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_labelled_grid(syn: SyntheticSet, path, title: str = "") -> Path:
    """The grid with class names beside each row (matplotlib)."""
    plt = _figure()
    grid = image_grid(syn)
    rows = syn.num_classes
    fig_h = max(2.0, 0.45 * rows + 0.8)
    fig, ax = plt.subplots(figsize=(max(3.0, fig_h * grid.shape[1] / grid.shape[0] + 1.2), fig_h), dpi=100)
    ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    cell = grid.shape[0] / rows
    ax.set_yticks([cell * (r + 0.5) for r in range(rows)], [str(n) for n in syn.classes])
    ax.set_xticks([])
    ax.set_title(title or f"{syn.dataset} synthetic set, {syn.ipc} per class", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def save_curves(log_path, path) -> Optional[Path]:
    """Matching loss per iteration and accuracy at each evaluation point, from a run's log."""
    records = read_log(log_path)
    losses = sorted((r["experiment"], r["iteration"], r["loss"]) for r in records if r.get("event") == "iteration")
    evals = sorted((r["experiment"], r["iteration"], r["model"], r["mean"], r["std"])
                   for r in records if r.get("event") == "eval")
    if not losses and not evals:
        return None
    plt = _figure()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for exp in sorted({e for e, _, _ in losses}):
        pts = [(it, loss) for e, it, loss in losses if e == exp]
        ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], label=f"experiment {exp}", lw=1)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("matching loss (per class and outer step)")
    ax_loss.set_title("matching loss")
    if losses:
        ax_loss.legend(fontsize=8)
    for key in sorted({(e, m) for e, _, m, _, _ in evals}):
        pts = [(it, mu, sd) for e, it, m, mu, sd in evals if (e, m) == key]
        ax_acc.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts],
                        marker="o", capsize=3, label=f"{key[1]} (exp {key[0]})")
    ax_acc.set_xlabel("iteration")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("accuracy at evaluation points")
    if evals:
        ax_acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_run(run_dir) -> List[Path]:
    """Draw curves.png and grid.png (the latest synthetic set, labelled) into ``run_dir``."""
    from .errors import GradmatchError
    from .results import load_synthetic

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GradmatchError(f"run folder not found: {run_dir}")
    written = []
    curves = save_curves(run_dir / "log.jsonl", run_dir / "curves.png")
    if curves:
        written.append(curves)
    final = run_dir.parent / f"{run_dir.name}.pt"
    source = final if final.is_file() else run_dir / "checkpoint.pt"
    if source.is_file():
        if source.name == "checkpoint.pt":
            from .run import synthetic_from_checkpoint

            syn = synthetic_from_checkpoint(source)
        else:
            syn = load_synthetic(source)
        written.append(save_labelled_grid(syn, run_dir / "grid.png"))
    if not written:
        raise GradmatchError(f"{run_dir} holds no log.jsonl, checkpoint or result to plot")
    return written
