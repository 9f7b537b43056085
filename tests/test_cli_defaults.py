"""The command line's defaults are the configs' (ulmfit/config.py): every default ``--help``
shows is the value the command really uses, every option that is a config setting shows it,
and an option not given leaves the config's default in place."""

import argparse
import re
from dataclasses import MISSING, fields

import pytest

from ulmfit.cli import build_parser
from ulmfit.config import (
    ClassifierConfig,
    FinetuneLMConfig,
    LRFindConfig,
    PrepareConfig,
    PretrainConfig,
    ServeLimits,
    ServeSettings,
    VocabConfig,
)

# The configs behind each command's options, first match wins; a prefix names the setting under
# another flag (fit's --lm-epochs is FinetuneLMConfig.epochs, --lr-find-stage LRFindConfig.stage).
CONFIGS = {
    "prepare": [("", PrepareConfig), ("", VocabConfig)],
    "tokenize": [("", PrepareConfig)],
    "lm-eval": [("", PrepareConfig)],
    "pretrain": [("", PretrainConfig), ("lr_find_", LRFindConfig), ("", PrepareConfig)],
    "finetune-lm": [("", FinetuneLMConfig), ("lr_find_", LRFindConfig), ("", PrepareConfig)],
    "baseline": [],
    "fit": [("", ClassifierConfig), ("lm_", FinetuneLMConfig)],
    "evaluate": [],
    "predict": [],
    "explain": [],
    "serve": [("", ServeLimits), ("", ServeSettings)],
}
_SHOWN = re.compile(r"\(default ([^)]*)\)")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _config_default(command: str, dest: str):
    """``(True, default)`` of the config field behind option ``dest``, or ``(False, None)``."""
    for prefix, cls in CONFIGS[command]:
        name = dest.removeprefix(prefix) if dest.startswith(prefix) else None
        for f in fields(cls):
            if f.name == name and f.default is not MISSING:  # not a default_factory field
                return True, f.default
    return False, None


def _same(text: str, value) -> bool:
    """Does ``text`` as --help prints it (``60,000``, ``0.005``, ``info``) name ``value``?"""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(text.replace(",", "")) == float(value)
        except ValueError:
            return False
    return text == str(value)


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_every_command_is_covered():
    assert set(_commands()) == set(CONFIGS)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_help_shows_the_config_default_of_every_option(command):
    for action in _options(_commands()[command]):
        flag, help_text = action.option_strings[0], action.help or ""
        shown = _SHOWN.findall(help_text)
        assert len(shown) <= 1, (command, flag, help_text)
        backed, default = _config_default(command, action.dest)
        if backed and action.default is not None and not isinstance(action.default, bool):
            assert action.default == default, (command, flag, action.default, default)
        if not backed:  # an option of its own: what it shows is argparse's default
            default = action.default
        if default is None or isinstance(default, bool):
            assert not shown, f"{command} {flag}: shows a default ({shown}) it does not have"
            continue
        assert shown, f"{command} {flag}: --help does not show its default {default!r}"
        assert _same(shown[0], default), (command, flag, shown[0], default)


@pytest.mark.parametrize(
    "command,cls",
    [
        ("pretrain", PretrainConfig),
        ("finetune-lm", FinetuneLMConfig),
        ("fit", ClassifierConfig),
        ("serve", ServeLimits),
    ],
)
def test_every_setting_of_a_config_is_an_option(command, cls):
    """A field declared with ``setting`` is an option of its commands, with no CLI code."""
    dests = {a.dest for a in _options(_commands()[command])}
    settings = {f.name for f in fields(cls) if "help" in f.metadata}
    assert settings and settings <= dests, settings - dests


def test_options_not_given_keep_the_config_defaults():
    from ulmfit.cli.classifier import _fit_configs
    from ulmfit.cli.lm import _lm_config
    from ulmfit.tasks.run import lm_config_for

    p = build_parser()
    args = p.parse_args(["pretrain", "c.txt", "--out", "o"])
    assert _lm_config(args, PretrainConfig) == PretrainConfig()
    args = p.parse_args(["finetune-lm", "a.csv", "--pretrained", "m", "--out", "o"])
    assert _lm_config(args, FinetuneLMConfig) == FinetuneLMConfig()
    cfg, lm_cfg = _fit_configs(p.parse_args(["fit", "--train", "t.csv", "--out", "r"]))
    assert cfg == ClassifierConfig()
    assert lm_cfg == lm_config_for(ClassifierConfig()) == FinetuneLMConfig()


def test_options_given_reach_the_configs():
    from ulmfit.cli.classifier import _fit_configs
    from ulmfit.cli.lm import _lm_config

    p = build_parser()
    args = p.parse_args(["pretrain", "c.txt", "--out", "o", "--bptt", "33", "--n-hid", "8"])
    assert (_lm_config(args, PretrainConfig).bptt, _lm_config(args, PretrainConfig).n_hid) == (
        33,
        8,
    )
    argv = ["fit", "--train", "t.csv", "--out", "r", "--lm-lr", "0.5", "--valid-pct", "0.2"]
    cfg, lm_cfg = _fit_configs(p.parse_args([*argv, "--lm-epochs", "3", "--workers", "2"]))
    assert (cfg.valid_pct, cfg.workers, lm_cfg.lr, lm_cfg.epochs) == (0.2, 2, 0.5, 3)
    assert lm_cfg.workers == 2  # the classifier run's tokenizer processes, as before
