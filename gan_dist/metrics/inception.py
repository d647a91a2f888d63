"""The standard Inception-v3 feature network of FID / KID / IS (TF's 2015-12-05 graph), its two resize
protocols, and its weights: found, downloaded and sha256-verified once, before training, never unpickled.

    net = load_inception(weights_path, resize="tf", device=device)  # or None: env var, cache, download
    features, logits = net.features_and_logits(images)  # (B, 2048) pool3, (B, 1008) logits_unbiased
    net.protocol()  # {"feature_net", "weights_sha256", "resize", "input", ...}: print it beside every number

The network is torch-fidelity's port (whose blocks it reuses; pytorch-fid and clean-fid use the same weights).
Input: uint8 (B, C, H, W), or float in [-1, 1] (G's output), quantized first to the uint8 a PNG of it would
hold, round((x + 1) * 127.5); grayscale (C = 1) is repeated to 3 channels (as PIL's convert("RGB")).

Resize protocols (`resize`), both from uint8 values:
  tf     the reference TF-FID: bilinear exactly as TF1's resize_bilinear, inside the network (torch-fidelity,
         pytorch-fid, the original TTUR code); runs on the network's device. The default.
  clean  clean-fid's: PIL bicubic on float32, per channel, to 299x299, clipped to [0, 255]
         (`cleanfid.resize.make_resizer("PIL", False, "bicubic", (299, 299))`); runs on the CPU with PIL.
The two give different numbers for the same images: compare only numbers of the same protocol.

Weights (`ensure_inception_weights`, called at start-up so that evaluation never fails mid-run):
  1. a file the user names (the `path` argument: eval.inception_weights, else $GAN_DIST_INCEPTION_WEIGHTS);
  2. else the cache: $XDG_CACHE_HOME/gan_dist/weights (~/.cache/gan_dist/weights);
  3. else a download of WEIGHTS_URL into the cache (temp name, sha256-verified, renamed; fails in seconds
     when offline, with InceptionWeightsMissing: one line saying which file to put where).
The .pth is sha256-verified, read once with `torch.load(weights_only=True)` (no code can run), checked key by
key against the architecture and converted to safetensors in the cache, keyed by the .pth's sha256; from
then on only the safetensors is read (its own sha256 is recorded beside it and checked on every load).

The registry entry `inception` (gan_dist/registry/feature_nets.py) reaches this module through
`load_feature_net(dataset, eval_config, device)` and, at training start-up, `ensure_weights(eval_config)`.
A missing file is InceptionWeightsMissing, a FileNotFoundError: `gan-dist train` / `eval` exit 1 with its one
line (the CLI's "missing weights file"), before training starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.config import EvalConfig
from gan_dist.files import sha256_file, user_cache_dir
from gan_dist.metrics.features import WeightsIntegrityError

if TYPE_CHECKING:
    from gan_dist.data.datasets import ResolvedDataset

FEATURE_NET_NAME = "inception-v3-2015-12-05"
WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
# torch-fidelity's release of the weights converted from TF's 2015-12-05 graph. pytorch-fid's
# pt_inception-2015-12-05-6726825d.pth carries the same sha256 prefix (the 8 hex digits torch.hub checks).
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_NAME}"
# The full sha256 of that file (95,628,359 bytes, 566 tensors): recorded in several public projects that pin
# it; it starts with the 8 hex digits of the file name (`tests/metrics/test_inception.py` checks that).
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
# The digest eval.inception_weights (or the cached / downloaded file) must have when the evaluator loads the
# network: the official one. Tests of the evaluator with a random network of the real architecture replace
# this module attribute; it is deliberately not a config key (a number computed with other weights is not an
# Inception FID).
EXPECTED_SHA256 = WEIGHTS_SHA256
WEIGHTS_ENV = "GAN_DIST_INCEPTION_WEIGHTS"
DOWNLOAD_TIMEOUT_S = 10.0  # connect + first byte; an offline machine fails within this
RESIZES = ("tf", "clean")
INPUT_SIZE = 299
FEATURE_DIM = 2048  # pool3
NUM_LOGITS = 1008  # the TF graph's classes (1000 ImageNet + 8 unused)
INPUT_NOTE = ("uint8 RGB (float in [-1, 1] quantized as round((x + 1) * 127.5); grayscale repeated to 3 "
              "channels)")
CONVERSION_VERSION = 1  # part of the safetensors record: bump when the conversion changes


class InceptionWeightsMissing(FileNotFoundError):
    """The Inception weights are not on this machine and could not be downloaded. One line: which file to
    put where (the env var, the cache path, the URL to fetch it from on another machine).

    A FileNotFoundError (the CLI's exit 1, "a missing weights file"), not a FeatureNetworkMissing: that one
    turns evaluation off quietly in the trainer, whereas a run asked to evaluate with Inception must stop
    before it starts (the trainer checks at start-up, `ensure_weights`)."""


class InceptionWeightsRefused(WeightsIntegrityError):
    """A weights file was refused: its sha256 differs from the expected one, it holds something other than
    plain tensors (a pickle that would run code), or its tensors do not fit the architecture. One line."""


# -- paths -------------------------------------------------------------------------------------------------


def weights_cache_dir() -> Path:
    """$XDG_CACHE_HOME/gan_dist/weights, else ~/.cache/gan_dist/weights."""
    return user_cache_dir() / "weights"


def converted_path(source_sha256: str, cache_dir: Path | None = None) -> Path:
    """Where the safetensors converted from the .pth with this sha256 lives (its record: .json beside it)."""
    return (cache_dir or weights_cache_dir()) / f"inception-2015-12-05-{source_sha256}.safetensors"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns()}.part")


def _missing_message(reason: str, cache_dir: Path) -> str:
    return (f"the Inception-v3 weights for FID/KID/IS are missing: {reason}. On a machine with network, fetch "
            f"{WEIGHTS_URL} (sha256 {WEIGHTS_SHA256}) and put it at {cache_dir / WEIGHTS_NAME}, or set "
            f"{WEIGHTS_ENV}=/path/to/{WEIGHTS_NAME}")


# -- verification, conversion ------------------------------------------------------------------------------


def verify_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256; InceptionWeightsRefused (one line, naming the file and `expected`) if it differs."""
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise InceptionWeightsRefused(
            f"Inception weights {path} have sha256 {actual}, expected {expected}: the file is damaged, "
            f"tampered with or another network; delete it and fetch {WEIGHTS_URL}")
    return actual


def _check_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """state must be {name: tensor} with exactly the architecture's names and shapes."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionWeightsRefused(f"Inception weights {path} are not a state dict of tensors")
    with torch.device("meta"):  # shapes and dtypes only: nothing allocated
        expected = {name: (tuple(t.shape), t.dtype) for name, t in InceptionFeatureNet().state_dict().items()}
    got = {str(name): (tuple(t.shape), t.dtype) for name, t in state.items()}
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise InceptionWeightsRefused(
            f"Inception weights {path} do not fit Inception-v3 (2015-12-05): missing {missing[:3]}, unexpected "
            f"{extra[:3]}, wrong shapes or dtypes {wrong[:3]}")
    return {str(name): tensor.contiguous() for name, tensor in state.items()}


def read_pth_safely(path: Path) -> dict[str, torch.Tensor]:
    """A .pth state dict read with `torch.load(weights_only=True)`: a pickle that would build any object other
    than tensors and plain containers is refused before it runs (InceptionWeightsRefused, one line)."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InceptionWeightsRefused(
            f"Inception weights {path} were refused: not a plain tensor file (torch.load(weights_only=True): "
            f"{first[:200]})") from None
    return _check_state_dict(state, path)


