"""Write-up 002 (fastai 0.7 lesson 7): every network ends in log-softmax (trained with NLL)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class SimpleNet(nn.Module):
    def __init__(self, layers: list[int]):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(layers[i], layers[i + 1]) for i in range(len(layers) - 1)])

    def forward(self, x):
        x = x.view(x.size(0), -1)
        for l in self.layers:
            l_x = l(x)
            x = F.relu(l_x)
        # quirk as written: the softmax takes the last layer's pre-ReLU output
        return F.log_softmax(l_x, dim=-1)


class ConvNet(nn.Module):
    def __init__(self, layers: list[int], c: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(layers[i], layers[i + 1], kernel_size=3, stride=2) for i in range(len(layers) - 1)])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.out = nn.Linear(layers[-1], c)

    def forward(self, x):
        for l in self.layers:
            x = F.relu(l(x))
        x = self.pool(x)
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.out(x), dim=-1)


class ConvLayer(nn.Module):
    def __init__(self, ni: int, nf: int):
        super().__init__()
        self.conv = nn.Conv2d(ni, nf, kernel_size=3, stride=2, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x))


class ConvNet2(nn.Module):
    def __init__(self, layers: list[int], c: int):
        super().__init__()
        self.layers = nn.ModuleList([ConvLayer(layers[i], layers[i + 1]) for i in range(len(layers) - 1)])
        self.out = nn.Linear(layers[-1], c)

    def forward(self, x):
        for l in self.layers:
            x = l(x)
        x = F.adaptive_max_pool2d(x, 1)
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.out(x), dim=-1)


class BnLayer(nn.Module):
    """The lesson's hand-written batch norm, after the ReLU.

    Training: normalise by this batch's per-channel mean and (unbiased) std, with gradients
    flowing through them, and keep them. Evaluation: reuse the *last training batch's*
    statistics, not a running average as nn.BatchNorm2d would. They are buffers so that
    checkpoints and the logged model carry them (the original kept plain attributes).
    """

    def __init__(self, ni: int, nf: int, stride: int = 2, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(ni, nf, kernel_size=kernel_size, stride=stride, bias=False, padding=1)
        self.a = nn.Parameter(torch.zeros(nf, 1, 1))
        self.m = nn.Parameter(torch.ones(nf, 1, 1))
        # the original has no value before the first training batch; identity is assumed
        self.register_buffer("means", torch.zeros(nf, 1, 1))
        self.register_buffer("stds", torch.ones(nf, 1, 1))

    def forward(self, x):
        x = F.relu(self.conv(x))
        if self.training:
            x_chan = x.transpose(0, 1).contiguous().view(x.size(1), -1)
            means = x_chan.mean(1)[:, None, None]
            stds = x_chan.std(1)[:, None, None]
            self.means.copy_(means.detach())
            self.stds.copy_(stds.detach())
        else:
            means, stds = self.means, self.stds
        return (x - means) / stds * self.m + self.a


class ConvBnNet(nn.Module):
    def __init__(self, layers: list[int], c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=5, stride=1, padding=2)
        self.layers = nn.ModuleList([BnLayer(layers[i], layers[i + 1]) for i in range(len(layers) - 1)])
        self.out = nn.Linear(layers[-1], c)

    def forward(self, x):
        x = self.conv1(x)
        for l in self.layers:
            x = l(x)
        x = F.adaptive_max_pool2d(x, 1)
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.out(x), dim=-1)


class ConvBnNet2(nn.Module):
    def __init__(self, layers: list[int], c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=5, stride=1, padding=2)
        self.layers = nn.ModuleList([BnLayer(layers[i], layers[i + 1]) for i in range(len(layers) - 1)])
        self.layers2 = nn.ModuleList([BnLayer(layers[i + 1], layers[i + 1], 1) for i in range(len(layers) - 1)])
        self.out = nn.Linear(layers[-1], c)

    def forward(self, x):
        x = self.conv1(x)
        for l, l2 in zip(self.layers, self.layers2):
            x = l(x)
            x = l2(x)
        x = F.adaptive_max_pool2d(x, 1)
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.out(x), dim=-1)


@register_model("fastai_simplenet")
def fastai_simplenet(layers: list[int] = (3072, 40, 10)) -> nn.Module:
    return SimpleNet(list(layers))


@register_model("fastai_convnet")
def fastai_convnet(layers: list[int] = (3, 20, 40, 80), c: int = 10) -> nn.Module:
    return ConvNet(list(layers), c)


@register_model("fastai_convnet2")
def fastai_convnet2(layers: list[int] = (3, 20, 40, 80), c: int = 10) -> nn.Module:
    return ConvNet2(list(layers), c)


@register_model("fastai_convbnnet")
def fastai_convbnnet(layers: list[int] = (10, 20, 40, 80, 160), c: int = 10) -> nn.Module:
    return ConvBnNet(list(layers), c)


@register_model("fastai_convbnnet2")
def fastai_convbnnet2(layers: list[int] = (10, 20, 40, 80, 160), c: int = 10) -> nn.Module:
    return ConvBnNet2(list(layers), c)
