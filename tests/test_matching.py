"""Distances and matching losses against independent computations written here."""
import math

import pytest
import torch
import torch.nn.functional as F

from gradmatch.errors import GradmatchError
from gradmatch.matching import gradient_distance, matching_loss, resolve_metric
from gradmatch.models import create_model

pytestmark = pytest.mark.usefixtures("float64")  # double precision, so the checks can be tight (conftest)





# ---- distances on hand-made gradients -------------------------------------------------------
A = [torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64), torch.tensor([5.0, 7.0])]  # weight, bias
B = [torch.tensor([[4.0, 3.0], [0.0, 2.0]], dtype=torch.float64), torch.tensor([1.0, 1.0])]


def test_baseline_distance_by_hand():
    # row 1: cos = (12 + 12) / 25 = 0.96; row 2: orthogonal, cos = 0; the bias counts nothing
    assert gradient_distance(A, B, "baseline").item() == pytest.approx((1 - 0.96) + 1, rel=1e-12)


def test_improved_distance_adds_row_norms_of_the_difference():
    expected = (1 - 0.96) + 1 + math.sqrt(1 + 1) + math.sqrt(1 + 4)
    assert gradient_distance(A, B, "improved").item() == pytest.approx(expected, rel=1e-12)


def test_dc_distance_adds_its_epsilon_to_the_product_of_norms():  # VICO's distance_wb
    expected = (1 - 24 / (25 + 1e-6)) + (1 - 0.0)
    assert gradient_distance(A, B, "dc").item() == pytest.approx(expected, rel=1e-12)
    assert gradient_distance(A, B, "ours").item() == gradient_distance(A, B, "dc").item()


def test_mse_and_cos_use_whole_flattened_vectors_including_biases():
    a = torch.tensor([3.0, 4.0, 1.0, 0.0, 5.0, 7.0])
    b = torch.tensor([4.0, 3.0, 0.0, 2.0, 1.0, 1.0])
    assert gradient_distance(A, B, "mse").item() == pytest.approx(((a - b) ** 2).sum().item())
    assert gradient_distance(A, B, "cos").item() == pytest.approx(1 - ((a @ b) / (a.norm() * b.norm())).item())


def seed_rows_distance(real, syn, improved):
    """The seed's distance_baseline / distance_improved, written again from its definition:
    rows = one per output unit, torch's cosine_similarity, 1-D tensors skipped."""
    if real.dim() == 1:
        return 0
    real, syn = real.reshape(real.shape[0], -1), syn.reshape(syn.shape[0], -1)
    dis = 1 - F.cosine_similarity(real, syn, dim=-1)
    if improved:
        dis = dis + torch.norm(real - syn, dim=-1)
    return torch.sum(dis)


@pytest.mark.parametrize("metric", ["baseline", "improved"])
def test_seed_distances_on_ordinary_tiny_and_zero_rows(metric):
    g = torch.Generator().manual_seed(3)
    real = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    syn = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    real[1] *= 1e-5  # tiny norms: where torch's epsilon (1e-8) and DC's (1e-6) differ most
    syn[2] *= 1e-5
    real[3] = 0.0  # zero norms
    syn[4] = 0.0
    real[5] = syn[5] = 0.0
    bias_r, bias_s = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    improved = metric == "improved"
    expected = 0.0 + seed_rows_distance(real, syn, improved) + seed_rows_distance(bias_r, bias_s, improved)
    got = gradient_distance([syn, bias_s], [real, bias_r], metric)
    assert abs(got.item() - expected.item()) <= 1e-12 * abs(expected.item())
    # DC's rule gives a visibly different number on the tiny rows (its 1e-6 against norms of ~1e-5)
    assert abs(gradient_distance([syn, bias_s], [real, bias_r], "dc").item() - expected.item()) > 1e-4


def test_conv_and_norm_weights_are_viewed_as_rows_per_output_unit():
    conv_a, conv_b = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3)
    ln_a, ln_b = torch.randn(5, 2, 2), torch.randn(5, 2, 2)
    got = gradient_distance([conv_a, ln_a], [conv_b, ln_b], "baseline")
    expected = sum((1 - F.cosine_similarity(x.reshape(len(x), -1), y.reshape(len(y), -1), dim=1, eps=0)).sum()
                   for x, y in ((conv_a, conv_b), (ln_a, ln_b)))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_identical_gradients_are_at_distance_zero():
    for metric in ("baseline", "improved", "mse", "cos"):
        assert abs(gradient_distance(A, A, metric).item()) < 1e-5


