"""ulmfit: text classification by transfer learning (ULMFiT), fastai-compatible."""

__version__ = "0.1.0"
