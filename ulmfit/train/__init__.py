"""Training engine: the fit loop (:class:`Learner`), schedules, discriminative learning rates,
gradual unfreezing and the learning-rate range test."""

from ulmfit.train.jsonl import read_jsonl
from ulmfit.train.learner import Learner
from ulmfit.train.lr_find import LRFindResult, lr_find
from ulmfit.train.optim import discriminative_lrs, ulmfit_lrs
from ulmfit.train.schedules import Schedule, one_cycle, stlr
from ulmfit.train.tasks import ClassifierTask, LMTask, StepOutput, Task

__all__ = [
    "ClassifierTask",
    "LMTask",
    "LRFindResult",
    "Learner",
    "Schedule",
    "StepOutput",
    "Task",
    "discriminative_lrs",
    "lr_find",
    "one_cycle",
    "read_jsonl",
    "stlr",
    "ulmfit_lrs",
]
