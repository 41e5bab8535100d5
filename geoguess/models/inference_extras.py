"""Fitting the predictor's extras after training, on the best weights, before the test."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from geoguess.models.checkpoint import add_extras


class InferenceExtrasCallback(Callback):
    """At the start of the test (the tested checkpoint's weights loaded): the retrieval index of
    the training split (with `model.refine=knn`) and the radii's calibration on the validation
    split, given to the module's predictor and written into the tested checkpoint, so that
    every later prediction from it answers as the test did."""

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        with trainer.precision_plugin.forward_context():
            extras = pl_module.predictor.fit_extras(
                datamodule.loader("train"), datamodule.loader("val"), pl_module.features_of
            )
        if trainer.ckpt_path and trainer.is_global_zero:
            add_extras(trainer.ckpt_path, extras.to_checkpoint())
