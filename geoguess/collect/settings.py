"""A collection run's settings (`collect:` of conf/collect.yaml) and what the run did."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from geoguess.collect.streetview import CollectError


@dataclass(frozen=True)
class CollectSettings:
    """The `collect:` block of conf/collect.yaml (never holds a secret), which holds every
    default and says what each key means."""

    n: int
    out: Path
    base_url: str
    radius: int
    source: str
    concurrency: int
    max_requests: int
    seed: int
    balance_with: Path | None
    balance_below: float | None
    retries: int
    backoff: float
    max_backoff: float
    timeout: float
    outside_tolerance_km: float
    min_distance_m: float
    progress: bool

    @classmethod
    def from_config(cls, cfg) -> CollectSettings:
        """From a mapping (e.g. the DictConfig `cfg.collect`), checked."""
        values = dict(cfg)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise CollectError(f"unknown collect setting(s): {', '.join(unknown)}")
        missing = sorted(set(cls.__dataclass_fields__) - set(values))
        if missing:
            raise CollectError(
                f"collect setting(s) missing: {', '.join(missing)} (conf/collect.yaml gives them)"
            )
        if values.get("out") in (None, ""):
            raise CollectError("set collect.out to the dataset folder to create or extend")
        values["out"] = Path(str(values["out"])).expanduser()
        if values.get("balance_with"):
            values["balance_with"] = Path(str(values["balance_with"])).expanduser()
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        positive = {
            "n": self.n,
            "radius": self.radius,
            "concurrency": self.concurrency,
            "max_requests": self.max_requests,
            "timeout": self.timeout,
        }
        for name, value in positive.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise CollectError(f"collect.{name}={value!r} must be a positive number")
        for name in ("n", "radius", "concurrency", "max_requests", "retries"):
            if not isinstance(getattr(self, name), int):
                raise CollectError(f"collect.{name}={getattr(self, name)!r} must be an integer")
        if not isinstance(self.min_distance_m, int | float) or self.min_distance_m < 0:
            raise CollectError(f"collect.min_distance_m={self.min_distance_m!r} must be >= 0")
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise CollectError("collect.retries, backoff and max_backoff must not be negative")
        if not self.base_url.startswith(("http://", "https://")):
            raise CollectError(f"collect.base_url={self.base_url!r} must start with http(s)://")

    def metadata_key(self, location: str) -> str:
        """What settles a point's metadata: answers from another server or radius do not count."""
        base = self.base_url.rstrip("/")
        return f"{base}|location={location}&radius={self.radius}&source={self.source}"


@dataclass
class Summary:
    """What a run did; `report()` is what the command prints."""

    out: str
    points: int = 0
    metadata_from_earlier_runs: int = 0
    metadata_failed: int = 0
    ok: int = 0
    zero_results: int = 0
    duplicates: int = 0
    already_in_dataset: int = 0
    outside_country: int = 0
    too_close: int = 0
    to_download: int = 0
    collected: int = 0
    failed: int = 0
    unfinished: int = 0
    rows: int = 0
    requests: int = 0
    retries: int = 0
    max_requests: int = 0
    budget_exhausted: bool = False
    seconds: float = 0.0
    responses: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def report(self) -> str:
        lines = [
            f"{self.points} points: {self.ok} with a panorama, {self.zero_results} without "
            f"({self.metadata_from_earlier_runs} settled by earlier runs"
            + (f", {self.metadata_failed} failed" if self.metadata_failed else "")
            + ")",
            f"panoramas: {self.duplicates} duplicates, {self.already_in_dataset} already in the "
            f"dataset, {self.outside_country} outside the country, {self.too_close} within "
            f"collect.min_distance_m of one kept, {self.to_download} to download",
            f"collected {self.collected} new locations, {self.failed} failed"
            + (" (see failed.csv)" if self.failed else "")
            + (f", {self.unfinished} unfinished" if self.unfinished else "")
            + f"; {self.out}/data.csv now has {self.rows} rows",
            f"{self.requests} requests ({self.retries} retries) of a budget of "
            f"{self.max_requests} in {self.seconds:.1f} s",
        ]
        if self.budget_exhausted:
            lines.append(
                "request budget spent before the end: rerun the same command (with a new "
                "collect.max_requests if you like) to continue where this run stopped"
            )
        return "\n".join(lines)
