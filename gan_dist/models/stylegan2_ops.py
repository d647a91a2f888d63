"""StyleGAN2's low-level operations in plain PyTorch: FIR resampling (upfirdn2d), convolution with up- or
downsampling, bias + activation with gain and clamp, and the modulated / demodulated convolution.

The semantics are those of NVlabs/stylegan2-ada-pytorch's torch_utils/ops (upfirdn2d.py, conv2d_resample.py,
bias_act.py, training/networks.py `modulated_conv2d`), written again from their definitions on standard
torch ops (no custom CUDA/C++ kernels, so no build step). Every function supports double backward (R1 and the
path-length penalty differentiate through them with create_graph=True) and none reads a tensor's value on
the host. Differences from the reference, each with its reason, are in the docstrings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # He et al.: keeps the second moment of lrelu(x) ~ that of x for x ~ N(0, 1)
ACTIVATIONS = ("linear", "lrelu")

Padding = int | Sequence[int]


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """The 2-D FIR filter of a 1-D binomial kernel: outer(taps, taps) / sum, (len, len) float32.

    [1, 3, 3, 1] gives the 4x4 low-pass filter of StyleGAN2 (sums to 1: a constant image keeps its value).
    The reference keeps 1-D (separable) filters only from 8 taps on; this 4-tap one is 2-D there too.
    """
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)  # (4, 4)
    return f / f.sum()


def _pads(padding: Padding) -> tuple[int, int, int, int]:
    """int | (x, y) | (x0, x1, y0, y1) -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, (x, y) or (x0, x1, y0, y1), got {padding}")
    return padding  # type: ignore[return-value]


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1, padding: Padding = 0,
              flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative = crop), convolve with the 2-D FIR filter f, keep every
    `down`-th pixel: each channel of x (B, C, H, W) separately (scipy.signal.upfirdn in 2-D).

    Output side: (H * up + pad0 + pad1 - fh) // down + 1. The filter is scaled by `gain` (upsampling by 2
    passes gain 4: zero insertion keeps one pixel in four, so the filter must sum to 4 to keep the DC level).
    flip_filter=False is a true convolution (the filter is flipped before F.conv2d, which correlates).
    The same computation as the reference's `_upfirdn2d_ref` (the pure-PyTorch fallback of its CUDA kernel).
    """
    batch, channels, height, width = x.shape
    x0, x1, y0, y1 = _pads(padding)
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    if up > 1:
        # Zero insertion: view each pixel as a 1x1 block, pad it to up x up with zeros right and below.
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])  # (B, C, H, up, W, up)
        x = x.reshape(batch, channels, height * up, width * up)
    # Pad the positive sides, then crop the negative ones.
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    # Depthwise FIR: the same (fh, fw) filter for every channel (groups = C).
    kernel = (f * gain).to(x.dtype)
    if not flip_filter:
        kernel = kernel.flip([0, 1])
    kernel = kernel[None, None].expand(channels, 1, *kernel.shape)  # (C, 1, fh, fw)
    x = F.conv2d(x, kernel, groups=channels)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H * up, W * up): zero insertion + FIR low-pass (gain up**2), padded so that the
    output is exactly `up` times larger and centred."""
    fh = f.shape[0]
    p0, p1 = (fh + up - 1) // 2, (fh - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H // down, W // down): FIR low-pass, then every `down`-th pixel."""
    fh = f.shape[0]
    p0, p1 = (fh - down + 1) // 2, (fh - down) // 2
    return upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding: int = 0, groups: int = 1, flip_weight: bool = True) -> torch.Tensor:
    """Convolution of x (B, I, H, W) with w (O, I / groups, k, k), with FIR upsampling before it (up = 2) or
    FIR downsampling after it (down = 2). padding is that of the conv (k // 2 keeps the size: H -> H * up or
    H // down). flip_weight=True correlates (F.conv2d), False convolves (w flipped).

    Mathematically: upfirdn2d(x, f, up, pad, gain up**2) -> conv(w) -> upfirdn2d(., f, down); computed
    the cheaper way, as the reference does:
      - up = 2: a stride-2 transposed conv at the low resolution, then the FIR filter (the conv runs on the
        H x H input instead of the 2H x 2H zero-inserted one: 4x fewer multiply-adds);
      - down = 2 with k > 1: the FIR filter, then a stride-2 conv (computes only the kept pixels);
      - down = 2 with k = 1: downsample first, then the 1x1 conv (a 1x1 conv commutes with the filter).
    tests/models/test_stylegan2.py checks each path against the definition above.
    """
    out_channels, in_per_group, kh, kw = w.shape
    fh = 1 if f is None else f.shape[0]
    x0 = x1 = y0 = y1 = padding
    if up > 1:  # the FIR filter's padding on the upsampled image, on top of the conv's
        x0, x1 = x0 + (fh + up - 1) // 2, x1 + (fh - up) // 2
        y0, y1 = x0, x1
    if down > 1:
        x0, x1 = x0 + (fh - down + 1) // 2, x1 + (fh - down) // 2
        y0, y1 = x0, x1
    if not flip_weight and not (up > 1):
        w = w.flip([2, 3])
    if up > 1 and down == 1:
        # conv_transpose2d's weight is (in, out / groups, k, k): swap O and I inside each group.
        if groups == 1:
            wt = w.transpose(0, 1)
        else:
            wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        # A transposed conv with weight w equals zero insertion followed by a true convolution with w, so
        # the correlation asked for (flip_weight=True) needs w flipped here, and a convolution does not.
        if flip_weight:
            wt = wt.flip([2, 3])
        x = F.conv_transpose2d(x, wt, stride=up, groups=groups)  # (B, O, (H - 1) * up + k, ...)
        # The transposed conv already covers k - 1 (left) and k - up (right) of the padding: the rest
        # (possibly negative, a crop) goes to the filter.
        return upfirdn2d(x, f, padding=(x0 - (kw - 1), x1 - (kw - up), y0 - (kh - 1), y1 - (kh - up)),
                         gain=up * up)
    if down > 1 and up == 1:
        if kh == 1 and kw == 1:
            x = upfirdn2d(x, f, down=down, padding=(x0, x1, y0, y1))
            return F.conv2d(x, w, groups=groups)
        x = upfirdn2d(x, f, padding=(x0, x1, y0, y1))
        return F.conv2d(x, w, stride=down, groups=groups)
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    raise ValueError(f"conv2d_resample: up={up} with down={down} is not used by StyleGAN2")


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """x + b (b along dim 1), then the activation, times gain (default: sqrt(2) for lrelu, 1 for linear),
    then clamped to [-clamp, clamp] (None: no clamp). The reference's fused op, as separate torch ops
    (its own `_bias_act_ref`); lrelu's slope is 0.2."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
        gain = LRELU_GAIN if gain is None else gain
    elif act != "linear":
        raise ValueError(f"bias_act: activation {act!r} is not one of {', '.join(ACTIVATIONS)}")
    if gain is not None and gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) along `dim`: unit second moment (the mapping network's input norm)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True, fused: bool = True) -> torch.Tensor:
    """StyleGAN2's modulated convolution (Karras et al. 2020, eq. 1-3), x (B, I, H, W) -> (B, O, H', W').

    Per sample b: w'_oik = s_bi w_oik (modulation), and with demodulation w''_oik = w'_oik / sqrt(sum_ik
    w'_oik^2 + 1e-8), so that an input of unit variance gives outputs of unit variance. `noise` (broadcast
    to the output) is added after the demodulation, before any bias.

    fused=True computes it as one grouped convolution (groups = B, the per-sample weights); fused=False
    scales the activations instead: conv(x * s) * d, with one shared weight (d the demodulation
    coefficients). Both give the same result; the reference uses the second while training (cheaper
    weight gradients: one conv's) and the first otherwise.

    Differs from the reference in one place: the demodulation coefficients are computed as
    d_bo = rsqrt(sum_i s_bi^2 * sum_k w_oik^2 + 1e-8), a (B, I) x (I, O) matmul, instead of materializing the
    (B, O, I, k, k) per-sample weights for the per-sample path: the same value (up to float rounding), B*O*I
    multiply-adds instead of 9*B*O*I, and no large temporary.
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        # As the reference: pre-normalize to avoid fp16 overflow (cancelled exactly by the demodulation).
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))  # max_Ikk
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)  # max_I
    dcoefs = None
    if demodulate:
        # sum_ik (s_i w_oik)^2 = sum_i s_i^2 (sum_k w_oik^2): (B, I) @ (I, O)
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # (B, O)

    if not fused:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)  # modulate the activations, (B, I, H, W)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding,
                            flip_weight=flip_weight)  # (B, O, H', W')
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)  # demodulate the outputs
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # (B, O, I, k, k)
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])  # (1, B*I, H, W): the batch becomes B groups of channels
    w = w.reshape(-1, in_channels, kh, kw)  # (B*O, I, k, k)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, padding=padding, groups=batch,
                        flip_weight=flip_weight)  # (1, B*O, H', W')
    x = x.reshape(batch, -1, *x.shape[2:])  # (B, O, H', W')
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int = 1) -> torch.Tensor:
    """Append `num_channels` feature maps holding the minibatch standard deviation (Karras et al. 2018):
    (B, C, H, W) -> (B, C + F, H, W), F = num_channels.

    The batch is split into groups of G = min(group_size, B) samples, sample i in group i % (B // G) (as the
    reference's reshape (G, B // G, ...)); for each group and each of F channel slices, the standard deviation
    over the group of every feature, averaged over the slice's channels and pixels, is broadcast to the
    group's samples. B must be a multiple of G (the reference's reshape requires it too); otherwise
    ValueError naming model.options.mbstd_group.
    """
    batch, channels, height, width = x.shape
    group = min(group_size, batch)
    if batch % group:
        raise ValueError(f"minibatch stddev: a batch of {batch} is not a multiple of its group of {group} "
                         f"(model.options.mbstd_group={group_size}): use a per-process batch that is a multiple "
                         "of it, or change model.options.mbstd_group")
    f = num_channels
    y = x.reshape(group, -1, f, channels // f, height, width)  # (G, n, F, c, H, W)
    y = y - y.mean(dim=0)  # centre over each group
    y = (y.square().mean(dim=0) + 1e-8).sqrt()  # (n, F, c, H, W): stddev over each group
    y = y.mean(dim=[2, 3, 4])  # (n, F): averaged over channels and pixels
    y = y.reshape(-1, f, 1, 1).repeat(group, 1, height, width)  # (B, F, H, W): sample i gets group i % n
    return torch.cat([x, y], dim=1)  # (B, C + F, H, W)
