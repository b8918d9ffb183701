"""Network zoo: DC's parameter counts, forward shapes, variants and user-facing errors."""

import pytest
import torch
from torch import nn

from gradmatch.errors import GradmatchError
from gradmatch.models import create_model, has_batchnorm, list_models, register_model, registry

SHAPES = {"1x28x28": (1, (28, 28)), "3x32x32": (3, (32, 32))}

# model: (params for 1x28x28, params for 3x32x32, parameter tensors), 10 classes
PARAM_COUNTS = {
    "MLP": (118_282, 411_146, 6),
    "ConvNet": (317_706, 320_010, 14),
    "ConvNetBN": (317_706, 320_010, 14),
    "ConvNetLN": (661_002, 663_306, 14),
    "ConvNetD4": (450_186, 452_490, 18),
    "ConvNetW32": (24_138, 24_714, 14),
    "LeNet": (61_706, 62_006, 10),
    "AlexNet": (1_865_802, 1_872_202, 12),
    "VGG11": (9_229_962, 9_231_114, 34),
    "VGG11BN": (9_229_962, 9_231_114, 34),
    "ResNet18": (11_172_810, 11_173_962, 62),
    "ResNet18BN": (11_172_810, 11_173_962, 62),
    "ResNet18BN_AP": (11_213_770, 11_250_762, 62),
}

EXPECTED_NAMES = {
    "MLP", "LeNet", "AlexNet", "AlexNetBN", "VGG11", "VGG11BN", "ResNet18", "ResNet18BN", "ResNet18BN_AP",
    "ConvNet", "ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256",
    "ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4", "ConvNetAS", "ConvNetAR", "ConvNetAL",
    "ConvNetNP", "ConvNetMP", "ConvNetAP", "ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN",
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_parameter_counts(name, shape):
    channel, im_size = SHAPES[shape]
    net = create_model(name, channel, 10, im_size)
    n_28, n_32, n_tensors = PARAM_COUNTS[name]
    params = list(net.parameters())
    assert sum(p.numel() for p in params) == (n_28 if channel == 1 else n_32)
    assert len(params) == n_tensors


def test_list_models_names():
    names = list_models()
    assert names == sorted(names)
    assert set(names) == EXPECTED_NAMES
    assert list_models("ResNet*") == ["ResNet18", "ResNet18BN", "ResNet18BN_AP"]


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_every_model_builds_and_runs(name, shape):
    channel, im_size = SHAPES[shape]
    net = create_model(name, channel, 7, im_size)
    assert net.training
    x = torch.randn(2, channel, *im_size)
    out = net(x)
    assert out.shape == (2, 7)
    # the final layer is `classifier` and embed() gives exactly what enters it
    assert isinstance(net.classifier, nn.Linear)
    net.eval()  # BatchNorm: same normalisation for both passes
    with torch.no_grad():
        feats = net.embed(x)
        assert feats.shape == (2, net.classifier.in_features)
        torch.testing.assert_close(net.classifier(feats), net(x))


def test_construction_leaves_batchnorm_stats_untouched():
    net = create_model("ResNet18BN", 3, 10)
    bn = net.bn1
    assert int(bn.num_batches_tracked) == 0
    torch.testing.assert_close(bn.running_mean, torch.zeros(64))


def test_convnet_on_digits_size():
    net = create_model("ConvNet", 1, 10, (8, 8))
    assert net.classifier.in_features == 128  # 8 -> 4 -> 2 -> 1
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert create_model("ConvNet", 1, 10, 8).classifier.in_features == 128  # int im_size


def test_classifier_sized_by_feature_map():
    assert create_model("ConvNet", 3, 10, (64, 48)).classifier.in_features == 128 * 8 * 6
    assert create_model("ConvNetNP", 3, 10, (16, 16)).classifier.in_features == 128 * 16 * 16
    assert create_model("LeNet", 3, 10, (32, 32)).fc[0].in_features == 16 * 5 * 5
    assert create_model("ResNet18BN_AP", 1, 10, (28, 28)).classifier.in_features == 512 * 3 * 3
    assert create_model("ResNet18BN_AP", 3, 10, (32, 32)).classifier.in_features == 512 * 4 * 4
    assert create_model("AlexNet", 1, 10, (28, 28)).classifier.in_features == 192 * 4 * 4


@pytest.mark.parametrize("name", ["ConvNetBN", "VGG11BN", "ResNet18BN", "ResNet18BN_AP", "AlexNetBN"])
def test_has_batchnorm_true(name):
    assert has_batchnorm(create_model(name, 3, 10))


@pytest.mark.parametrize("name", ["ConvNet", "ConvNetLN", "VGG11", "ResNet18", "MLP"])
def test_has_batchnorm_false(name):
    assert not has_batchnorm(create_model(name, 3, 10))


def _norms(net):
    return [m for m in net.features if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d))]