def _convert(source: Path, source_sha256: str, official: bool, cache_dir: Path) -> Path:
    """source (.pth or .safetensors, already verified) -> safetensors + JSON record in the cache, atomically."""
    from safetensors.torch import load_file, save_file

    if source.suffix == ".safetensors":
        state = _check_state_dict(load_file(str(source)), source)
    else:
        state = read_pth_safely(source)
    out = converted_path(source_sha256, cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(out)
    save_file(state, str(tmp), metadata={"source_sha256": source_sha256})
    record = {"feature_net": FEATURE_NET_NAME, "source_file": source.name, "source_sha256": source_sha256,
              "official": official, "sha256": sha256_file(tmp), "conversion_version": CONVERSION_VERSION,
              "torch": torch.__version__}
    record_tmp = _tmp_name(out.with_suffix(".json"))
    record_tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)  # the record goes last: a safetensors without its record is not used
    os.replace(record_tmp, out.with_suffix(".json"))
    return out


def _cached_conversion(source_sha256: str, cache_dir: Path) -> Path | None:
    """The converted safetensors of that source if it is there and matches its record, else None."""
    out = converted_path(source_sha256, cache_dir)
    record_path = out.with_suffix(".json")
    if not out.is_file() or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (record.get("source_sha256") != source_sha256 or record.get("conversion_version") != CONVERSION_VERSION
            or record.get("sha256") != sha256_file(out)):
        return None  # damaged or stale: converted again from the source
    return out


