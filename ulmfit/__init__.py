"""ulmfit: text classification by transfer learning (ULMFiT), fastai-compatible."""

from ulmfit.version import __version__

__all__ = ["__version__", "load"]


def load(path, *, device=None, bs=64):
    """A trained classifier (a run folder of ``ulmfit fit`` or its model directory), ready to
    ``.predict(texts)``: see :class:`ulmfit.predict.Predictor`. Imported here lazily, so that
    ``import ulmfit`` stays light."""
    from ulmfit.predict import Predictor

    return Predictor.load(path, device=device, bs=bs)
