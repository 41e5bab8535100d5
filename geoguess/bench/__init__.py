"""`python -m geoguess.bench` (`make bench`): speed and memory of the data and training paths.

One module per section (`cache`, `loader`, `stats`, `cold`, `train_step`, `feature_cache`,
`metric`), each with `run(cfg: BenchConfig) -> dict`; `sections.SECTIONS` names them and
`sections.run_benchmarks` runs the ones asked for into the nested result written to bench.json
(`{"loader": {"224": {...}}, ...}`). Rates are medians of `repeats` runs; ratios compare two
rates measured in the same run, because the machines are shared and absolute figures are noisy.
Peak memory is that of a subprocess doing only the measured work (`timing.in_subprocess`).

This file imports nothing: those subprocesses import the package, and their memory figures
must count only the work. See docs/performance.md.
"""
