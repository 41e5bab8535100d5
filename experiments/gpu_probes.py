"""Helpers of experiments/gpu_acceptance.sh and gpu_bench.sh: the usable-GPU check, the machine's
record, a training callback that times the steps and lists host syncs, and the table rows.

    python experiments/gpu_probes.py check                 # exit 1 with one line without a GPU
    python experiments/gpu_probes.py env OUT_DIR           # env.json; prints its table rows
    python experiments/gpu_probes.py bench-rows RUN_DIR    # rows from a bench.json
    python experiments/gpu_probes.py train-rows NAME PROBE_JSON
    python experiments/gpu_probes.py feature-cache-row LOG
    python experiments/gpu_probes.py recompiles-row LOG

The callbacks are added to a training run with
`+callbacks.probe={_target_: gpu_probes.GpuProbe, out: PATH}` (experiments/ on PYTHONPATH).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import warnings
from collections import Counter
from datetime import datetime
from pathlib import Path

SYNC_MESSAGE = "synchronizing CUDA operation"
VIEWS = 4  # per location (geoguess.data.io.HEADINGS)


def usable_gpu() -> str | None:
    """None when torch can run a kernel on a CUDA device, else why not (one line)."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means no GPU run
        return f"torch cannot be imported ({exc})"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    built = f"torch {torch.__version__}, built for CUDA {torch.version.cuda}"
    if not available:
        why = str(caught[-1].message).strip().splitlines()[0] if caught else "no CUDA device"
        return f"{why} ({built})"
    try:
        torch.ones(1, device="cuda").add_(1).item()
    except Exception as exc:  # noqa: BLE001 - e.g. a driver too old for this wheel
        return f"{str(exc).strip().splitlines()[0]} ({built})"
    return None


def environment() -> dict:
    import lightning
    import torch

    smi = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "driver": smi.splitlines()[0].split(",")[1].strip() if smi else "unknown",
        "nvidia_smi": smi,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "bf16": torch.cuda.is_bf16_supported(),
        "date": datetime.now().isoformat(timespec="seconds"),
    }


# -- The training callbacks -------------------------------------------------------------------

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the check and the rows need no Lightning
    Callback = object


