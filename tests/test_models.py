"""Models: output shapes, parameter counts against hand-computed formulas, seeded initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lossland.config import ModelConfig
from lossland.models import build_model, n_params


def mlp_params(in_dim: int, widths: tuple[int, ...], n_out: int) -> int:
    sizes = (in_dim, *widths, n_out)
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def conv_params(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def resnet_params(c_in: int, channels: tuple[int, ...], n_out: int, batchnorm: bool) -> int:
    bn = (lambda c: 2 * c) if batchnorm else (lambda c: 0)  # weight and bias; running stats are buffers
    bias = not batchnorm
    total = conv_params(c_in, channels[0], 3, bias) + bn(channels[0])
    prev = channels[0]
    for i, c in enumerate(channels):
        total += conv_params(prev, c, 3, bias) + bn(c) + conv_params(c, c, 3, bias) + bn(c)
        if i > 0 or prev != c:  # 1×1 projection on the skip path
            total += conv_params(prev, c, 1, bias) + bn(c)
        prev = c
    return total + (prev + 1) * n_out


def test_the_default_mlp_has_3466_parameters():
    model = build_model(ModelConfig(), (1, 8, 8), 10)
    assert n_params(model) == 3466 == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert model(torch.zeros(7, 1, 8, 8)).shape == (7, 10)


@pytest.mark.parametrize(("widths", "in_shape", "n_out"), [
    ((32, 32), (1, 8, 8), 10), ((100, 100), (40,), 10), ((7,), (20,), 2), ((), (5,), 3),
    ((256, 128), (1, 28, 28), 10)])
def test_mlp_parameter_count_and_output_shape(widths, in_shape, n_out):
    model = build_model(ModelConfig(name="mlp", widths=widths), in_shape, n_out)
    in_dim = int(torch.tensor(in_shape).prod())
    assert n_params(model) == mlp_params(in_dim, widths, n_out)
    assert model(torch.randn(4, *in_shape)).shape == (4, n_out)


@pytest.mark.parametrize(("width", "in_dim", "n_out"), [(64, 20, 2), (1, 3, 2), (500, 40, 10)])
def test_two_layer_parameter_count_and_output_shape(width, in_dim, n_out):
    model = build_model(ModelConfig(name="two_layer", widths=(width,)), (in_dim,), n_out)
    assert n_params(model) == (in_dim + 1) * width + (width + 1) * n_out
    assert model(torch.randn(3, in_dim)).shape == (3, n_out)


@pytest.mark.parametrize(("in_shape", "expected"), [
    # 8×8 digits: 3×3 convs, 8 → 4 → 2 after pooling; flattened 16·2·2 = 64
    ((1, 8, 8), conv_params(1, 6, 3) + conv_params(6, 16, 3) + mlp_params(16 * 2 * 2, (120, 84), 10)),
    # 28×28 MNIST: 5×5 convs, 28 → 14 → 7; flattened 16·7·7 = 784 (LeNet-5's head: 784-120-84-10)
    ((1, 28, 28), conv_params(1, 6, 5) + conv_params(6, 16, 5) + mlp_params(784, (120, 84), 10)),
    # 32×32 CIFAR: 32 → 16 → 8; flattened 16·8·8 = 1024
    ((3, 32, 32), conv_params(3, 6, 5) + conv_params(6, 16, 5) + mlp_params(1024, (120, 84), 10)),
])
def test_cnn_parameter_count_and_output_shape(in_shape, expected):
    model = build_model(ModelConfig(name="cnn", channels=(6, 16), widths=(120, 84)), in_shape, 10)
    assert n_params(model) == expected
    assert model(torch.randn(5, *in_shape)).shape == (5, 10)


def test_cnn_on_digits_is_19754_parameters_by_hand():
    model = build_model(ModelConfig(name="cnn", channels=(6, 16), widths=(120, 84)), (1, 8, 8), 10)
    assert n_params(model) == 60 + 880 + 7800 + 10164 + 850 == 19754


def test_the_fashion_cnns_count_by_hand():
    lenet = build_model(ModelConfig(name="cnn", channels=(6, 16), widths=(120, 84)), (1, 28, 28), 10)
    assert n_params(lenet) == 156 + 2416 + 94200 + 10164 + 850 == 107786
    # 28 → 14 → 7 after two 5×5 conv + pool stages; flattened 64·7·7 = 3136
    wide = build_model(ModelConfig(name="cnn", channels=(32, 64), widths=(300,)), (1, 28, 28), 10)
    assert n_params(wide) == 832 + 51264 + 941100 + 3010 == 996206
    assert wide(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize(("channels", "in_shape"), [((16, 32, 64), (3, 32, 32)), ((8,), (1, 8, 8)),
                                                    ((4, 4), (1, 28, 28))])
def test_resnet_parameter_count_and_output_shape(channels, in_shape, batchnorm):
    model = build_model(ModelConfig(name="resnet", channels=channels, widths=(), batchnorm=batchnorm), in_shape, 10)
    assert n_params(model) == resnet_params(in_shape[0], channels, 10, batchnorm)
    model.eval()
    assert model(torch.randn(2, *in_shape)).shape == (2, 10)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == batchnorm


def test_the_cifar_resnet_counts_by_hand():
    cfg = ModelConfig(name="resnet", channels=(16, 32, 64), widths=())
    assert n_params(build_model(cfg, (3, 32, 32), 10)) == 448 + 4640 + 14432 + 57536 + 650 == 77706
    bn = ModelConfig(name="resnet", channels=(16, 32, 64), widths=(), batchnorm=True)
    assert n_params(build_model(bn, (3, 32, 32), 10)) == 464 + 4672 + 14528 + 57728 + 650 == 78042


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_conv_models_refuse_vector_inputs(name):
    with pytest.raises(ValueError, match=r"need images .* got inputs of shape \(40,\)"):
        build_model(ModelConfig(name=name), (40,), 10)


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "softplus"])
def test_the_named_activation_is_the_one_used(activation):
    model = build_model(ModelConfig(activation=activation), (1, 8, 8), 10)
    kinds = {type(m).__name__.lower() for m in model.modules()}
    assert activation in kinds
    assert len(kinds & {"relu", "tanh", "gelu", "softplus"}) == 1


CONFIGS = {
    "mlp": (ModelConfig(), (1, 8, 8)),
    "two_layer": (ModelConfig(name="two_layer", widths=(16,)), (20,)),
    "cnn": (ModelConfig(name="cnn"), (1, 8, 8)),
    "resnet": (ModelConfig(name="resnet", channels=(4, 8), widths=(), batchnorm=True), (3, 32, 32)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_seed_same_initialisation_different_seed_different(name):
    cfg, in_shape = CONFIGS[name]
    a = build_model(cfg, in_shape, 10).state_dict()
    b = build_model(cfg, in_shape, 10).state_dict()
    c = build_model(ModelConfig(**{**cfg.__dict__, "seed": cfg.seed + 1}), in_shape, 10).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert weights and all(not torch.equal(a[k], c[k]) for k in weights)


def test_building_a_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(ModelConfig(seed=7), (1, 8, 8), 10)
    assert torch.equal(torch.rand(3), expected)
