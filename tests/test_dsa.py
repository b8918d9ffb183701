"""Differentiable Siamese Augmentation: each op against an independent computation."""
import math

import pytest
import torch

from gradmatch.augment import dsa
from gradmatch.errors import GradmatchError


def forced(op, groups=1, **values):
    """DSAParams with every group on ``op`` and neutral parameters unless given (per group)."""
    def col(v, shape=()):
        return torch.as_tensor(v, dtype=torch.float32).expand(groups, *shape).clone()

    return dsa.DSAParams(
        op=torch.full((groups,), dsa.OPS.index(op), dtype=torch.long),
        brightness=col(values.get("brightness", 0.0)),
        saturation=col(values.get("saturation", 1.0)),
        contrast=col(values.get("contrast", 1.0)),
        crop=col(values.get("crop", [0.5, 0.5]), (2,)),
        cutout=col(values.get("cutout", [0.5, 0.5]), (2,)),
        flip=torch.as_tensor(values.get("flip", False)).expand(groups).clone(),
        scale=col(values.get("scale", [1.0, 1.0]), (2,)),
        rotate=col(values.get("rotate", 0.0)),
    )


def images(n=4, c=3, h=8, w=8, seed=0, dtype=torch.float32):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_flip_where_drawn():
    x = images(4, 3, 5, 7)
    params = forced("flip", 2, flip=[True, False])
    out = dsa.apply(x, params, torch.tensor([0, 1, 0, 1]))
    assert torch.equal(out[0::2], x[0::2].flip(3))
    assert torch.equal(out[1::2], x[1::2])


@pytest.mark.parametrize("dr", [-2, -1, 0, 1, 2])
def test_crop_is_zero_padded_roll(dr):
    h, w = 16, 12  # pads: round(0.125 * 16) = 2, round(0.125 * 12) = 2 -> shifts in [-2, 2]
    x = images(5, 2, h, w)
    for dc in (-2, 0, 1, 2):
        params = forced("crop", crop=[(dr + 2 + 0.5) / 5, (dc + 2 + 0.5) / 5])
        expected = torch.roll(x, shifts=(-dr, -dc), dims=(2, 3))  # out[r] = x[r + dr]
        if dr > 0:
            expected[:, :, h - dr:] = 0
        elif dr < 0:
            expected[:, :, :-dr] = 0
        if dc > 0:
            expected[:, :, :, w - dc:] = 0
        elif dc < 0:
            expected[:, :, :, :-dc] = 0
        assert torch.equal(dsa.apply(x, params), expected), (dr, dc)


def test_crop_shift_range_on_32_pixels():
    # the authors' randint(-4, 5) on 32 x 32 images: every shift in [-4, 4], nothing else
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 16, 16] = 1.0
    seen = set()
    for k in range(9):
        for u in ((k + 0.01) / 9, (k + 0.99) / 9):
            out = dsa.apply(x, forced("crop", crop=[u, 0.5]))
            r, _ = (out[0, 0] == 1).nonzero()[0].tolist()
            seen.add(16 - r)
    assert seen == set(range(-4, 5))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_rotation_zero_and_scale_one_are_identity(dtype, tol):
    x = images(3, 3, 9, 11, dtype=dtype)
    for params in (forced("rotate", rotate=0.0), forced("scale", scale=[1.0, 1.0])):
        torch.testing.assert_close(dsa.apply(x, params), x, atol=tol, rtol=0)


