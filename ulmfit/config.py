"""Every settings dataclass of the library, with each default written once, here.

Torch-free (the standard library, and ulmfit's own options, errors and text rules), so the command line builds its options, their defaults and the
defaults printed in ``--help`` from these fields without loading PyTorch or spaCy. A field
that is a command-line option carries its help text beside it (``metadata["help"]``); the
CLI appends the field's default to it, and ``metadata["type"]`` is the range-checked type of
:mod:`ulmfit.options` that reads it (``str`` when absent). Where two configs share a default
(bptt, moms, the vocabulary size, the seed) one names the other's field instead of repeating
the number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from ulmfit.errors import UserError
from ulmfit.options import fraction, int_at_least, nonnegative_float, positive_float
from ulmfit.precision import AMP_MODES
from ulmfit.text.rules import SPECIAL_TOKENS  # str rules only

AmpMode = Literal["auto", "bf16", "fp16", "off"]
# which epoch a tracked stage ends on (ulmfit.train.tracker), and what a classifier may watch
KEEP_CHOICES = ("last", "best")
CLASSIFIER_MONITORS = ("valid_loss", "accuracy", "macro_f1")


def setting(default: Any, help: str, type: Callable[[str], Any] | None = None, **argparse) -> Any:
    """A field that is a command-line option: its help, the type that reads and range-checks
    it, and any other argparse setting (``flag``, ``metavar``, ``choices``) beside its default."""
    return field(default=default, metadata={"help": help, "type": type, **argparse})


def like(cls: type, name: str, default: Any = MISSING, **changes: Any) -> Any:
    """The option field ``name`` of ``cls`` again in a subclass, with another default, help or
    type (its place in the field order, and so in every ``asdict``, stays the base's)."""
    base = next(f for f in fields(cls) if f.name == name)
    return field(
        default=base.default if default is MISSING else default,
        metadata={**base.metadata, **changes},
    )


# ----------------------------------------------------------------------------------------
# Text: the vocabulary and ``prepare``
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabConfig:
    """fastai's defaults: at most 60,000 tokens, each seen at least 3 times."""

    max_vocab: int = setting(60000, "vocabulary size cap", int_at_least(len(SPECIAL_TOKENS)))
    min_freq: int = setting(3, "minimum count to enter the vocabulary", int_at_least(1))


@dataclass
class PrepareConfig:
    """Every setting of ``prepare``; the ones that change the output are in the cache keys."""

    workers: int = setting(0, "processes, 0 for all cores", int_at_least(0))
    chunk_docs: int = setting(1000, "documents per worker task", int_at_least(1))
    vocab: VocabConfig = field(default_factory=VocabConfig)
    label_kind: str | None = None  # None = inferred (single / multi / float)
    cache_dir: Path | None = setting(
        None, "cache folder (default: $ULMFIT_CACHE or ~/.cache/ulmfit)", Path
    )
    progress: bool | None = None  # None = only when stderr is a terminal


# ----------------------------------------------------------------------------------------
# Models: the AWD-LSTM architecture
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AWDLSTMConfig:
    """fastai's ``awd_lstm_lm_config``; ``scaled(drop_mult)`` gives the dropouts actually used."""

    emb_sz: int = 400
    n_hid: int = 1152
    n_layers: int = 3
    pad_token: int = 1
    output_p: float = 0.1
    hidden_p: float = 0.15
    input_p: float = 0.25
    embed_p: float = 0.02
    weight_p: float = 0.2
    tie_weights: bool = True
    out_bias: bool = True

    def scaled(self, drop_mult: float) -> AWDLSTMConfig:
        return replace(
            self,
            output_p=self.output_p * drop_mult,
            hidden_p=self.hidden_p * drop_mult,
            input_p=self.input_p * drop_mult,
            embed_p=self.embed_p * drop_mult,
            weight_p=self.weight_p * drop_mult,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def drop_mult_problem(self, drop_mult: float) -> str | None:
        """What is wrong with scaling these dropouts by ``drop_mult``, if anything: every
        probability must stay in [0, 1) (at 1 every unit is dropped and the 1/(1-p)
        rescaling divides by zero)."""
        largest = max(self.output_p, self.hidden_p, self.input_p, self.embed_p, self.weight_p)
        limit = float("inf") if largest <= 0 else 1.0 / largest
        if 0 <= drop_mult < limit:
            return None
        return (
            f"drop_mult must be at least 0 and below {limit:g} (it scales dropout "
            f"probabilities of up to {largest:g}, which must stay below 1), got {drop_mult}"
        )


# fastai's awd_lstm_clas_config: stronger dropouts for the classifier's encoder.
CLASSIFIER_CONFIG = AWDLSTMConfig(
    output_p=0.4, hidden_p=0.3, input_p=0.4, embed_p=0.05, weight_p=0.5
)


# ----------------------------------------------------------------------------------------
# The training engine
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Every default of the training engine, in one place (fastai's ULMFiT values)."""

    # schedule (fastai fit_one_cycle; ULMFiT paper's STLR)
    moms: tuple[float, float, float] = (0.8, 0.7, 0.8)
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5
    cut_frac: float = 0.1
    ratio: float = 32.0
    # optimizer: AdamW, decoupled ("true") weight decay as fastai
    wd: float = 0.01
    beta2: float = 0.99
    eps: float = 1e-5
    # loop
    clip: float | None = 0.1  # max grad norm; 0.1 is fastai's AWD-LSTM LM setting
    seed: int = 42
    amp: AmpMode = setting(
        "auto",
        "mixed precision (auto: bf16 on a CPU with bf16 units or a GPU with bf16, else fp16 on "
        "a GPU and fp32 on a CPU; off: fp32)",
        choices=list(AMP_MODES),
    )
    compile: bool = False  # train through torch.compile(model) (first steps pay compilation)
    device: str | None = None  # None: cuda if available, else cpu
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    verbose: bool = True  # one summary line per epoch on stderr
    plot: bool = True  # rewrite loss.png after every epoch
    smooth_beta: float = 0.98  # running-loss smoothing of the bar and of lr_find


# ----------------------------------------------------------------------------------------
# Language models: pretrain, finetune-lm, --lr-find
# ----------------------------------------------------------------------------------------


@dataclass
class LMTrainConfig:
    """Settings shared by pretraining and fine-tuning (fastai's defaults unless noted)."""

    bs: int = setting(64, "batch size in streams", int_at_least(1))
    bptt: int = setting(70, "tokens per step", int_at_least(1))
    lr: float = setting(2e-3, "peak learning rate of the one-cycle", positive_float)
    epochs: int = setting(10, "epochs", int_at_least(1))
    drop_mult: float = setting(0.3, "scales all of AWD-LSTM's dropouts", nonnegative_float)
    wd: float = setting(TrainConfig.wd, "decoupled weight decay", nonnegative_float)
    moms: tuple[float, float, float] = TrainConfig.moms
    clip: float | None = TrainConfig.clip  # max gradient norm
    alpha: float = 2.0  # activation regularisation (AR)
    beta: float = 1.0  # temporal activation regularisation (TAR)
    seed: int = setting(
        TrainConfig.seed, "seed of the split, shuffles and dropouts", int_at_least(0)
    )
    valid_pct: float = setting(
        0.1, "share of documents held out for validation", fraction(low_open=False)
    )
    # fastai's SaveModelCallback / EarlyStoppingCallback on the held-out loss of the last
    # (unfrozen) stage; the defaults train every epoch and keep the last, as before
    keep: str = setting(
        "last",
        "which epoch's weights the last stage ends on: its last, or the one with the best "
        "held-out loss (--epochs is then a maximum)",
        choices=list(KEEP_CHOICES),
    )
    patience: int | None = setting(
        None,
        "stop the last stage after this many epochs without a better held-out loss "
        "(default: run every epoch)",
        int_at_least(1),
        metavar="EPOCHS",
    )
    max_vocab: int = VocabConfig.max_vocab
    min_freq: int = VocabConfig.min_freq
    workers: int = PrepareConfig.workers  # tokenizer processes (0 = all cores)
    cache_dir: Path | None = None  # None = $ULMFIT_CACHE or ~/.cache/ulmfit
    device: str | None = None  # None = cuda if available
    amp: AmpMode = like(TrainConfig, "amp")
    compile: bool = False  # train through torch.compile (GPU; the first steps compile)
    overwrite: bool = False  # replace an existing model directory at the target
    dry_run: bool = False  # every stage on a handful of rows, a few steps per epoch
    progress: bool | None = None  # None = bars only when stderr is a terminal
    verbose: bool = True  # one line per epoch on stderr


@dataclass
class FinetuneLMConfig(LMTrainConfig):
    """ULMFiT stage 2 as in fastai's IMDb example: ``freeze(); fit_one_cycle(1, 2e-2)``, then
    ``unfreeze(); fit_one_cycle(10, 2e-3)``, moms (0.8, 0.7, 0.8), drop_mult 0.3."""

    epochs: int = like(LMTrainConfig, "epochs", help="epochs after unfreezing")
    # fine-tuning reports held-out perplexity, so it needs held-out documents
    valid_pct: float = like(LMTrainConfig, "valid_pct", type=fraction(low_open=True))
    frozen_epochs: int = setting(1, "epochs training only the last layer group", int_at_least(0))
    frozen_lr: float = setting(2e-2, "peak learning rate while frozen", positive_float)
    # False: fastai's vocabulary, from the target texts only. True: every pretrained token
    # too, so words the target texts never (or rarely) show keep their pretrained rows.
    keep_pretrained_vocab: bool = False
    # the pretrained model's direction; None: its own (a fastai file: "bwd" in its name)
    direction: str | None = None


@dataclass
class PretrainConfig(LMTrainConfig):
    """A language model from scratch. Architecture: fastai's ``awd_lstm_lm_config``. Training
    as fastai's WT103 script (one-cycle, wd 0.1, clip 0.1), with drop_mult 0.3 and peak lr
    5e-3 at bs 64 (the shared wiki30k model used 1e-2 at bs 256 on the same corpus)."""

    lr: float = like(LMTrainConfig, "lr", 5e-3)
    wd: float = like(LMTrainConfig, "wd", 0.1)
    emb_sz: int = setting(AWDLSTMConfig.emb_sz, "embedding size", int_at_least(1))
    n_hid: int = setting(AWDLSTMConfig.n_hid, "LSTM hidden size", int_at_least(1))
    n_layers: int = setting(AWDLSTMConfig.n_layers, "LSTM layers", int_at_least(1))
    backwards: bool = False


@dataclass
class LRFindConfig:
    """``--lr-find``: fastai's range test (rate from ``start_lr`` to ``end_lr`` over ``num_it``
    steps). ``plot``: where the PNG goes (None: ``DIR.lr_find.png`` next to ``--out``).
    ``stage`` (fine-tuning only): ``"frozen"`` tests the first stage (only the last layer group
    trains), ``"unfrozen"`` all groups, both on the remapped pretrained weights."""

    plot: Path | None = None
    stage: str = setting(
        "frozen",
        "--lr-find for the first stage (frozen: only the last layer group trains; pick "
        "--frozen-lr) or with every group trainable (pick --lr)",
        choices=["frozen", "unfrozen"],
    )
    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_it: int = 100


# ----------------------------------------------------------------------------------------
# Classifiers: fit
# ----------------------------------------------------------------------------------------


@dataclass
class ClassifierConfig:
    """fastai's IMDb classifier recipe (``text_classifier_learner``, gradual unfreezing)."""

    lr: float = setting(2e-2, "classifier peak rate of the first stage", positive_float)
    epochs: int = setting(2, "classifier epochs after unfreezing", int_at_least(1))
    bs: int = setting(64, "classifier batch size", int_at_least(1))
    drop_mult: float = setting(0.5, "classifier dropout scale", nonnegative_float)
    wd: float = TrainConfig.wd
    moms: tuple[float, float, float] = TrainConfig.moms
    # AR on the encoder outputs of real tokens (fastai's TextLearner)
    alpha: float = LMTrainConfig.alpha
    beta: float = LMTrainConfig.beta  # TAR on them
    bptt: int = 72
    max_len: int = 72 * 20
    valid_pct: float = setting(
        LMTrainConfig.valid_pct, "share of training rows held out", fraction(low_open=True)
    )
    # the last stage (every layer unfrozen), as LMTrainConfig's keep / patience
    keep: str = like(
        LMTrainConfig,
        "keep",
        help="which epoch's weights the classifier's last stage (every layer unfrozen) ends "
        "on: its last, or the one with the best --monitor (--epochs is then a maximum)",
    )
    monitor: str = setting(
        "valid_loss",
        "validation metric that --keep best and --patience watch (accuracy: single-label; "
        "macro_f1: single- or multi-label, at threshold 0.5 for multi-label)",
        choices=list(CLASSIFIER_MONITORS),
    )
    patience: int | None = like(
        LMTrainConfig,
        "patience",
        help="stop the classifier's last stage after this many epochs without a better "
        "--monitor (default: run every epoch)",
    )
    seed: int = setting(TrainConfig.seed, "seed", int_at_least(0))
    workers: int = setting(
        PrepareConfig.workers, "tokenizer processes, 0 for all cores", int_at_least(0)
    )
    cache_dir: Path | None = setting(None, "cache folder", Path)
    device: str | None = None
    amp: AmpMode = like(TrainConfig, "amp")
    compile: bool = False  # train through torch.compile (GPU; the first steps compile)
    label_kind: str | None = None  # "single" | "multi" | "float"; None: inferred
    dry_run: bool = False
    progress: bool | None = None
    verbose: bool = True


def engine_config(
    cfg: LMTrainConfig | ClassifierConfig, *, clip: float | None, device: str
) -> TrainConfig:
    """The training engine's settings a stage takes from its own config (the optimizer's moms
    and wd, the seed, precision, compile, what it prints); clipping and the resolved device
    are the caller's, as the language model clips and the classifier, like fastai's, does not."""
    return TrainConfig(
        moms=tuple(cfg.moms),
        wd=cfg.wd,
        clip=clip,
        seed=cfg.seed,
        device=device,
        amp=cfg.amp,
        compile=cfg.compile,
        progress=cfg.progress,
        verbose=cfg.verbose,
    )


# ----------------------------------------------------------------------------------------
# Serving: what one request may ask, and where the server listens
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server, and how much work may wait."""

    max_texts: int = setting(64, "texts per /predict request", int_at_least(1))
    # about 4,000 words
    max_chars: int = setting(20_000, "characters per text", int_at_least(1))
    # characters of an /explain text (and at most max_chars): an explain is one model call,
    # which cannot be sliced; one of 20,000 characters costs about a turn (below)
    max_explain_chars: int = setting(20_000, "characters per /explain text", int_at_least(1))
    max_body_bytes: int = setting(2_000_000, "request body size", int_at_least(1))
    max_batch_texts: int = 256  # texts one model call gathers from waiting requests
    # characters one model call gathers (but at least one text): a turn, the longest a short
    # request waits for each request ahead of it. 8 texts of max_chars: on a CPU a call of 8
    # long texts costs little more than one of 1 (LSTM steps are sequential), so slicing
    # finer would cost a long request most of its throughput
    max_batch_chars: int = 160_000
    max_queue: int = 1_000  # requests waiting for the model before 503
    read_timeout_s: int = setting(
        30,
        "time for a client to send a request's head, then its body",
        int_at_least(1),
        flag="--read-timeout",
        metavar="SECONDS",
    )

    def check(self) -> None:
        bad = [f"{k} must be 1 or more" for k, v in asdict(self).items() if v < 1]
        if bad:
            raise UserError("; ".join(bad))


@dataclass(frozen=True)
class ServeSettings:
    """Where ``ulmfit serve`` listens and how it logs (the arguments of ``serve.run``)."""

    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8000, "port", int)
    log_level: str = setting(
        "info",
        "uvicorn's log level; info: one line per request",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    threads: int | None = setting(
        None, "torch threads for the model (default: every core)", int_at_least(1)
    )
