"""Models: timm backbones over the four views, fusion, heads, the network, the LightningModule
that trains it, unfreezing, checkpoints."""
