"""Residual blocks shared by resnet_sngan (Miyato et al. 2018) and biggan (Brock et al. 2019): G's
pre-activation up-block, D's down-block, the conditional BatchNorms that condition G, and SAGAN's
self-attention block, with the orthogonal regularization of BigGAN.

G's conditional norms are called as `norm(x, cond)` (cond: labels or a conditioning vector), the plain
ones (BatchNorm2d, Identity) as `norm(x)`, so that SyncBatchNorm conversion applies to every BatchNorm. The blocks hold plain nn.Conv2d / nn.Linear / nn.Embedding layers: the
architectures initialise them and apply spectral norm after building (as the references do).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.models.base import norm_2d


def upsample(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W), nearest neighbour (chainer's unpooling_2d, F.interpolate in BigGAN)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H // 2, W // 2), 2x2 average pooling (an odd side drops its last row)."""
    return F.avg_pool2d(x, 2)


def plain_norm(kind: str, channels: int, eps: float) -> nn.Module:
    """An unconditional G norm: BatchNorm2d (gamma 1, beta 0) for model.g_norm=batch, Identity for none."""
    return norm_2d(kind, channels, eps=eps)


class CategoricalBatchNorm2d(nn.Module):
    """SNGAN's categorical conditional BatchNorm (sngan_projection's CategoricalConditionalBatchNormalization):
    BN without an affine of its own, then a per-class scale and shift,

        out = gamma[y] * (x - mean) / sqrt(var + eps) + beta[y],    gamma, beta: (K, C) tables, init 1 and 0.

    normalize=False (model.g_norm=none) keeps the class affine and drops the normalization.
    """

    def __init__(self, channels: int, num_classes: int, eps: float, normalize: bool = True) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps, affine=False) if normalize else nn.Identity()
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma(labels)[:, :, None, None]  # (B, C, 1, 1)
        beta = self.beta(labels)[:, :, None, None]
        return self.bn(x) * gamma + beta  # (B, C, H, W)


class ConditionalBatchNorm2d(nn.Module):
    """BigGAN's conditional BatchNorm (BigGAN-PyTorch layers.ccbn): gain and bias are functions of the
    conditioning input c,

        out = (1 + gain(c)) * (x - mean) / sqrt(var + eps) + bias(c),

    with gain, bias = Linear(D, C, bias=False) of a vector c (the shared class embedding and/or a chunk of
    z), or Embedding(K, C) of the labels (BigGAN-PyTorch with G_shared off). The "1 +" makes a zero-init or
    small gain start as an identity scale. normalize=False (model.g_norm=none) is ccbn's 'nonorm' style.
    """

    def __init__(self, channels: int, gain: nn.Module, bias: nn.Module, eps: float, normalize: bool = True) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps, affine=False) if normalize else nn.Identity()
        self.gain = gain
        self.bias = bias

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.gain(cond)[:, :, None, None]  # (B, C, 1, 1)
        bias = self.bias(cond)[:, :, None, None]
        return self.bn(x) * gain + bias  # (B, C, H, W)


class GBlock(nn.Module):
    """G's residual up-block, the same in SNGAN and BigGAN (pre-activation, upsampling before the first conv):

        h   = conv2(relu(bn2(conv1(up(relu(bn1(x, c)))), c)))       3x3 convs, in -> out -> out channels
        out = h + conv_sc(up(x))                                    1x1 learnable shortcut (always: the
                                                                    block always upsamples)
    (B, in, H, W) -> (B, out, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, bn1: nn.Module, bn2: nn.Module,
                 conditional: bool) -> None:
        super().__init__()
        self.conditional = conditional  # bn1, bn2 take (x, cond); else (x) and cond is None
        self.bn1 = bn1
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn2 = bn2
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_sc = nn.Conv2d(in_channels, out_channels, 1)

    def norm(self, bn: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return bn(x, cond) if self.conditional else bn(x)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = upsample(F.relu(self.norm(self.bn1, x, cond)))  # (B, in, 2H, 2W)
        h = self.conv1(h)  # (B, out, 2H, 2W)
        h = self.conv2(F.relu(self.norm(self.bn2, h, cond)))
        return h + self.conv_sc(upsample(x))


class DBlock(nn.Module):
    """D's residual block (sngan_projection dis_models/resblocks.py, BigGAN-PyTorch layers.DBlock):

        preactivation (every block but the first):
            h = conv2(relu(conv1(relu(x)))), then 2x2 average pooling when downsampling
            shortcut = pool(conv_sc(x)) when the shape changes, else x
        first block (SNGAN's OptimizedBlock; no ReLU on the image):
            h = pool(conv2(relu(conv1(x))));  shortcut = conv_sc(pool(x))

    hidden is the channel count between the two 3x3 convs: in_channels in SNGAN's D ("thin"), out_channels
    in BigGAN's D ("wide", D_wide) and in every first block. (B, in, H, W) -> (B, out, H/2 or H, W/2 or W).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, downsample: bool,
                 preactivation: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.preactivation = preactivation
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        self.learnable_shortcut = in_channels != out_channels or downsample
        if self.learnable_shortcut:
            self.conv_sc = nn.Conv2d(in_channels, out_channels, 1)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.learnable_shortcut:
            return x
        if self.preactivation:  # conv, then pool (the references' order)
            x = self.conv_sc(x)
            return downsample(x) if self.downsample else x
        return self.conv_sc(downsample(x) if self.downsample else x)  # pool first: the 1x1 conv on 1/4 pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Out-of-place ReLU: x itself feeds the shortcut.
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))  # (B, out, H, W)
        if self.downsample:
            h = downsample(h)  # (B, out, H/2, W/2)
        return h + self.shortcut(x)