def test_convnet_norm_layers():
    norms = _norms(create_model("ConvNet", 3, 10))
    assert len(norms) == 3
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels == 128 for m in norms)
    assert [type(m) for m in _norms(create_model("ConvNetIN", 3, 10))] == [nn.GroupNorm] * 3
    gn = _norms(create_model("ConvNetGN", 3, 10))
    assert len(gn) == 3 and all(isinstance(m, nn.GroupNorm) and m.num_groups == 4 for m in gn)
    ln = _norms(create_model("ConvNetLN", 3, 10))
    assert [tuple(m.normalized_shape) for m in ln] == [(128, 32, 32), (128, 16, 16), (128, 8, 8)]
    ln28 = _norms(create_model("ConvNetLN", 1, 10, (28, 28)))
    assert tuple(ln28[0].normalized_shape) == (128, 32, 32)  # padding 3 treats 28x28 as 32x32
    assert [type(m) for m in _norms(create_model("ConvNetBN", 3, 10))] == [nn.BatchNorm2d] * 3
    assert _norms(create_model("ConvNetNN", 3, 10)) == []


def test_convnet_variants():
    def types(name):
        return {type(m) for m in create_model(name, 3, 10).modules()}

    assert nn.Sigmoid in types("ConvNetAS") and nn.ReLU not in types("ConvNetAS")
    assert nn.LeakyReLU in types("ConvNetAL")
    assert nn.MaxPool2d in types("ConvNetMP") and nn.AvgPool2d not in types("ConvNetMP")
    assert nn.AvgPool2d in types("ConvNet")
    assert sum(isinstance(m, nn.Conv2d) for m in create_model("ConvNetD1", 3, 10).modules()) == 1
    assert create_model("ConvNetW64", 3, 10).classifier.in_features == 64 * 4 * 4
    first = create_model("ConvNet", 1, 10, (28, 28)).features[0]
    assert first.padding == (3, 3)


def test_convnet_keyword_args():
    net = create_model("ConvNet", 3, 10, width=64, depth=2, act="leakyrelu", norm="groupnorm", pooling="maxpooling")
    assert net.classifier.in_features == 64 * 8 * 8
    assert any(isinstance(m, nn.LeakyReLU) for m in net.modules())
    with pytest.raises(GradmatchError, match="activation 'tanh'"):
        create_model("ConvNet", 3, 10, act="tanh")
    with pytest.raises(GradmatchError, match="norm 'foo'"):
        create_model("ConvNet", 3, 10, norm="foo")


def test_unknown_model_lists_valid_names():
    with pytest.raises(GradmatchError) as info:
        create_model("ConvNetXL", 3, 10)
    msg = str(info.value)
    assert "ConvNetXL" in msg and "\n" not in msg
    for name in ("ConvNet", "ResNet18BN_AP", "VGG11", "MLP"):
        assert name in msg


def test_names_are_case_insensitive():
    assert has_batchnorm(create_model("resnet18bn", 3, 10, (32, 32)))


def test_image_too_small():
    with pytest.raises(GradmatchError, match="too small for LeNet.*16x16"):
        create_model("LeNet", 1, 10, (8, 8))
    with pytest.raises(GradmatchError, match="too small for ResNet18"):
        create_model("ResNet18", 3, 10, (16, 16))


@pytest.mark.parametrize("bad", [{"channel": 0}, {"num_classes": -1}, {"im_size": (0, 4)}, {"im_size": "x"}])
def test_bad_arguments(bad):
    kwargs = {"channel": 3, "num_classes": 10, "im_size": (32, 32), **bad}
    with pytest.raises(GradmatchError):
        create_model("ConvNet", **kwargs)


def test_register_model():
    @register_model(name="_TestTinyNet")
    def tiny(channel, num_classes, im_size=(32, 32)):
        return nn.Linear(channel * im_size[0] * im_size[1], num_classes)

    try:
        assert "_TestTinyNet" in list_models()
        assert isinstance(create_model("_TestTinyNet", 1, 3, (4, 4)), nn.Linear)
        with pytest.raises(ValueError):
            register_model(tiny, name="_TestTinyNet")
    finally:
        del registry._MODELS["_TestTinyNet"]
    assert "_TestTinyNet" not in list_models()