# -- download ----------------------------------------------------------------------------------------------


def _open_url(url: str, timeout: float) -> Any:
    """urlopen with a wall-clock deadline covering DNS too (getaddrinfo ignores socket timeouts)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["response"] = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (https/http only)
        except BaseException as error:  # handed to the caller
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in result:
        raise result["error"]
    return result["response"]


def download_weights(url: str, dest: Path, expected_sha256: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download url to dest (temp name, tqdm progress bar, sha256 checked while writing, then renamed).
    InceptionWeightsMissing (one line) when it cannot be fetched; InceptionWeightsRefused on a wrong digest."""
    from tqdm import tqdm

    if not url.startswith(("https://", "http://")):
        raise ValueError(f"refusing to download Inception weights from {url!r}: not an http(s) URL")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    digest = hashlib.sha256()
    try:
        with _open_url(url, timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (OSError, urllib.error.URLError, TimeoutError, ValueError) as error:
        tmp.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        raise InceptionWeightsMissing(_missing_message(f"downloading {url} failed ({reason})".replace("\n", " "),
                                                       dest.parent)) from None
    if digest.hexdigest() != expected_sha256:
        tmp.unlink(missing_ok=True)
        raise InceptionWeightsRefused(f"Inception weights downloaded from {url} have sha256 {digest.hexdigest()}, "
                                      f"expected {expected_sha256}: not the official file; nothing was kept")
    os.replace(tmp, dest)
    return dest


# -- the one entry point for weights -----------------------------------------------------------------------


def ensure_inception_weights(path: str | Path | None = None, *, expected_sha256: str | None = WEIGHTS_SHA256,
                             cache_dir: str | Path | None = None, url: str | None = None,
                             timeout: float | None = None) -> Path:
    """The verified safetensors of the Inception weights, in the cache: call it at start-up (on the main
    process first, or on every rank: concurrent downloads and conversions only race to identical files).

    path: the file the user names (.pth, or .safetensors of the same tensors), else $GAN_DIST_INCEPTION_WEIGHTS,
    else the cache, else a download of `url`. expected_sha256: the digest the source file must have (the
    official one by default: the production path always verifies); None accepts a named file of any digest
    whose tensors fit the architecture (tests and development only; without a named file, None means the
    official digest). url / timeout: WEIGHTS_URL / DOWNLOAD_TIMEOUT_S (read when called). Raises
    InceptionWeightsMissing (a FileNotFoundError) or InceptionWeightsRefused, one line each.
    """
    cache = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    url = WEIGHTS_URL if url is None else url
    timeout = DOWNLOAD_TIMEOUT_S if timeout is None else timeout
    named = path or os.environ.get(WEIGHTS_ENV) or None
    if named is not None:
        source = Path(named).expanduser()
        if not source.is_file():
            where = f"{WEIGHTS_ENV}={named}" if not path else str(source)
            raise InceptionWeightsMissing(_missing_message(f"{where} does not exist", cache))
        actual = verify_sha256(source, expected_sha256)
        return _cached_conversion(actual, cache) or _convert(source, actual, actual == WEIGHTS_SHA256, cache)
    official = expected_sha256 or WEIGHTS_SHA256
    if converted := _cached_conversion(official, cache):
        return converted
    source = cache / WEIGHTS_NAME
    if not source.is_file():
        download_weights(url, source, official, timeout)
    verify_sha256(source, official)
    return _convert(source, official, official == WEIGHTS_SHA256, cache)


def load_inception(path: str | Path | None = None, *, resize: str = "tf", device: torch.device | str = "cpu",
                   expected_sha256: str | None = WEIGHTS_SHA256, cache_dir: str | Path | None = None,
                   ) -> InceptionFeatureNet:
    """The verified network (eval mode, frozen) on `device`; arguments as `ensure_inception_weights`."""
    from safetensors.torch import load_file

    if resize not in RESIZES:
        raise ValueError(f"resize={resize!r}: expected one of {', '.join(RESIZES)} (eval.resize)")
    weights = ensure_inception_weights(path, expected_sha256=expected_sha256, cache_dir=cache_dir)
    record = json.loads(weights.with_suffix(".json").read_text())
    with torch.device("meta"):  # no random initialization (3 s on a CPU core): the file's tensors are assigned
        net = InceptionFeatureNet(resize=resize, weights_sha256=record["source_sha256"],
                                  official=bool(record.get("official")))
    net.load_state_dict(load_file(str(weights)), strict=True, assign=True)
    return net.eval().requires_grad_(False).to(device)


# -- the network -------------------------------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 as is; float in [-1, 1] -> round((x + 1) * 127.5) clamped, the loader's inverse
    (gan_dist.tracking.images_to_uint8, what `gan-dist sample` writes); C = 1 -> repeated to 3 channels."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Inception expects images (B, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise ValueError(f"Inception expects uint8 images or float in [-1, 1], got {images.dtype}")
        images = ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # (B, 3, H, W)


def resize_clean(images: torch.Tensor) -> torch.Tensor:
    """clean-fid's resize: uint8 (B, 3, H, W) -> float32 (B, 3, 299, 299) in [0, 255], on the CPU: each
    channel as a float32 PIL image ("F"), bicubic to 299x299, clipped."""
    from PIL import Image

    pixels = images.cpu().numpy().astype(np.float32)  # (B, 3, H, W)
    out = np.empty((len(pixels), 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, image in enumerate(pixels):
        for c, channel in enumerate(image):
            resized = Image.fromarray(channel, mode="F").resize((INPUT_SIZE, INPUT_SIZE), Image.BICUBIC)
            out[i, c] = np.asarray(resized).clip(0, 255)
    return torch.from_numpy(out)


def resize_tf(images: torch.Tensor) -> torch.Tensor:
    """TF1's bilinear resize (torch-fidelity's epsilon-exact port): uint8 (B, 3, H, W) -> float32
    (B, 3, 299, 299) in [0, 255], on the images' device."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    return interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(INPUT_SIZE, INPUT_SIZE),
                                                     align_corners=False)


def _tf32_switches() -> list[tuple[Any, str, Any]]:
    """(object, attribute, value meaning "no TF32") for cuDNN convolutions and CUDA matmuls. torch >= 2.9 has
    per-backend `fp32_precision`; reading the legacy `allow_tf32` raises once that API has been used."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return [(conv, "fp32_precision", "ieee"), (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """No autocast and no TF32 inside (restored after): a caller's bf16 autocast, or TF32 convolutions (on by
    default for cuDNN) would move the features by ~1e-3 and the reference numbers with them."""
    saved = []
    if device.type == "cuda":
        for owner, name, value in _tf32_switches():
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)
    autocast = (torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu")
                else contextlib.nullcontext())
    try:
        with autocast:
            yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


class InceptionFeatureNet(nn.Module):
    """Inception-v3 as in TF's 2015-12-05 graph (torch-fidelity's blocks and parameter names, so the official
    file loads as is), with FeatureNet's contract: `features_and_logits(images)` -> pool3 (B, 2048) and
    logits_unbiased (B, 1008) (pool3 @ fc.weight.T, no bias: what torch-fidelity's IS uses), float32.

    Own top level instead of torch-fidelity's FeatureExtractorInceptionV3, whose constructor unpickles its
    weights (`torch.load(weights_only=False)`) or downloads them through torch.hub on whichever rank builds
    it, whose forward takes uint8 only (clean-fid's resize gives float) and runs under the caller's autocast.
    """

    feature_dim = FEATURE_DIM
    num_classes = NUM_LOGITS
    in_channels = 3

    def __init__(self, resize: str = "tf", weights_sha256: str = "", official: bool = False,
                 max_batch: int = 64) -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import (
            BasicConv2d,
            InceptionA,
            InceptionB,
            InceptionC,
            InceptionD,
            InceptionE_1,
            InceptionE_2,
        )

        super().__init__()
        if resize not in RESIZES:
            raise ValueError(f"resize={resize!r}: expected one of {', '.join(RESIZES)} (eval.resize)")
        self.resize = resize
        self.weights_sha256 = weights_sha256
        self.official = official
        self.max_batch = max_batch  # images per forward: bounds the activations' memory (~40 MB per image)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (B, 3, 299, 299) in [-1, 1) -> pool3 (B, 2048)."""
        x = self.MaxPool_1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))  # (B, 64, 73, 73)
        x = self.MaxPool_2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (B, 2048, 8, 8)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 2048)

    def resized(self, images: torch.Tensor) -> torch.Tensor:
        """Images (any size, uint8 or float in [-1, 1], C = 1 or 3) -> float32 (B, 3, 299, 299) in [0, 255]
        by this network's resize protocol, on its device."""
        pixels = to_uint8(images)
        device = self.fc.weight.device
        return resize_clean(pixels).to(device) if self.resize == "clean" else resize_tf(pixels.to(device))

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) -> pool3 features (B, 2048) and logits_unbiased (B, 1008), float32, on the
        network's device; at most max_batch images per forward."""
        device = self.fc.weight.device
        features, logits = [], []
        with exact_float32(device):
            for start in range(0, len(images), self.max_batch):
                x = (self.resized(images[start:start + self.max_batch]) - 128) / 128  # (b, 3, 299, 299)
                pool3 = self.trunk(x)  # (b, 2048)
                features.append(pool3)
                logits.append(pool3 @ self.fc.weight.T)  # (b, 1008)
        if not features:
            empty = torch.empty(0, device=device)
            return empty.reshape(0, FEATURE_DIM), empty.reshape(0, NUM_LOGITS)
        return torch.cat(features), torch.cat(logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]  # (B, 2048)

    def protocol(self) -> dict[str, Any]:
        """What a number computed with this network depends on; print it beside every number."""
        return {"feature_net": FEATURE_NET_NAME, "weights_sha256": self.weights_sha256,
                "weights_official": self.official, "resize": self.resize, "input": INPUT_NOTE,
                "features": f"pool3 ({FEATURE_DIM})", "logits": f"logits_unbiased ({NUM_LOGITS})"}