class SelfAttention(nn.Module):
    """SAGAN's self-attention block as released (BigGAN-PyTorch layers.Attention), C -> C at any H x W:

        theta = W_theta x            (B, C/8, N)       N = H W; 1x1 convs without bias
        phi   = maxpool(W_phi x)     (B, C/8, N/4)     keys and values on a 2x2 max-pooled grid
        g     = maxpool(W_g x)       (B, C/2, N/4)
        beta  = softmax_j(theta_i . phi_j)             (B, N, N/4)
        out   = x + gamma * W_o (g beta^T)             gamma: a learned scalar, init 0 (the block starts as
                                                       the identity)
    Differs from the reference only at tiny widths: C/8 and C/2 are at least 1 (C < 8 would give none).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        key_channels, value_channels = max(1, channels // 8), max(1, channels // 2)
        self.theta = nn.Conv2d(channels, key_channels, 1, bias=False)
        self.phi = nn.Conv2d(channels, key_channels, 1, bias=False)
        self.g = nn.Conv2d(channels, value_channels, 1, bias=False)
        self.o = nn.Conv2d(value_channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        theta = self.theta(x).flatten(2)  # (B, C/8, N)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # (B, C/8, N/4)
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # (B, C/2, N/4)
        beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, N, N/4): each query over the keys
        attended = (g @ beta.transpose(1, 2)).view(batch, -1, height, width)  # (B, C/2, H, W)
        return x + self.gamma * self.o(attended)


def orthogonal_regularization(module: nn.Module, strength: float,
                              skip: Iterable[torch.Tensor] = ()) -> torch.Tensor:
    """BigGAN's modified orthogonal regularization of `module`, as a loss term (a 0-dim float32 tensor):

        R = strength / 2 * sum_W || W W^T * (1 - I) ||_F^2

    over every parameter W with at least 2 dims (seen as a matrix (out, -1): a conv's filters, a linear's
    or an embedding's rows), except those in `skip` (compared by identity). With spectral norm the parameter
    is the unnormalized weight (`parametrizations.weight.original`), as in BigGAN-PyTorch.

    Its gradient is exactly BigGAN-PyTorch's `utils.ortho`, which adds to each W.grad
    strength * 2 (W W^T * (1 - I)) W: with M = W W^T * (1 - I) (symmetric), d||M||_F^2/dW = 4 M W, and
    the factor 1/2 turns the paper's R_beta = beta ||W^T W * (1 - I)||_F^2 into the code's gradient (the
    paper's formula would give twice the code's step; the code is what produced the paper's results).
    Added once per optimizer step to the loss being differentiated, it gives the same update as calling
    utils.ortho between backward() and step().
    """
    skipped = {id(p) for p in skip}
    terms = []
    for param in module.parameters():
        if param.ndim < 2 or id(param) in skipped:
            continue
        w = param.float().reshape(param.shape[0], -1)  # (out, fan_in)
        gram = w @ w.T  # (out, out): filter inner products
        off_diagonal = gram.masked_fill(torch.eye(gram.shape[0], dtype=torch.bool, device=gram.device), 0.0)
        terms.append(off_diagonal.pow(2).sum())
    if not terms:
        return torch.zeros((), device=next(iter(module.parameters()), torch.zeros(())).device)
    return 0.5 * strength * torch.stack(terms).sum()
