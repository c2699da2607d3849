"""CNNs as a user writes them in torch (no torchvision: it does not import here), for the tests of
the convolution operators and for bench/: a CIFAR ResNet-20 (He et al. 2016, section 4.2: three
stages of three basic blocks, 16/32/64 channels, stride-2 downsampling with a 1x1 convolution and
BatchNorm on the shortcut, global average pooling, a linear layer to 10 classes) and a small
residual CNN of the same shape for 8x8 images."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage: int = 3, widths=(16, 32, 64), classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers, c = [], widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(c, width, 2 if stage > 0 and b == 0 else 1))
                c = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        out = self.layers(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


def _randomize_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """BatchNorm statistics and affine parameters that are not the identity (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def resnet20(seed: int = 0) -> nn.Module:
    """CIFAR ResNet-20 (0.27 M parameters, 3x32x32 images, 10 classes), in eval mode."""
    torch.manual_seed(seed)
    return _randomize_batchnorm(ResNet(3, (16, 32, 64), 10), seed)


def small_resnet(seed: int = 0) -> nn.Module:
    """The same architecture, one block per stage and 4/8/8 channels, for 3x8x8 images."""
    torch.manual_seed(seed)
    return _randomize_batchnorm(ResNet(1, (4, 8, 8), 5), seed)
