"""The Inception-v3 feature network, its resize protocols and its weights, with randomly initialised weights of
the real architecture (the official file cannot be fetched here): FID, KID and IS equal torch-fidelity's own
`calculate_metrics` on the same weights file, computed directly and through the Evaluator on 1 and 2
processes (gloo); the `clean` resize equals clean-fid's; weights are verified by sha256, never unpickled, and
a machine without them fails fast with one line. Inception costs ~0.3-1 s per image on one CPU core: the
tests use a few dozen images in all."""

from __future__ import annotations

import json
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity  # a dependency of gan_dist.metrics.inception: missing, it fails here (no skip)
from torch.utils.data import Dataset

from gan_dist.files import sha256_file
from gan_dist.metrics import inception as inc
from gan_dist.metrics.classes import inception_score_splits
from gan_dist.metrics.fid import fid_from_features
from gan_dist.metrics.inception import (
    WEIGHTS_ENV,
    WEIGHTS_NAME,
    WEIGHTS_SHA256,
    WEIGHTS_URL,
    InceptionFeatureNet,
    InceptionWeightsMissing,
    InceptionWeightsRefused,
    ensure_inception_weights,
    load_inception,
    resize_clean,
    resize_tf,
    to_uint8,
)
from gan_dist.metrics.kid import kid
from tests.distributed import run_processes
from tests.metrics.inception_eval_worker import LATENT_DIM, bank_images, bank_index
from tests.pickle_payload import PicklePayload

NUM_IMAGES = 8  # per set (fake, real)
RTOL = 1e-4


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Inception-v3 with He-normal convolutions, BatchNorm statistics measured on 8 random images (so that
    features differ between images, as with trained weights) and a random fc: plain tensors, the official
    file's 566 names and shapes."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in InceptionFeatureNet().state_dict().items()}
    state = {}
    for name, (shape, dtype) in shapes.items():
        if name.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            state[name] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif name.endswith("bn.weight"):
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bn.bias"):
            state[name] = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("num_batches_tracked"):
            state[name] = torch.zeros(shape, dtype=dtype)
        elif name.startswith("fc."):
            state[name] = torch.randn(shape, generator=g) * (0.1 if name == "fc.bias" else 1.0)
        else:  # running_mean / running_var: measured below
            state[name] = torch.zeros(shape) if name.endswith("mean") else torch.ones(shape)
    with torch.device("meta"):
        net = InceptionFeatureNet()
    net.load_state_dict(state, assign=True)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = those of the one calibration batch
    calibration = torch.cat([_smooth_images(2, seed + 100), _noise_images(2, seed + 200)])  # (4, 3, 32, 32)
    with torch.no_grad():
        net.train()
        pool3 = net.trunk((resize_tf(calibration) - 128) / 128).double()  # (4, 2048)
    # fc: the mean feature direction projected out (else one class wins for every image and IS is 1), scaled
    # so that logits vary by ~3 between images.
    mean = pool3.mean(0)  # (2048,)
    weight = state["fc.weight"].double()  # (1008, 2048)
    weight = weight - torch.outer(weight @ mean, mean) / (mean @ mean)
    spread = float((pool3 - mean).norm(dim=1).mean())
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    state["fc.weight"] = (weight * (3.0 / spread)).float()
    return state


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(path, sha256) of a random Inception-v3 saved as a plain .pth state dict, like the official file."""
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(_random_state_dict(), path)
    return path, sha256_file(path)


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights_cache")


@pytest.fixture(scope="session")
def random_net(random_weights: tuple[Path, str], weights_cache: Path) -> InceptionFeatureNet:
    return load_inception(random_weights[0], expected_sha256=random_weights[1], cache_dir=weights_cache)


def _smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 (n, 3, size, size): low-frequency colour fields with a little noise (the "real" set)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    fields = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noisy = fields * 220 + torch.rand(n, 3, size, size, generator=g) * 35
    return noisy.round().clamp(0, 255).to(torch.uint8)


def _noise_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 (n, 3, size, size): darker white noise (the "fake" set)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 160).round().to(torch.uint8)


class _Images(Dataset):
    """torch-fidelity's input: a Dataset of uint8 (3, H, W) tensors."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# -- the weights' identity ---------------------------------------------------------------------------------


def test_official_digest_is_consistent_with_the_file_name_torch_hub_checks() -> None:
    assert len(WEIGHTS_SHA256) == 64 and int(WEIGHTS_SHA256, 16) >= 0
    prefix = WEIGHTS_NAME.rsplit("-", 1)[1].removesuffix(".pth")  # torch.hub's check_hash convention
    assert WEIGHTS_SHA256.startswith(prefix) and WEIGHTS_URL.endswith("/" + WEIGHTS_NAME)


