"""Sweeps at scale: Hydra callbacks for parallel jobs and Optuna studies, and the sweep report.

See docs/sweeps.md. Nothing here imports torch at module level: the callbacks are instantiated
by every Hydra command.
"""