def test_user_distance_callable_and_module_path():
    calls = []

    def l1(syn_rows, real_rows):
        calls.append(syn_rows.shape)
        return (syn_rows - real_rows).abs().sum()

    assert gradient_distance(A, B, l1).item() == pytest.approx(1 + 1 + 1 + 2)
    assert calls == [(2, 2)]  # 1-D tensors are skipped
    fn = resolve_metric("tests.user_distances:l1_rows")
    assert gradient_distance(A, B, fn).item() == pytest.approx(5.0)


@pytest.mark.parametrize("bad", ["euclid", "tests.user_distances:missing", "no_such_module_x:f"])
def test_bad_metric_names_raise_one_clear_error(bad):
    with pytest.raises(GradmatchError) as err:
        resolve_metric(bad)
    assert "\n" not in str(err.value)


# ---- matching_loss against a plain per-class loop -------------------------------------------
def plain_grad(net, x, y, create_graph):
    params = [p for p in net.parameters()]
    loss = torch.nn.functional.cross_entropy(net(x), y)
    g = torch.autograd.grad(loss, params, create_graph=create_graph)
    return [t if create_graph else t.detach() for t in g]


def plain_layerwise(gs, gr, improved=False):  # the seed's match_loss, written out again
    total = 0.0
    for s, r in zip(gs, gr):
        total = total + seed_rows_distance(r, s, improved)
    return total


def make_batches(k=3, per_class=5, ipc=2, shape=(3, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    real_x = torch.randn(k * per_class, *shape, generator=g)
    real_y = torch.arange(k).repeat_interleave(per_class)
    syn_x = torch.randn(k * ipc, *shape, generator=g).requires_grad_(True)
    syn_y = torch.arange(k).repeat_interleave(ipc)
    return (real_x, real_y), (syn_x, syn_y)


@pytest.mark.parametrize("model", ["ConvNet", "ConvNetLN", "MLP", "LeNet"])
@pytest.mark.parametrize("scheme", ["intra-class", "multi-level"])
@pytest.mark.parametrize("metric", ["baseline", "improved"])
@pytest.mark.parametrize("engine", ["loop", "fast"])
def test_matching_loss_equals_plain_per_class_loop(model, scheme, metric, engine):
    torch.manual_seed(1)
    net = create_model(model, 3, 3, (16, 16) if model != "LeNet" else (32, 32))
    shape = (3, 32, 32) if model == "LeNet" else (3, 16, 16)
    real, syn = make_batches(shape=shape)
    loss = matching_loss(net, real, syn, scheme, metric, engine=engine)
    (grad,) = torch.autograd.grad(loss, syn[0])

    improved = metric == "improved"
    expected = 0
    gs_all, gr_all = [], []
    for c in range(3):
        gr = plain_grad(net, real[0][real[1] == c], real[1][real[1] == c], False)
        gs = plain_grad(net, syn[0][syn[1] == c], syn[1][syn[1] == c], True)
        expected = expected + plain_layerwise(gs, gr, improved)
        gs_all.append(gs)
        gr_all.append(gr)
    if scheme == "multi-level":
        mean_s = [sum(t) / 3 for t in zip(*gs_all)]
        mean_r = [sum(t) / 3 for t in zip(*gr_all)]
        expected = expected + 3 * plain_layerwise(mean_s, mean_r, improved)
    (expected_grad,) = torch.autograd.grad(expected, syn[0])
    assert abs(loss.item() - expected.item()) <= 1e-12 * abs(expected.item())
    assert float((grad - expected_grad).abs().max()) <= 1e-12 * float(expected_grad.abs().max())


def test_inter_class_is_k_times_distance_of_mixed_batches():
    torch.manual_seed(2)
    net = create_model("ConvNet", 3, 3, (16, 16))
    real, syn = make_batches()
    loss = matching_loss(net, real, syn, "inter-class", "improved")
    gr = plain_grad(net, *real, False)
    gs = plain_grad(net, *syn, True)
    assert loss.item() == pytest.approx(3 * gradient_distance(gs, gr, "improved").item(), rel=1e-10)


def test_interleaved_alternates_intra_and_inter():
    torch.manual_seed(3)
    net = create_model("ConvNet", 3, 3, (16, 16))
    real, syn = make_batches()
    for it, concrete in ((0, "intra-class"), (1, "inter-class"), (2, "intra-class")):
        got = matching_loss(net, real, syn, "interleaved", iteration=it)
        assert got.item() == pytest.approx(matching_loss(net, real, syn, concrete).item(), rel=1e-12)


def test_unknown_scheme_lists_the_choices():
    net = create_model("ConvNet", 3, 3, (16, 16))
    real, syn = make_batches()
    with pytest.raises(GradmatchError, match="multi-level"):
        matching_loss(net, real, syn, "cross-class")
