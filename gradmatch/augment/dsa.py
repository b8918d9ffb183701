"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021), as the authors' code in 'S' mode.

Each call picks ONE of the strategy's ops with fresh parameters; the siamese use gives the real and synthetic
images of a class the same draw.  One draw holds G parameter sets, image i using set ``group_of[i]``, so one
batched call equals G per-class calls.  Crop shifts and cutout centres are drawn as uniforms and turned into
pixels at ``apply`` time, so a draw does not depend on the image size."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import GradmatchError
from ..runtime import to_device

STRATEGY = "color_crop_cutout_flip_scale_rotate"
OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")  # op indices in DSAParams.op; -1 = none

FLIP_PROB = 0.5
SCALE_RATIO = 1.2  # sx, sy uniform in [1/1.2, 1.2)
ROTATE_DEGREES = 15.0  # uniform in [-15, 15)
CROP_PAD = 0.125  # shift by up to round(0.125 * side) pixels, zero fill
CUTOUT = 0.5  # a round(0.5 * side) square is zeroed
BRIGHTNESS = 1.0  # x + (u - 0.5) * 1.0
SATURATION = 2.0  # factor u * 2.0 on the deviation from the channel mean
CONTRAST = 0.5  # factor u + 0.5 on the deviation from the image mean


def parse_strategy(strategy: Optional[str]) -> Tuple[str, ...]:
    """'color_crop_flip' -> ('color', 'crop', 'flip'); repeats are kept (they weight the draw)."""
    if strategy is None or strategy in ("", "none", "None"):
        return ()
    names = tuple(strategy.split("_"))
    for name in names:
        if name not in OPS:
            raise GradmatchError(f"unknown DSA augmentation '{name}' in strategy '{strategy}'; "
                                 f"join some of {', '.join(OPS)} with '_' (e.g. '{STRATEGY}') or use 'none'")
    return names


