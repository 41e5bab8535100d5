"""The embedded synthetic dataset: the world (`world`), the renderer (`render`), the generator
(`generator`), its contact sheet (`preview`) and the shortcut probes (`probe`).

`python -m geoguess.data.synthesize` is the command; this package holds no Hydra code.
"""

from geoguess.data.synthetic.generator import generate
from geoguess.data.synthetic.world import GENERATOR_VERSION, SynthesizeError, dataset_key

__all__ = ["GENERATOR_VERSION", "SynthesizeError", "dataset_key", "generate"]
