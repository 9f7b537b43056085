"""The ``ulmfit`` command. Imports stay inside the commands so that ``--help`` and a cached
``prepare`` never wait for spaCy or PyTorch to load; every option that is a setting of the
library is made from its field in :mod:`ulmfit.config` (:mod:`ulmfit.cli.fields`).

One module per group of commands: :mod:`.prepare` (prepare, tokenize), :mod:`.lm` (lm-eval,
pretrain, finetune-lm), :mod:`.classifier` (baseline, fit, evaluate), :mod:`.use` (predict,
explain, serve); :mod:`.common` holds the options they share."""

from __future__ import annotations

import argparse
import os
import sys

from ulmfit import options
from ulmfit.cli.classifier import add_classifier_commands
from ulmfit.cli.lm import add_lm_commands
from ulmfit.cli.prepare import add_prepare_commands
from ulmfit.cli.use import add_use_commands
from ulmfit.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(
        prog="ulmfit",
        description="Text classification by transfer learning (ULMFiT): fastai-compatible text "
        "pipeline, AWD-LSTM language models, classifiers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_prepare_commands(sub)
    add_lm_commands(sub)
    add_classifier_commands(sub)
    add_use_commands(sub)
    return parser


def _quiet_unless_rank0() -> None:
    """Under torchrun only rank 0 reports: the other ranks' stdout goes nowhere (their
    errors still reach stderr)."""
    if os.environ.get("RANK", "0") != "0" and os.environ.get("WORLD_SIZE", "1") != "1":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- for the life of the process


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UserError as e:
        print(f"ulmfit: error: {e}", file=sys.stderr)
        return 2
    _quiet_unless_rank0()
    import signal
    import threading

    def terminated(signum, frame):  # SIGTERM (kill, torchrun, a scheduler) like Ctrl-C:
        raise KeyboardInterrupt  # context managers clean up, worker pools are stopped

    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if on_main else None
    try:
        return args.func(args)
    except UserError as e:
        print(f"ulmfit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ulmfit: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return options.stdout_closed()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