class GpuProbe(Callback):
    """Per training epoch (validation left out): seconds, steps, locations and images, and the
    host syncs (`torch.cuda.set_sync_debug_mode("warn")`, each warning counted by the Python
    line that caused it). The clock is read after a `torch.cuda.synchronize()` at both ends, made
    with the sync debug mode off. Written to `out` (JSON) after every epoch."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.epochs: list[dict] = []
        self._open: dict | None = None
        self._showwarning = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _synchronize()
        self._open = {
            "epoch": trainer.current_epoch,
            "start": time.perf_counter(),
            "steps": 0,
            "locations": 0,
            "images": 0,
            "syncs": Counter(),
        }
        self._count_syncs(True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._open is not None:
            # Metadata, no sync; batches read from the feature cache carry no images.
            locations = len(batch["index"])
            self._open["steps"] += 1
            self._open["locations"] += locations
            self._open["images"] += locations * VIEWS

    def on_validation_start(self, trainer, pl_module) -> None:
        self._close()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._count_syncs(False)

    def _close(self) -> None:
        if self._open is None:
            return
        self._count_syncs(False)
        _synchronize()
        epoch, self._open = self._open, None
        seconds = time.perf_counter() - epoch.pop("start")
        syncs = epoch.pop("syncs")
        steps = max(epoch["steps"], 1)
        epoch.update(
            seconds=round(seconds, 3),
            step_ms=round(1000 * seconds / steps, 2),
            images_per_s=round(epoch["images"] / seconds, 1),
            host_syncs=sum(syncs.values()),
            host_syncs_per_step=round(sum(syncs.values()) / steps, 2),
            sync_sites=dict(syncs.most_common(12)),
        )
        self.epochs.append(epoch)
        self.out.write_text(json.dumps({"epochs": self.epochs}, indent=2) + "\n")

    def _count_syncs(self, on: bool) -> None:
        import torch

        if on and self._showwarning is None:
            counter, original = self._open["syncs"], warnings.showwarning
            self._showwarning = original

            def show(message, category, filename, lineno, file=None, line=None):
                if SYNC_MESSAGE in str(message):
                    counter[f"{filename}:{lineno}"] += 1
                else:
                    original(message, category, filename, lineno, file, line)

            warnings.filterwarnings("always", message=f".*{SYNC_MESSAGE}.*")
            warnings.showwarning = show
            if torch.cuda.is_available():  # a CPU run (a check of this file) has no syncs
                torch.cuda.set_sync_debug_mode("warn")
        elif not on and self._showwarning is not None:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning, self._showwarning = self._showwarning, None


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StopAtEpoch(Callback):
    """Ctrl+C (a KeyboardInterrupt: Lightning stops cleanly) at batch 1 of `epoch`, after that
    epoch's last.ckpt was written at its start."""

    def __init__(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            raise KeyboardInterrupt


# -- Table rows -------------------------------------------------------------------------------


def env_rows(out: Path) -> list[str]:
    record = environment()
    (out / "env.json").write_text(json.dumps(record, indent=2) + "\n")
    return [
        f"| GPU | {record['gpu']} ({record['gpu_memory_gib']} GiB, sm {record['capability']}) |",
        f"| driver / CUDA runtime / cuDNN | {record['driver']} / {record['cuda_runtime']} / "
        f"{record['cudnn']} |",
        f"| torch / lightning | {record['torch']} / {record['lightning']} |",
    ]


def bench_rows(run_dir: Path) -> list[str]:
    result = json.loads((run_dir / "bench.json").read_text())
    rows = []
    for backbone, sizes in result.get("train_step", {}).items():
        if isinstance(sizes, dict):
            for size, f in sizes.items():
                rows.append(
                    f"| bench train_step {backbone} {size} px | {f['images_per_s']:,.0f} images/s "
                    f"({f['samples_per_s']:,.0f} locations/s) |"
                )
    for size, f in result.get("loader", {}).items():
        rows.append(
            f"| bench loader {size} px | {f['default_samples_per_s']:,.0f} augmented locations/s "
            f"on the device ({f['ratio']:.1f}x the naive loader) |"
        )
    return rows


def train_rows(name: str, probe: Path) -> list[str]:
    rows = []
    for e in json.loads(probe.read_text())["epochs"]:
        sites = ", ".join(f"{k} ({v})" for k, v in list(e["sync_sites"].items())[:4]) or "none"
        rows.append(
            f"| {name}, epoch {e['epoch']} | {e['images_per_s']:,.0f} images/s, "
            f"{e['step_ms']:.1f} ms/step over {e['steps']} steps; host syncs "
            f"{e['host_syncs_per_step']:.2f}/step: {sites} |"
        )
    return rows


STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def feature_cache_row(log: Path) -> list[str]:
    """Seconds from the feature cache's 'computing backbone features' line to the next line."""
    start = None
    for line in log.read_text(errors="replace").splitlines():
        stamp = STAMP.match(line)
        if stamp is None:
            continue
        moment = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if start is not None:
            return [f"| feature cache build | {(moment - start).total_seconds():.1f} s |"]
        if "computing backbone features" in line:
            start = moment
    return ["| feature cache build | not found in the log |"]


def recompiles_row(log: Path) -> list[str]:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "Recompiling" in ln]
    return [f"| torch.compile recompiles (TORCH_LOGS=recompiles) | {len(lines)} |"]


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "check":
        why = usable_gpu()
        if why is not None:
            print(f"no usable CUDA GPU: {why}", file=sys.stderr)
            return 1
        return 0
    rows = {
        "env": lambda out: env_rows(Path(out)),
        "bench-rows": lambda run: bench_rows(Path(run)),
        "train-rows": lambda name, probe: train_rows(name, Path(probe)),
        "feature-cache-row": lambda log: feature_cache_row(Path(log)),
        "recompiles-row": lambda log: recompiles_row(Path(log)),
    }[command](*args)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
