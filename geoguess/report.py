"""`python -m geoguess.report sweeps=[DIR1,DIR2]`: compare the jobs of sweeps.

Reads every job's `results.json` and `.hydra/overrides.yaml` under the folders, prints the
table and writes `report.md` and `report.png` into the run folder. See docs/sweeps.md.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from geoguess import runs
from geoguess.errors import GeoguessError
from geoguess.sweeps.figure import plot_report
from geoguess.sweeps.markdown import markdown
from geoguess.sweeps.summary import Report, build_report
from geoguess.utils.cli import CONFIG_PATH, user_errors
from geoguess.utils.io import write_text_atomic


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="report")
@user_errors
def main(cfg: DictConfig) -> None:
    out = runs.claim(cfg)
    sweeps = None if OmegaConf.is_missing(cfg, "sweeps") else cfg.sweeps
    report = build_report(sweep_folders(sweeps))
    print(write_report(report, out), end="")
    print(f"wrote {out / 'report.md'} and {out / 'report.png'}")


def sweep_folders(sweeps) -> list[str]:
    """`sweeps=DIR` or `sweeps=[DIR1,DIR2]` as a list of folders."""
    folders = list(sweeps) if isinstance(sweeps, ListConfig | list | tuple) else [sweeps]
    folders = [str(folder) for folder in folders if folder not in (None, "")]
    if not folders:
        raise GeoguessError("give the sweep folders: sweeps=outputs/train-multirun/<time>")
    return folders


def write_report(report: Report, out: str | Path) -> str:
    """`report.md` and `report.png` into `out` (never over existing files); returns the text."""
    out = Path(out)
    text = markdown(report, picture="report.png")
    plot_report(report, out / "report.png")
    write_text_atomic(out / "report.md", text)
    return text


if __name__ == "__main__":
    main()
