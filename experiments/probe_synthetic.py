"""The shortcut probes of issue 10 on a dataset folder, optionally beside a trained model.

.venv/bin/python experiments/probe_synthetic.py DATA_ROOT [--run RUN_DIR] [--json OUT.json]

Prints the mean-location baseline, the pixel-statistics probe (ridge regression on per-view
band colour statistics), the sky-pixel R² and the zone oracle (see
geoguess/synthetic/probe.py). The split
is the data module's default hash split (train 0.8 / val 0.1 / test 0.1, by uuid): the probe fits
on "train" and is scored on "test", like `python -m geoguess.train`. With --run, the run's
results.json (a training run on the same data.root) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geoguess.synthetic.probe import probe_dataset, zone_oracle_km


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="dataset folder (data.csv + images/)")
    parser.add_argument("--run", help="a training run folder holding results.json")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = probe_dataset(args.root).as_dict()
    print(f"dataset             {args.root}")
    print(f"test locations      {figures['num_test']} (probe fitted on {figures['num_train']})")
    print(f"mean baseline       {figures['baseline_km']:.1f} km")
    print(f"pixel probe         {figures['probe_km']:.1f} km ({figures['ratio']:.2f}x baseline)")
    print(f"sky-pixel R²        {figures['sky_r2']:.3f}")
    figures["zone_oracle_km"] = zone_oracle_km(args.root)
    print(f"zone oracle         {figures['zone_oracle_km']:.1f} km (knows the landscape zone)")
    if args.run:
        results = json.loads((Path(args.run) / "results.json").read_text())
        model = results["test_haversine_km"]
        figures["model_km"] = model
        figures["model_baseline_km"] = results["baseline_test_haversine_km"]
        print(
            f"model               {model:.1f} km ({model / figures['baseline_km']:.2f}x baseline, "
            f"{model / figures['probe_km']:.2f}x probe; run baseline "
            f"{results['baseline_test_haversine_km']:.1f} km)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