# -- equality with torch-fidelity and clean-fid ----------------------------------------------------------


@pytest.mark.slow  # ~20 s on one CPU core: 16 Inception forwards, twice (ours and torch-fidelity's)
def test_fid_kid_is_equal_torch_fidelity_calculate_metrics(random_weights: tuple[Path, str],
                                                          random_net: InceptionFeatureNet) -> None:
    fake, real = _noise_images(NUM_IMAGES, 1), _smooth_images(NUM_IMAGES, 2)
    theirs = torch_fidelity.calculate_metrics(
        input1=_Images(fake), input2=_Images(real), cuda=False, isc=True, fid=True, kid=True,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(random_weights[0]),
        kid_subsets=5, kid_subset_size=6, isc_splits=2, cache=False, verbose=False, save_cpu_ram=True)
    f_fake, l_fake = random_net.features_and_logits(fake)  # (8, 2048), (8, 1008)
    f_real, _ = random_net.features_and_logits(real)
    ours_kid = kid(f_fake, f_real, subsets=5, subset_size=6)  # seed 2020: torch-fidelity's default
    is_mean, is_std = inception_score_splits(l_fake, splits=2)
    fid = fid_from_features(f_fake, f_real)
    assert fid == pytest.approx(theirs["frechet_inception_distance"], rel=RTOL)
    assert ours_kid["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=RTOL)
    assert ours_kid["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=RTOL)
    assert is_mean == pytest.approx(theirs["inception_score_mean"], rel=RTOL)
    assert is_std == pytest.approx(theirs["inception_score_std"], rel=RTOL)
    # Non-trivial values, so that the equalities above could fail.
    assert fid > 1.0 and ours_kid["kid"] > 0.01 and is_mean > 1.2 and is_std > 0


def test_features_and_logits_equal_torch_fidelity_extractor(random_weights: tuple[Path, str],
                                                            random_net: InceptionFeatureNet) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(random_weights[0]))
    images = _smooth_images(1, 3, size=40)[:, :, :, :28]  # non-square, upsampled
    expected = theirs(images)
    got = random_net.features_and_logits(images)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)


def test_clean_resize_equals_clean_fid_resizer() -> None:
    resize = pytest.importorskip("cleanfid.resize")
    resizer = resize.make_resizer("PIL", False, "bicubic", (299, 299))
    for images in (_smooth_images(2, 4, size=32), _noise_images(1, 5, size=320)[:, :, :300]):  # up and down
        expected = np.stack([resizer(image.permute(1, 2, 0).numpy()) for image in images])  # (B, 299, 299, 3)
        got = resize_clean(images)  # (B, 3, 299, 299)
        assert got.dtype == torch.float32 and got.shape == (len(images), 3, 299, 299)
        np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), expected)
    # The two protocols differ: numbers of one are not comparable with the other's.
    images = _smooth_images(1, 6)
    assert (resize_clean(images) - resize_tf(images)).abs().max() > 1.0


def test_clean_protocol_feeds_the_resized_pixels_normalized_to_the_same_trunk(
        random_weights: tuple[Path, str], random_net: InceptionFeatureNet, weights_cache: Path) -> None:
    clean = load_inception(random_weights[0], resize="clean", expected_sha256=random_weights[1],
                           cache_dir=weights_cache)
    image = _smooth_images(1, 7)
    features, logits = clean.features_and_logits(image)
    with torch.no_grad():
        expected = random_net.trunk((resize_clean(image) - 128) / 128)  # clean-fid: (x - 128) / 128
    torch.testing.assert_close(features, expected, rtol=0, atol=0)
    torch.testing.assert_close(logits, expected @ random_net.fc.weight.T)
    assert clean.protocol()["resize"] == "clean"