def test_rotate_quarter_turn_and_scale_match_hand_resampling():
    x = images(1, 1, 6, 6, dtype=torch.float64)
    # rotating the sampling grid by +90 degrees: out[r, c] = x[c, W - 1 - r] on a square image
    out = dsa.apply(x, forced("rotate", rotate=math.pi / 2))
    expected = x.transpose(2, 3).flip(2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # sx = 2 (width): out column c samples input x-coordinate 2 * xc -> outside for the outer half
    out = dsa.apply(x, forced("scale", scale=[2.0, 1.0]))
    # centres of columns 1..4 of 6: xc = -0.5, -1/6, 1/6, 0.5 -> 2 * xc = -1, -1/3, 1/3, 1
    # -> input column ((2 xc + 1) * 6 - 1) / 2 = -0.5, 1.5, 3.5, 5.5 (half weight from zero border at ends)
    torch.testing.assert_close(out[..., 2], (x[..., 1] + x[..., 2]) / 2, atol=1e-9, rtol=0)
    torch.testing.assert_close(out[..., 3], (x[..., 3] + x[..., 4]) / 2, atol=1e-9, rtol=0)
    torch.testing.assert_close(out[..., 1], x[..., 0] / 2, atol=1e-9, rtol=0)
    assert torch.equal(out[..., 0], torch.zeros_like(out[..., 0]))


@pytest.mark.parametrize("h,w", [(8, 8), (10, 7)])
def test_cutout_zeroes_exactly_the_drawn_square(h, w):
    size_r, size_c = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    centres_r = h + 1 - size_r % 2  # even square: centre in [0, side]; odd: [0, side - 1]
    centres_c = w + 1 - size_c % 2
    x = images(1, 3, h, w) + 0.5  # no zeros of its own
    for cr in range(centres_r):
        for cc in (0, centres_c // 2, centres_c - 1):
            params = forced("cutout", cutout=[(cr + 0.5) / centres_r, (cc + 0.5) / centres_c])
            out = dsa.apply(x, params)
            mask = torch.ones(h, w)
            for r in range(cr - size_r // 2, cr - size_r // 2 + size_r):
                for c in range(cc - size_c // 2, cc - size_c // 2 + size_c):
                    if 0 <= r < h and 0 <= c < w:
                        mask[r, c] = 0
            assert mask.sum() < h * w
            assert torch.equal(out, x * mask), (cr, cc)


def test_color_formulas_on_a_hand_made_image():
    x = torch.tensor([[[[0.0, 1.0]], [[0.5, 0.2]], [[0.4, 0.6]]]])  # (1, 3, 1, 2)
    b, s, c = 0.25, 1.5, 0.8
    out = dsa.apply(x, forced("color", brightness=b, saturation=s, contrast=c))
    pixels = [[x[0, ch, 0, j].item() for ch in range(3)] for j in range(2)]
    pixels = [[v + b for v in p] for p in pixels]  # brightness
    pixels = [[(v - sum(p) / 3) * s + sum(p) / 3 for v in p] for p in pixels]  # saturation, per pixel
    mean = sum(sum(p) for p in pixels) / 6
    pixels = [[(v - mean) * c + mean for v in p] for p in pixels]  # contrast, whole image
    expected = torch.tensor([[[[pixels[0][ch], pixels[1][ch]]] for ch in range(3)]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # each alone
    torch.testing.assert_close(dsa.apply(x, forced("color", brightness=-0.3)), x - 0.3, atol=1e-6, rtol=0)
    gray = x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(dsa.apply(x, forced("color", saturation=0.0)), gray.expand_as(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(dsa.apply(x, forced("color", contrast=0.5)), (x + x.mean()) / 2, atol=1e-6, rtol=0)


def test_draw_ranges_match_the_authors():
    p = dsa.draw(dsa.STRATEGY, 4000, torch.Generator().manual_seed(1))
    assert p.brightness.min() >= -0.5 and p.brightness.max() < 0.5
    assert p.saturation.min() >= 0 and p.saturation.max() < 2
    assert p.contrast.min() >= 0.5 and p.contrast.max() < 1.5
    assert p.scale.min() >= 1 / 1.2 - 1e-6 and p.scale.max() < 1.2
    assert p.rotate.abs().max() <= 15 / 180 * math.pi
    assert 0.45 < p.flip.float().mean() < 0.55
    counts = torch.bincount(p.op, minlength=6)
    assert counts.min() > 4000 / 6 * 0.85  # each of the six groups about equally often
    assert set(dsa.draw("crop_flip", 200, torch.Generator().manual_seed(0)).op_names()) == {"crop", "flip"}


@pytest.mark.parametrize("op", dsa.OPS)
def test_gradcheck_every_op(op):
    x = images(3, 2, 6, 5, dtype=torch.float64).requires_grad_()
    params = dsa.draw(dsa.STRATEGY, 3, torch.Generator().manual_seed(3))
    params.op[:] = dsa.OPS.index(op)
    params.flip[:] = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(lambda t: dsa.apply(t, params, torch.tensor([0, 1, 2])), (x,))


def test_gradcheck_mixed_ops():
    x = images(6, 1, 5, 5, dtype=torch.float64).requires_grad_()
    params = dsa.draw(dsa.STRATEGY, 6, torch.Generator().manual_seed(4))
    params.op[:] = torch.arange(6)
    assert torch.autograd.gradcheck(lambda t: dsa.apply(t, params, torch.tensor([5, 4, 3, 2, 1, 0])), (x,))


def test_siamese_pairs_get_identical_parameters():
    real = images(12, 3, 10, 10, seed=1)
    real_groups = torch.arange(12) % 4
    pick = torch.tensor([11, 2, 5, 0, 7])
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        out_real, out_syn = dsa.siamese(real, real[pick].clone(), dsa.STRATEGY, gen, real_groups, real_groups[pick])
        assert torch.equal(out_syn, out_real[pick])
        # same image as real and syn without groups: identical
        a, b = dsa.siamese(real, real.clone(), dsa.STRATEGY, torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)


def test_same_seed_same_augmentation_different_seed_different():
    x = images(16, 3, 8, 8)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return dsa.augment_batch(x, dsa.STRATEGY, gen), dsa.siamese(x, x[:4], dsa.STRATEGY, gen)[1]

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # the global RNG is neither used nor advanced
    torch.manual_seed(0)
    state = torch.get_rng_state()
    run(7)
    assert torch.equal(torch.get_rng_state(), state)


def test_batched_groups_equal_separate_per_group_calls():
    groups = 12
    x = images(60, 3, 12, 12, seed=2).requires_grad_()
    group_of = torch.randperm(60, generator=torch.Generator().manual_seed(0)) % groups
    params = dsa.draw(dsa.STRATEGY, groups, torch.Generator().manual_seed(5))
    params.op[:] = torch.arange(groups) % 6  # every op present, mixed in one batch
    out = dsa.apply(x, params, group_of)
    for g in range(groups):
        members = (group_of == g).nonzero().squeeze(1)
        alone = dsa.apply(x[members], params.select(g))
        assert torch.equal(out[members], alone), g
    # gradients reach exactly the images that were augmented, and only through their own op
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_augment_batch_one_op_per_batch_own_parameters_per_image(seed):
    """DSA's training augmentation: the batch shares the first image's op, each image its own draw."""
    x = images(1, 3, 8, 8).expand(32, -1, -1, -1).contiguous()
    out = dsa.augment_batch(x, dsa.STRATEGY, torch.Generator().manual_seed(seed))
    params = dsa.draw(dsa.STRATEGY, 32, torch.Generator().manual_seed(seed))
    op = dsa.OPS[int(params.op[0])]
    params.op = params.op[:1].expand(32).clone()
    assert torch.equal(out, dsa.apply(x, params, torch.arange(32)))
    distinct = {tuple(o.flatten().tolist()) for o in out}
    # on 8x8 a flip has 2 outcomes, a crop 9 (shifts of -1..1), the rest vary with every draw
    assert len(distinct) > {"flip": 1, "crop": 5}.get(op, 20), op


def test_strategy_parsing_and_none():
    assert dsa.parse_strategy(dsa.STRATEGY) == ("color", "crop", "cutout", "flip", "scale", "rotate")
    assert dsa.parse_strategy("none") == () and dsa.parse_strategy("") == () and dsa.parse_strategy(None) == ()
    x = images(2)
    assert dsa.augment_batch(x, "none", torch.Generator()) is x
    assert dsa.siamese(x, x, "none", torch.Generator())[0] is x
    with pytest.raises(GradmatchError) as err:
        dsa.parse_strategy("color_blur_flip")
    assert "blur" in str(err.value) and "\n" not in str(err.value)
    for call in (lambda: dsa.augment_batch(x, "crop_shear", torch.Generator()),
                 lambda: dsa.siamese(x, x, "crop_shear", torch.Generator()),
                 lambda: dsa.draw("crop_shear", 2, torch.Generator())):
        with pytest.raises(GradmatchError, match="shear"):
            call()
