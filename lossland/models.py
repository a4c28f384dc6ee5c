"""Model registry: the networks a config can name, built with a seeded initialisation."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import factories
from .config import CUSTOM, ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


class MLP(nn.Module):
    def __init__(self, in_dim: int, widths: tuple[int, ...], n_out: int, activation: str):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_dim
        for w in widths:
            layers += [nn.Linear(prev, w), ACTIVATIONS[activation]()]
            prev = w
        layers.append(nn.Linear(prev, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoLayer(nn.Module):
    """f(x) = a·σ(Wx + b) + c: one hidden layer, the setting of the paper's 2-layer theory."""

    def __init__(self, in_dim: int, width: int, n_out: int, activation: str):
        super().__init__()
        self.hidden = nn.Linear(in_dim, width)
        self.act = ACTIVATIONS[activation]()
        self.out = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(x.flatten(1))))


class LeNet(nn.Module):
    """LeNet-style: conv(5×5 or 3×3 on small images) → pool, per channel width; then an MLP head."""

    def __init__(self, in_shape: tuple[int, ...], channels: tuple[int, ...], widths: tuple[int, ...],
                 n_out: int, activation: str):
        super().__init__()
        c, h, _ = in_shape
        kernel = 5 if h >= 20 else 3
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv2d(c, ch, kernel, padding=kernel // 2), ACTIVATIONS[activation]()]
            if h >= 4:
                layers.append(nn.MaxPool2d(2))
                h //= 2
            c = ch
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *in_shape)).numel()
        self.head = MLP(flat, widths, n_out, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, batchnorm: bool, activation: str):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batchnorm)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batchnorm)
        self.bn2 = norm(c_out)
        self.act = ACTIVATIONS[activation]()
        self.skip = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=not batchnorm), norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet(nn.Module):
    """A small ResNet for CIFAR-10: one basic block per stage, stride 2 between stages."""

    def __init__(self, in_shape: tuple[int, ...], channels: tuple[int, ...], n_out: int,
                 batchnorm: bool, activation: str):
        super().__init__()
        c = channels[0]
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], c, 3, 1, 1, bias=not batchnorm),
                                  nn.BatchNorm2d(c) if batchnorm else nn.Identity(),
                                  ACTIVATIONS[activation]())
        blocks = []
        for i, ch in enumerate(channels):
            blocks.append(Block(c, ch, 1 if i == 0 else 2, batchnorm, activation))
            c = ch
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def build_model(cfg: ModelConfig, in_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The model a config names, initialised from cfg.seed (the global RNG is left untouched)."""
    in_dim = math.prod(in_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.name == "mlp":
            model = MLP(in_dim, cfg.widths, n_classes, cfg.activation)
        elif cfg.name == "two_layer":
            model = TwoLayer(in_dim, cfg.widths[0], n_classes, cfg.activation)
        elif cfg.name == "cnn":
            model = LeNet(_image_shape(in_shape), cfg.channels, cfg.widths, n_classes, cfg.activation)
        elif cfg.name == "resnet":
            model = ResNet(_image_shape(in_shape), cfg.channels, n_classes, cfg.batchnorm, cfg.activation)
        elif cfg.name == CUSTOM:
            model = factories.build_model(cfg, in_shape, n_classes)
        else:
            raise ValueError(f"model.name = {cfg.name!r} is not allowed: one of mlp, cnn, two_layer, resnet")
    return model


def _image_shape(in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(f"cnn and resnet need images (channels, height, width), got inputs of shape {in_shape}")
    return in_shape  # type: ignore[return-value]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