@dataclass
class DSAParams:
    """G parameter sets; every op's are drawn whether used or not, so every draw advances the generator alike."""

    op: Tensor  # (G,) long
    brightness: Tensor  # (G,) added to every pixel
    saturation: Tensor  # (G,) factor on x - mean over channels
    contrast: Tensor  # (G,) factor on x - mean over the whole image
    crop: Tensor  # (G, 2) uniforms in [0, 1) -> shift (rows, cols) in [-pad, pad]
    cutout: Tensor  # (G, 2) uniforms in [0, 1) -> square centre (row, col)
    flip: Tensor  # (G,) bool: mirror left-right
    scale: Tensor  # (G, 2) sx (width), sy (height) of the sampling grid
    rotate: Tensor  # (G,) radians

    def select(self, index) -> "DSAParams":
        """The parameter sets ``index`` (int, slice or index tensor) as a new DSAParams."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return DSAParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def op_names(self) -> Tuple[str, ...]:
        return tuple(OPS[i] if i >= 0 else "none" for i in self.op.tolist())

    def _table(self) -> Tensor:
        """(G, 12) float32: op, brightness, saturation, contrast, crop r/c, cutout r/c, flip, sx, sy, angle."""
        cols = [self.op[:, None], self.brightness[:, None], self.saturation[:, None], self.contrast[:, None],
                self.crop, self.cutout, self.flip[:, None], self.scale, self.rotate[:, None]]
        return torch.cat([c.to(torch.float32) for c in cols], dim=1)


def draw(strategy: str, groups: int, generator: torch.Generator) -> DSAParams:
    """``groups`` parameter sets, each with its own op: the op indices, then (groups, 11) uniforms."""
    names = parse_strategy(strategy)
    gen_device = generator.device
    if names:
        choice = torch.randint(len(names), (groups,), generator=generator, device=gen_device)
        op = torch.tensor([OPS.index(n) for n in names], device=gen_device)[choice]
        u = torch.rand(groups, 11, generator=generator, device=gen_device)
    else:  # no augmentation: nothing is drawn
        op = torch.full((groups,), -1, dtype=torch.long, device=gen_device)
        u = torch.full((groups, 11), 0.5, device=gen_device)
    return DSAParams(op=op, brightness=(u[:, 0] - 0.5) * BRIGHTNESS, saturation=u[:, 1] * SATURATION,
                     contrast=u[:, 2] + CONTRAST, crop=u[:, 3:5], cutout=u[:, 5:7], flip=u[:, 7] < FLIP_PROB,
                     scale=u[:, 8:10] * (SCALE_RATIO - 1 / SCALE_RATIO) + 1 / SCALE_RATIO,
                     rotate=(u[:, 10] - 0.5) * 2 * ROTATE_DEGREES / 180 * math.pi)


# Columns of the per-image table built by apply (see DSAParams._table).
_OP, _BRIGHT, _SAT, _CONTRAST, _CROP, _CUTOUT, _FLIP, _SCALE, _ANGLE = 0, 1, 2, 3, 4, 6, 8, 9, 11
_ROTATE = OPS.index("rotate")


def _column(table: Tensor, col: int, x: Tensor) -> Tensor:
    return table[:, col].to(x.dtype).view(-1, 1, 1, 1)


def _color(x: Tensor, table: Tensor) -> Tensor:
    x = x + _column(table, _BRIGHT, x)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _column(table, _SAT, x) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _column(table, _CONTRAST, x) + mean


def _pixels(u: Tensor, count: int) -> Tensor:
    """Uniforms in [0, 1) -> integers uniform in [0, count)."""
    return torch.floor(u * count).long().clamp(max=count - 1)


def _crop(x: Tensor, table: Tensor) -> Tensor:
    """Shift by (dr, dc) pixels with zero fill: out[r, c] = x[r + dr, c + dc] (0 outside x)."""
    n, ch, h, w = x.shape
    pad_r, pad_c = int(h * CROP_PAD + 0.5), int(w * CROP_PAD + 0.5)
    # index into the padded image: r + dr + pad_r, with dr = pixels - pad_r
    rows = torch.arange(h, device=x.device) + _pixels(table[:, _CROP], 2 * pad_r + 1)[:, None]
    cols = torch.arange(w, device=x.device) + _pixels(table[:, _CROP + 1], 2 * pad_c + 1)[:, None]
    padded = F.pad(x, (pad_c, pad_c, pad_r, pad_r))
    out = padded.gather(2, rows[:, None, :, None].expand(n, ch, h, w + 2 * pad_c))
    return out.gather(3, cols[:, None, None, :].expand(n, ch, h, w))


def _cutout(x: Tensor, table: Tensor) -> Tensor:
    """Zero a size_r x size_c square (clipped at the border) centred on a drawn pixel."""
    _, _, h, w = x.shape
    size_r, size_c = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    # the authors' centre range: [0, side] for an even square, [0, side - 1] for an odd one
    top = _pixels(table[:, _CUTOUT], h + 1 - size_r % 2)[:, None] - size_r // 2
    left = _pixels(table[:, _CUTOUT + 1], w + 1 - size_c % 2)[:, None] - size_c // 2
    r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_r = (r >= top) & (r < top + size_r)  # (n, h)
    in_c = (c >= left) & (c < left + size_c)  # (n, w)
    keep = ~(in_r[:, :, None] & in_c[:, None, :])
    return x * keep[:, None].to(x.dtype)


def _flip(x: Tensor, table: Tensor) -> Tensor:
    return torch.where(table[:, _FLIP].view(-1, 1, 1, 1) > 0.5, x.flip(3), x)


def _affine(x: Tensor, table: Tensor) -> Tensor:
    """Scale and rotate as one resampling; theta maps output to input grid coordinates."""
    rot = table[:, _OP] == _ROTATE
    angle = table[:, _ANGLE]
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    a, d = torch.where(rot, cos, table[:, _SCALE]), torch.where(rot, cos, table[:, _SCALE + 1])
    b, c = torch.where(rot, -sin, zero), torch.where(rot, sin, zero)
    theta = torch.stack([a, b, zero, c, d, zero], dim=1).view(-1, 2, 3).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# op index + 1 -> kind: none, color, crop, cutout, flip, scale/rotate (one affine kind)
_KIND_OF_OP = torch.tensor([0, 1, 2, 3, 4, 5, 5])
_KINDS = (lambda x, table: x, _color, _crop, _cutout, _flip, _affine)


def apply(x: Tensor, params: DSAParams, group_of: Optional[Tensor] = None) -> Tensor:
    """Augment x differentiably, image i with parameter set ``group_of[i]``, each op kind in one pass."""
    n = x.shape[0]
    if n == 0:
        return x
    group_of = torch.zeros(n, dtype=torch.long) if group_of is None else group_of.to("cpu", torch.long)
    if group_of.shape != (n,):
        raise ValueError(f"group_of must have shape ({n},), got {tuple(group_of.shape)}")
    cpu_table = params._table().cpu()[group_of]
    kinds = _KIND_OF_OP[cpu_table[:, _OP].long() + 1]
    table = to_device(cpu_table, x.device)
    counts = torch.bincount(kinds, minlength=len(_KINDS)).tolist()
    if max(counts) == n:  # one kind for the whole batch
        return _KINDS[counts.index(n)](x, table)
    order = torch.argsort(kinds, stable=True)
    pieces = [_KINDS[kind](x.index_select(0, idx), table.index_select(0, idx))
              for kind, idx in enumerate(to_device(order, x.device).split(counts)) if len(idx)]
    return torch.cat(pieces).index_select(0, to_device(torch.argsort(order), x.device))


def siamese(real: Tensor, syn: Tensor, strategy: str, generator: torch.Generator,
            real_groups: Optional[Tensor] = None, syn_groups: Optional[Tensor] = None,
            groups: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """One draw applied to both batches: images of the same group get the same op and parameters."""
    if not parse_strategy(strategy):
        return real, syn
    if groups is None:
        given = [g for g in (real_groups, syn_groups) if g is not None and g.numel()]
        groups = 1 + max((int(g.max()) for g in given), default=0)
    params = draw(strategy, groups, generator)
    return apply(real, params, real_groups), apply(syn, params, syn_groups)


def augment_batch(x: Tensor, strategy: str, generator: torch.Generator) -> Tensor:
    """Non-siamese, as DSA trains networks: one op for the batch, every image its own parameters."""
    if not parse_strategy(strategy):
        return x
    params = draw(strategy, x.shape[0], generator)
    params.op = params.op[:1].expand(x.shape[0]).clone()
    return apply(x, params, torch.arange(x.shape[0]))