def test_inception_score_splits_equals_torch_fidelity() -> None:
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(103, 1008, generator=torch.Generator().manual_seed(0)) * 3
    theirs = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception_score_splits(logits)
    assert mean == pytest.approx(theirs["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(theirs["inception_score_std"], rel=1e-9)


# -- input contract ----------------------------------------------------------------------------------------


def test_float_and_grayscale_inputs_become_the_uint8_rgb_the_references_see(
        random_net: InceptionFeatureNet) -> None:
    pixels = _smooth_images(2, 8)
    as_float = pixels.float() / 127.5 - 1.0  # what the loader gives, and what G should produce
    assert torch.equal(to_uint8(as_float), pixels)
    assert torch.equal(random_net.resized(as_float), random_net.resized(pixels))
    gray = pixels[:, :1]
    assert torch.equal(random_net.resized(gray), random_net.resized(gray.repeat(1, 3, 1, 1)))
    assert torch.equal(to_uint8(torch.full((1, 1, 2, 2), 3.0)), torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_uint8(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))


def test_features_ignore_the_callers_autocast_and_tf32(random_net: InceptionFeatureNet) -> None:
    image = _smooth_images(1, 9)
    plain = random_net.features_and_logits(image)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 training context calling the evaluator
        assert torch.equal(random_net.features_and_logits(image)[0], plain)
    switches = inc._tf32_switches()  # flags only: checkable without a GPU
    before = [getattr(owner, name) for owner, name, _ in switches]
    with inc.exact_float32(torch.device("cuda")):
        assert [getattr(owner, name) for owner, name, _ in switches] == [off for _, _, off in switches]
    assert [getattr(owner, name) for owner, name, _ in switches] == before


def test_protocol_names_the_weights_and_the_resize(random_weights: tuple[Path, str],
                                                   random_net: InceptionFeatureNet) -> None:
    protocol = random_net.protocol()
    assert protocol["feature_net"] == "inception-v3-2015-12-05"
    assert protocol["weights_sha256"] == random_weights[1] and protocol["weights_official"] is False
    assert protocol["resize"] == "tf" and "uint8" in protocol["input"]
    assert (random_net.feature_dim, random_net.num_classes) == (2048, 1008)
    from gan_dist.registry.feature_nets import FEATURE_NETS

    assert FEATURE_NETS["inception"].feature_dim == random_net.feature_dim  # eval.reference_stats' start-up check
    json.dumps(protocol)  # printable beside every number


# -- weights: where from, verified, never unpickled ------------------------------------------------------


def test_weights_are_converted_once_then_read_from_the_cache(random_weights: tuple[Path, str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path, sha = random_weights
    cache = tmp_path / "cache"
    converted = ensure_inception_weights(path, expected_sha256=sha, cache_dir=cache)
    assert converted.parent == cache and converted.suffix == ".safetensors" and sha in converted.name
    record = json.loads(converted.with_suffix(".json").read_text())
    assert record["source_sha256"] == sha and record["sha256"] == sha256_file(converted)
    stamp = converted.stat().st_mtime_ns
    monkeypatch.setattr(inc, "_convert", lambda *a: pytest.fail("converted twice"))
    monkeypatch.setenv(WEIGHTS_ENV, str(path))  # the env var names the same file
    assert ensure_inception_weights(expected_sha256=sha, cache_dir=cache) == converted
    assert converted.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    converted.write_bytes(b"damaged")  # a damaged conversion is made again from its source
    assert ensure_inception_weights(path, expected_sha256=sha, cache_dir=cache) == converted
    assert sha256_file(converted) == record["sha256"]


def test_weights_are_downloaded_verified_and_renamed_into_the_cache(random_weights: tuple[Path, str],
                                                                    tmp_path: Path, http_server) -> None:
    path, sha = random_weights
    served = tmp_path / "served"
    served.mkdir()
    (served / WEIGHTS_NAME).symlink_to(path)
    url = f"{http_server(served)}/{WEIGHTS_NAME}"
    cache = tmp_path / "cache"
    with pytest.raises(InceptionWeightsRefused) as refused:  # a wrong digest: refused, nothing kept
        ensure_inception_weights(expected_sha256="0" * 64, cache_dir=cache, url=url)
    assert "0" * 64 in _one_line(refused) and sorted(p.name for p in cache.iterdir()) == []
    converted = ensure_inception_weights(expected_sha256=sha, cache_dir=cache, url=url)
    assert sha256_file(cache / WEIGHTS_NAME) == sha and converted.is_file()
    assert not list(cache.glob(".*part"))


def test_production_path_refuses_a_file_that_is_not_the_official_one(random_weights: tuple[Path, str],
                                                                    tmp_path: Path) -> None:
    with pytest.raises(InceptionWeightsRefused) as refused:
        ensure_inception_weights(random_weights[0], cache_dir=tmp_path)  # default: the official digest
    message = _one_line(refused)
    assert str(random_weights[0]) in message and WEIGHTS_SHA256 in message
    assert not list(tmp_path.iterdir())  # nothing converted


def test_tampered_file_is_refused_with_one_line(random_weights: tuple[Path, str], tmp_path: Path) -> None:
    path, sha = random_weights
    cache = tmp_path / "cache"
    cache.mkdir()
    tampered = cache / WEIGHTS_NAME  # in the cache, where a download would have put it
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    for call in (lambda: ensure_inception_weights(tampered, expected_sha256=sha, cache_dir=cache),
                 lambda: ensure_inception_weights(expected_sha256=sha, cache_dir=cache)):
        with pytest.raises(InceptionWeightsRefused) as refused:
            call()
        message = _one_line(refused)
        assert str(tampered) in message and sha in message


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("url", [f"http://127.0.0.1:{_closed_port()}/{WEIGHTS_NAME}",
                                 f"http://10.255.255.1/{WEIGHTS_NAME}"])
def test_offline_without_the_file_fails_fast_with_one_line(url: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    cache = tmp_path / "cache"
    start = time.perf_counter()
    with pytest.raises(InceptionWeightsMissing) as missing:
        ensure_inception_weights(cache_dir=cache, url=url, timeout=1.0)
    assert time.perf_counter() - start < 5.0
    message = _one_line(missing)
    assert WEIGHTS_ENV in message and str(cache / WEIGHTS_NAME) in message and WEIGHTS_URL in message
    assert isinstance(missing.value, FileNotFoundError)  # the CLI's exit 1: a missing weights file
    assert not cache.exists() or not list(cache.iterdir())  # no partial file left


def test_a_named_file_that_does_not_exist_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InceptionWeightsMissing) as missing:
        ensure_inception_weights(tmp_path / "nowhere.pth", cache_dir=tmp_path)
    assert "nowhere.pth" in _one_line(missing)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(InceptionWeightsMissing, match=WEIGHTS_ENV):
        ensure_inception_weights(cache_dir=tmp_path)


def test_weights_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": PicklePayload(marker)}, evil)
    sha = sha256_file(evil)  # the digest even matches: only weights_only stands between the file and the code
    with pytest.raises(InceptionWeightsRefused) as refused:
        ensure_inception_weights(evil, expected_sha256=sha, cache_dir=tmp_path / "cache")
    assert str(evil) in _one_line(refused) and not marker.exists()
    with pytest.raises(InceptionWeightsRefused):
        ensure_inception_weights(evil, expected_sha256=None, cache_dir=tmp_path / "cache")
    assert not marker.exists()
    # Control: the payload is real (plain unpickling runs it), so the assertions above could fail.
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "code ran"


def test_tensors_of_another_architecture_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(InceptionWeightsRefused) as refused:
        ensure_inception_weights(other, expected_sha256=None, cache_dir=tmp_path / "cache")
    assert "do not fit" in _one_line(refused)


# -- the Evaluator with eval.feature_net=inception, on 1 and 2 processes ---------------------------------------

EVAL_WORKER = Path(__file__).with_name("inception_eval_worker.py")
EVAL_SAMPLES = 12  # generated images; the tiny CIFAR-10 archive has 12 train and 12 test images
KID_SUBSET = 8  # < 12: the 100 subsets differ (with all 12 in each, the std would be rounding noise)


@pytest.fixture(scope="module")
def tiny_cifar10(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """(shard folder, test images uint8 (12, 32, 32, 3)) of a CIFAR-10-format archive of 12 + 12 images, 6 per
    shard (two shards per split: one per rank on 2 processes)."""
    from gan_dist.data.benchmarks import write_archive_shards
    from tests.data.official_formats import cifar10_files, write_archive

    rng = np.random.default_rng(0)
    train = [(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), [0, 1, 2, 3, 4, 5]) for _ in range(2)]
    test = (np.stack([np.asarray(_smooth_images(1, 50 + i)[0].permute(1, 2, 0)) for i in range(12)]),
            [i % 10 for i in range(12)])
    root = tmp_path_factory.mktemp("tiny_cifar10")
    archive = write_archive(root / "cifar-10-binary.tar.gz", cifar10_files(train, test), extracted=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny archive is not the official one (its sha256 warns)
        write_archive_shards(root / "shards", "cifar10", f"archive:{archive}", samples_per_shard=6,
                             verify_checksums=False, verify_official_counts=False, progress=False, workers=1)
    return root / "shards", test[0]


@pytest.mark.slow  # ~1-2 min on one CPU core: ~90 Inception forwards (ours on 1 and 2 processes, torch-fidelity)
def test_evaluator_fid_kid_is_equal_torch_fidelity_on_one_and_two_processes(
        random_weights: tuple[Path, str], tiny_cifar10: tuple[Path, np.ndarray], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gan_dist.sampling import latent_noise

    path, sha = random_weights
    shards, test_images = tiny_cifar10
    # torch-fidelity, one process: the generated images (BankG draws exact uint8 pixels) vs the 12 test images.
    generated = bank_images()[bank_index(latent_noise(EVAL_SAMPLES, LATENT_DIM, 3))]  # (12, 3, 32, 32) uint8
    real = torch.from_numpy(test_images).permute(0, 3, 1, 2).contiguous()  # (12, 3, 32, 32) uint8
    theirs = torch_fidelity.calculate_metrics(
        input1=_Images(generated), input2=_Images(real), cuda=False, isc=True, fid=True, kid=True,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(path),
        kid_subset_size=KID_SUBSET, cache=False, verbose=False, save_cpu_ram=True)  # 100 subsets, 10 splits
    results = {}
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}  # the converted weights go there
    for world_size in (1, 2):
        out = tmp_path / f"inception_{world_size}.json"
        run_processes(EVAL_WORKER, world_size, [str(shards), str(tmp_path / f"metrics{world_size}"), str(out),
                                                str(path), sha, str(EVAL_SAMPLES), "4", str(KID_SUBSET)], env=env)
        results[world_size] = json.loads(out.read_text())
    errors = {}
    for world_size, result in results.items():
        ours = result["metrics"]
        for key, their_key in (("fid", "frechet_inception_distance"), ("kid", "kernel_inception_distance_mean"),
                               ("kid_std", "kernel_inception_distance_std"), ("inception_score", "inception_score_mean"),
                               ("inception_score_std", "inception_score_std")):
            assert ours[key] == pytest.approx(theirs[their_key], rel=RTOL), (world_size, key)
            errors[(world_size, key)] = abs(ours[key] / theirs[their_key] - 1)
        protocol = result["protocol"]
        assert protocol["feature_net"] == "inception" and protocol["weights_sha256"] == sha
        assert protocol["weights_official"] is False and protocol["resize"] == "tf"
        assert protocol["num_generated"] == 12 and protocol["reference"] == {"split": "test"}
        assert protocol["num_reference_images"] == 12 and protocol["floor"] == {"split": "train", "num_images": 12}
        assert protocol["inception_score_splits"] == 10
        assert result["tag"] == "inception-unofficial-tf-n12-test"  # never shares a key with a real Inception FID
        assert "classes_covered" not in ours  # Inception's ImageNet classes are not the dataset's
    assert results[2]["floor"] == pytest.approx(results[1]["floor"], rel=RTOL)
    assert results[1]["metrics"]["fid"] > 1.0 and results[1]["metrics"]["inception_score"] > 1.05  # non-trivial
    print("relative error vs torch-fidelity:", {f"{k[1]} ({k[0]} proc)": f"{v:.1e}" for k, v in errors.items()})


@pytest.mark.slow  # ~20 s on one CPU core: 36 Inception forwards (12 generated, 12 reference, 12 floor)
def test_eval_command_with_inception_records_its_protocol_and_never_calls_it_an_inception_fid(
        random_weights: tuple[Path, str], tiny_cifar10: tuple[Path, np.ndarray], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`gan-dist eval` with eval.feature_net=inception on the random network (the test replaces the expected
    digest, as only a test can): the protocol line, the JSON's protocol and tag say the weights are not the
    official ones."""
    from gan_dist.checkpoint import GeneratorInfo, export_generator
    from gan_dist.cli import main
    from gan_dist.config import ModelConfig
    from gan_dist.models.build import build_generator

    path, sha = random_weights
    shards, _ = tiny_cifar10
    monkeypatch.setattr(inc, "EXPECTED_SHA256", sha)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GAN_DIST_METRICS_CACHE", str(tmp_path / "metrics"))
    torch.manual_seed(0)
    model = ModelConfig(name="dcgan", g_width=8, d_width=8)
    export_generator(build_generator(model, (3, 32, 32)), GeneratorInfo(
        model=model, dataset="cifar10", image_shape=(3, 32, 32), num_classes=0, step=1, is_ema=False), tmp_path / "g")
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "g"), "data.dataset=cifar10", f"data.root={shards}",
                 "data.verify_checksums=false", "data.samples_per_shard=6", "eval.feature_net=inception",
                 f"eval.inception_weights={path}", "--num", "12", "--batch-size", "6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NOT the official Inception weights: not an Inception FID" in printed and "resize tf" in printed
    record = json.loads(out.read_text())
    assert record["protocol_tag"] == "inception-unofficial-tf-n12-test"
    protocol = record["protocol"]
    assert protocol["weights_official"] is False and protocol["weights_sha256"] == sha
    assert protocol["inception_score_splits"] == 10 and protocol["num_reference_images"] == 12
    assert {"fid", "kid", "inception_score", "inception_score_std"} <= set(record["metrics"])
    assert "classes_covered" not in record["metrics"]
