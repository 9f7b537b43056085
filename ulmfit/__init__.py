"""ulmfit: text classification by transfer learning (ULMFiT), fastai-compatible."""

__version__ = "0.1.0"


def load(path, *, device=None, bs=64):
    """A trained classifier (a run folder of ``ulmfit fit`` or its model directory), ready to
    ``.predict(texts)``: see :class:`ulmfit.predict.Predictor`. Imported here lazily, so that
    ``import ulmfit`` stays light."""
    from ulmfit.predict import Predictor

    return Predictor.load(path, device=device, bs=bs)