# -- the registry's entry points (eval.feature_net=inception) -----------------------------------------------


def ensure_weights(eval_config: EvalConfig) -> Path:
    """The verified weights for eval.inception_weights ("" = $GAN_DIST_INCEPTION_WEIGHTS, the cache, a
    download): called by training at start-up, so that a missing file stops the run before it starts."""
    return ensure_inception_weights(eval_config.inception_weights or None, expected_sha256=EXPECTED_SHA256)


def weights_status(eval_config: EvalConfig) -> str:
    """Where the weights would come from, looked up without reading, converting or downloading anything (for
    `gan-dist train --dry-run`): a named file, the cache, or a download at start-up."""
    named = eval_config.inception_weights or os.environ.get(WEIGHTS_ENV) or ""
    cache = weights_cache_dir()
    if named:
        source = Path(named).expanduser()
        where = str(source) if eval_config.inception_weights else f"{WEIGHTS_ENV}={named}"
        return (f"{where} (sha256-checked at start-up)" if source.is_file() else
                f"MISSING: {where} does not exist (a run that evaluates stops at start-up)")
    if converted_path(EXPECTED_SHA256, cache).is_file() or (cache / WEIGHTS_NAME).is_file():
        return f"in the cache {cache} (sha256-checked at start-up)"
    return (f"not on this machine: downloaded at start-up from {WEIGHTS_URL} into {cache} (offline, the run "
            f"stops there in one line; put the file at {cache / WEIGHTS_NAME} or set {WEIGHTS_ENV})")


def load_feature_net(dataset: ResolvedDataset, eval_config: EvalConfig,
                     device: torch.device | str = "cpu") -> tuple[InceptionFeatureNet, dict[str, Any]]:
    """The network for eval.resize and eval.inception_weights, and its record: sha256 (of the weights file
    the numbers depend on: the official .pth's) and the protocol. Any dataset: images of any size and 1 or 3
    channels are resized by the protocol."""
    net = load_inception(eval_config.inception_weights or None, resize=eval_config.resize, device=device,
                         expected_sha256=EXPECTED_SHA256)
    return net, {"sha256": net.weights_sha256, **net.protocol()}
