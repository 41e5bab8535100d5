"""The Lightning versions the suite is written against, checked when its callbacks are imported.

Exact resume depends on when Lightning saves its epoch-end checkpoint, steps each kind of
scheduler and calls the samplers' `set_epoch` (see `geoguess.models.callbacks` and
`PrefetchingLoader`); another minor version may move them. pyproject.toml states the same range.
"""

from __future__ import annotations

import lightning
from packaging.specifiers import SpecifierSet

LOWEST = "2.6"
BELOW = "2.7"
SUPPORTED = f"lightning>={LOWEST},<{BELOW}"


class UnsupportedLightning(ImportError):
    """The installed Lightning is outside `SUPPORTED`."""


def check_lightning(installed: str | None = None) -> None:
    """Raise `UnsupportedLightning`, naming the supported range, unless `installed` (default:
    the imported Lightning's version) is in it."""
    installed = installed or lightning.__version__
    # As pip reads the range: `<2.7` excludes 2.7's pre-releases too.
    if not SpecifierSet(SUPPORTED.removeprefix("lightning")).contains(installed, prereleases=True):
        raise UnsupportedLightning(
            f"geoguess supports {SUPPORTED}, not lightning {installed} (exact resume relies on "
            f"when Lightning {LOWEST} saves checkpoints and steps schedulers); "
            f"install a supported one: pip install '{SUPPORTED}'"
        )
