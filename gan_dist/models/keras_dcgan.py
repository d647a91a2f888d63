"""The seed DCGAN of the classic Keras tutorial (Keras-GAN's dcgan.py), ported to PyTorch layer by layer.

Faithful where it changes what is learned or counted (see DESIGN.md, "Reference shapes"):
- parameter counts equal Keras's: G 855,809 trainable, D 392,833 trainable at the default widths
  (G 128, D 32) and latent 100; adding BN running mean/var gives Keras's totals (G 856,193, D 393,729).
  Convolutions keep their biases even when followed by BN, as in Keras.
- Keras `BatchNormalization(momentum=0.8)` keeps 0.8 of the old running statistic, i.e. PyTorch
  `momentum=0.2`; Keras's epsilon is 1e-3 (PyTorch's default is 1e-5).
- Keras 'same' padding follows TensorFlow: output size ceil(in / stride), and an odd total padding puts
  the extra row/column at the bottom/right. With stride 2 on an even input that is (0, 1), which
  PyTorch's symmetric `padding=1` cannot express (it gives the same output size, shifted by one pixel).
  `Conv2dSame` computes the TensorFlow padding from the input size.
- Kernels are glorot-uniform, biases zero (Keras defaults); BN gamma 1, beta 0.
- UpSampling2D is nearest-neighbour x2; LeakyReLU slope 0.2; Dropout 0.25 after each D block.

Deliberate differences:
- D returns a logit (Keras: Dense(1, sigmoid)); the loss applies the sigmoid (losses.py).
- Memory layout: Keras is NHWC, so its `Reshape((7, 7, 128))` after G's Dense and its `Flatten()` before
  D's Dense order the units as (h, w, c); here they are (c, h, w). Training is unaffected (the same
  weights, permuted); to load Keras weights, permute the Dense kernel rows/columns accordingly and
  transpose conv kernels from (kh, kw, in, out) to (out, in, kh, kw).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 28  # MNIST, pixels per side
# Keras BatchNormalization(momentum=0.8): running = 0.8 * running + 0.2 * batch -> PyTorch momentum 0.2.
KERAS_BN_MOMENTUM = 0.2
KERAS_BN_EPS = 1e-3
LEAKY_SLOPE = 0.2


def keras_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow/Keras 'same' along one axis of `size` pixels.

    Output size is ceil(size / stride); an odd total puts the extra pixel after (bottom/right).
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with Keras 'same' padding (asymmetric where TensorFlow's rule makes it so).

    Subclasses nn.Conv2d so parameter names, init loops and isinstance checks treat it as a conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = keras_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = keras_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top == bottom and left == right:  # symmetric (e.g. stride-1 3x3): let the conv pad, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left))
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride)


def _batch_norm(channels: int, enabled: bool) -> nn.Module:
    """Keras-equivalent BatchNorm2d, or nothing when BN is off (batch_norm=False)."""
    if not enabled:
        return nn.Identity()
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def _dropout(p: float) -> nn.Module:
    # Identity at p=0: no RNG draw, so runs without dropout are deterministic and bitwise reproducible.
    return nn.Dropout(p) if p > 0 else nn.Identity()


def keras_init_(module: nn.Module) -> None:
    """Keras defaults: glorot-uniform kernels, zero biases (BN keeps gamma 1, beta 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            # xavier_uniform_ uses fan_in = in * kh * kw and fan_out = out * kh * kw, as Keras's glorot.
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class KerasDCGANGenerator(nn.Module):
    """z (B, latent_dim) -> images (B, 1, 28, 28) in [-1, 1].

    Dense(relu) to width x 7 x 7, then two (nearest upsample x2, 3x3 conv, BN, ReLU) blocks with
    width and width/2 channels, then a 3x3 conv to 1 channel and tanh.
    """

    def __init__(self, latent_dim: int, width: int, batch_norm: bool = True) -> None:
        super().__init__()
        if width < 2:
            raise ValueError(f"keras_dcgan generator width must be >= 2 (it uses width // 2), got {width}")
        self.latent_dim = latent_dim
        self.width = width
        self.base_size = IMAGE_SIZE // 4  # 7: two x2 upsamplings reach 28
        self.fc = nn.Linear(latent_dim, width * self.base_size**2)
        self.conv1 = Conv2dSame(width, width, 3)
        self.bn1 = _batch_norm(width, batch_norm)
        self.conv2 = Conv2dSame(width, width // 2, 3)
        self.bn2 = _batch_norm(width // 2, batch_norm)
        self.conv_out = Conv2dSame(width // 2, 1, 3)
        keras_init_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(z))  # (B, 128*7*7)
        x = x.view(-1, self.width, self.base_size, self.base_size)  # (B, 128, 7, 7); Keras: (B, 7, 7, 128)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, 128, 14, 14)
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 128, 14, 14)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, 128, 28, 28)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, 64, 28, 28)
        return torch.tanh(self.conv_out(x))  # (B, 1, 28, 28)


class KerasDCGANDiscriminator(nn.Module):
    """images (B, 1, 28, 28) -> logits (B,).

    Four 3x3 conv blocks (width x1, x2, x4, x8 channels; strides 2, 2, 2, 1), LeakyReLU(0.2) and dropout,
    BN on all but the first, a ZeroPadding2D(((0, 1), (0, 1))) after the second conv, then Dense(1).
    """

    def __init__(self, width: int, dropout: float = 0.25, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv1 = Conv2dSame(1, width, 3, stride=2)
        self.drop1 = _dropout(dropout)
        self.conv2 = Conv2dSame(width, width * 2, 3, stride=2)
        self.pad2 = nn.ZeroPad2d((0, 1, 0, 1))  # (left, right, top, bottom): Keras ((0, 1), (0, 1))
        self.bn2 = _batch_norm(width * 2, batch_norm)
        self.drop2 = _dropout(dropout)
        self.conv3 = Conv2dSame(width * 2, width * 4, 3, stride=2)
        self.bn3 = _batch_norm(width * 4, batch_norm)
        self.drop3 = _dropout(dropout)
        self.conv4 = Conv2dSame(width * 4, width * 8, 3, stride=1)
        self.bn4 = _batch_norm(width * 8, batch_norm)
        self.drop4 = _dropout(dropout)
        self.fc = nn.Linear(width * 8 * 4 * 4, 1)
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(F.leaky_relu(self.conv1(x), LEAKY_SLOPE))  # (B, 32, 14, 14)
        x = self.pad2(self.conv2(x))  # (B, 64, 7, 7) -> (B, 64, 8, 8), zeros at bottom/right
        x = self.drop2(F.leaky_relu(self.bn2(x), LEAKY_SLOPE))  # (B, 64, 8, 8)
        x = self.drop3(F.leaky_relu(self.bn3(self.conv3(x)), LEAKY_SLOPE))  # (B, 128, 4, 4)
        x = self.drop4(F.leaky_relu(self.bn4(self.conv4(x)), LEAKY_SLOPE))  # (B, 256, 4, 4)
        x = x.flatten(1)  # (B, 256*4*4) in (c, h, w) order; Keras flattens (h, w, c)
        return self.fc(x).squeeze(1)  # (B,) logits
