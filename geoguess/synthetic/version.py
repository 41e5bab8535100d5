"""The generator's version, and the name of one dataset it made (`dataset_key`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from geoguess.geo.boundary import Country
from geoguess.synthetic.errors import SynthesizeError

GENERATOR_VERSION = "synthetic-v3"  # bump when the output of a given seed changes


def dataset_key(country: Country, num_locations: int, seed: int, image_size: int) -> str:
    """A folder name for one generated dataset, e.g. `synthetic-v3-n2000-seed0-128px-1a2b3c4d5e6f`.

    The suffix is the country's fingerprint (its outline and CRS); a neighbours file other than
    the shipped one adds a hash of its bytes, since the land it holds is drawn. So a set
    generated for another outline or other surroundings is never reused.
    """
    key = (
        f"{GENERATOR_VERSION}-n{int(num_locations)}-seed{int(seed)}-{int(image_size)}px-"
        f"{country.fingerprint[:12]}"
    )
    if country.neighbours is None:
        return key
    digest = hashlib.sha256()
    for part in _file_parts(Path(country.neighbours).expanduser()):
        digest.update(part.suffix.lower().encode() + b"\0" + part.read_bytes() + b"\0")
    return f"{key}-nb{digest.hexdigest()[:8]}"


def _file_parts(path: Path) -> list[Path]:
    """A file, and for a shapefile its sidecars (attributes, index, projection)."""
    if not path.is_file():
        raise SynthesizeError(f"{path} does not exist (country.boundary / country.neighbours)")
    if path.suffix.lower() != ".shp":
        return [path]
    sidecars = [path.with_suffix(ext) for ext in (".shx", ".dbf", ".prj", ".cpg")]
    return [path, *(p for p in sidecars if p.is_file())]
