"""Where one bf16 language-model training step of ours spends its CPU time (issue 14, item 5).

Our Learner (LMTask: cross-entropy + AR/TAR, clipping 0.1, fused AdamW) on our LanguageModel
(vocab 30,008, 400/1152/3) at ``TrainConfig(amp="bf16")``, bs 64, bptt 70, 2 threads, its
batches from our ``LMLoader`` over wiki30k ids of Wikipedia text (bench/lm_train.py's). After
``--warm`` steps, ``torch.profiler`` (CPU) records ``--steps`` steps; self CPU time is grouped:

- forward: by module, with ``record_function`` scopes the script puts around the embedding
  dropout, each LSTM layer (weight drop included), the RNN dropouts and the decoder (module
  hooks: nothing in the library changes); the loss ops by name;
- backward: each ``autograd::engine::evaluate_function`` goes to the scope of the forward op
  that made its node (the same ``sequence_nr``: the last forward op holding it);
- optimizer: PyTorch's ``Optimizer.step`` / ``Optimizer.zero_grad`` scopes; data: a scope
  around each batch taken from the loader; gradient clipping: the norm ops outside any scope;
  casts outside any scope (``.float()`` of the bf16 logits for the fp32 loss, and its backward)
  count with the loss; the rest is "other" (AR/TAR, the Learner's bookkeeping).

    .venv/bin/python bench/profile_step.py      # appends a section to bench/RESULTS.md
    .venv/bin/python bench/profile_step.py --steps 1 --warm 1 --no-write   # smoke run
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py, which would shadow the standard library's tokenize module for
# anything run from this folder: move the folder to the end of the import path.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE] + [_HERE]

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from benchlib import append_results, bench_module, cpu_description, utc_now, versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GROUP = {  # part -> the group
    "LSTM layers": "LSTM layers",
    "decoder + softmax/cross-entropy": "decoder + softmax/CE",
    "casts outside modules (logits to fp32 for the loss)": "decoder + softmax/CE",
    "optimizer (AdamW step, zero_grad)": "optimizer",
    "embedding + dropouts": "data/other",
    "gradient clipping": "data/other",
    "data (LMLoader)": "data/other",
    "other": "data/other",
}
LOSS_OPS = ("aten::cross_entropy_loss", "aten::log_softmax", "aten::nll_loss")
CAST_OPS = ("aten::to", "aten::_to_copy", "aten::copy_")
CLIP_OPS = (
    "aten::_foreach_norm",
    "aten::linalg_vector_norm",
    "aten::norm",
    "aten::stack",
    "aten::_foreach_mul_",
    "aten::clamp",
    "aten::clamp_max",
)


def _scope(module, name: str) -> None:
    """A ``record_function(name)`` range around every forward call of ``module``."""
    from torch.autograd.profiler import record_function

    open_ranges = []
    module.register_forward_pre_hook(
        lambda *_: open_ranges.append(record_function(name).__enter__())
    )
    module.register_forward_hook(lambda *_: open_ranges.pop().__exit__(None, None, None))


def _scoped_model():
    import torch

    from ulmfit.config import AWDLSTMConfig
    from ulmfit.models.awd_lstm import LanguageModel

    torch.manual_seed(0)
    model = LanguageModel(30008, AWDLSTMConfig())
    enc = model.encoder
    for i, rnn in enumerate(enc.rnns):
        _scope(rnn, f"scope: LSTM layers #{i}")
    for m in (enc.encoder_dp, enc.input_dp, *enc.hidden_dps):
        _scope(m, "scope: embedding + dropouts")
    _scope(model.decoder, "scope: decoder + softmax/cross-entropy")
    bench_module("lm_train")._watch_dtypes(model)
    return model


class _ProfiledLoader:
    """The LMLoader's batches, each taken inside a "data" scope; the profiler runs from the
    request of batch ``warm`` to that of batch ``warm + steps`` (CPU: no read-ahead)."""

    def __init__(self, loader, warm: int, steps: int, prof):
        self.loader, self.warm, self.steps, self.prof = loader, warm, steps, prof
        self.wall = None

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        from torch.autograd.profiler import record_function

        it = iter(self.loader)
        for k in range(len(self.loader)):
            if k == self.warm:
                self.prof.start()
                t0 = time.perf_counter()
            if k == self.warm + self.steps:
                self.prof.stop()
                self.wall = time.perf_counter() - t0
            with record_function("scope: data (LMLoader)"):
                b = next(it)
            yield b
        if self.wall is None:  # fewer batches than asked for: the window ends with them
            self.prof.stop()
            self.wall = time.perf_counter() - t0


def profile(a):
    """Run the profiled steps; the profiler's events and the wall seconds of the window."""
    import numpy as np
    import torch

    from ulmfit.config import TrainConfig
    from ulmfit.loaders import LMLoader
    from ulmfit.train import Learner, LMTask

    torch.set_num_threads(a.threads)
    n = a.warm + a.steps + 1
    ids = np.asarray(bench_module("lm_train")._ids(a.bs * (a.bptt * (n + 1) + 1)), dtype=np.int64)
    train_ids, valid_ids = ids[: a.bs * (a.bptt * n + 1)], ids[-(a.bs * (a.bptt + 1)) :]
    loader = LMLoader(train_ids, np.array([0, len(train_ids)]), a.bs, a.bptt, shuffle=False)
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    train = _ProfiledLoader(loader, a.warm, a.steps, prof)
    valid = LMLoader(valid_ids, np.array([0, len(valid_ids)]), a.bs, a.bptt, shuffle=False)
    cfg = TrainConfig(progress=False, verbose=False, plot=False, device="cpu", amp="bf16")
    with tempfile.TemporaryDirectory() as out:
        learn = Learner(_scoped_model(), train, valid, LMTask(), out_dir=out, config=cfg)
        learn.fit_one_cycle(1, 1e-3)
    fused = learn.opt.defaults.get("fused")
    return prof.events(), train.wall, f"{type(learn.opt).__name__} (fused={fused})"


def _chain(e) -> list[str]:
    """Names from the outermost range down to ``e``."""
    out = []
    while e is not None:
        out.append(e.name)
        e = e.cpu_parent
    return out[::-1]


def _forward_part(chain: list[str]) -> str:
    for name in chain:
        if name.startswith("scope: "):
            return name.removeprefix("scope: ").split(" #")[0]
        if name.startswith("Optimizer."):
            return "optimizer (AdamW step, zero_grad)"
        if name in LOSS_OPS:
            return "decoder + softmax/cross-entropy"
        if name in CLIP_OPS:
            return "gradient clipping"
    if chain[0] in CAST_OPS:
        return "casts outside modules (logits to fp32 for the loss)"
    return "other"


def attribute(events) -> tuple[Counter, Counter, Counter]:
    """Self CPU microseconds per (part, forward/backward/-) and per (op, part); calls per
    (op, part)."""
    chains = {id(e): _chain(e) for e in events}
    made_by = {}  # sequence_nr -> part of the last forward op holding it
    for e in sorted(events, key=lambda e: e.time_range.start):
        c = chains[id(e)]
        if e.sequence_nr >= 0 and not c[0].startswith("autograd::engine"):
            made_by[e.sequence_nr] = _forward_part(c)
    parts, ops, calls = Counter(), Counter(), Counter()
    for e in events:
        c = chains[id(e)]
        if c[0].startswith("autograd::engine::evaluate_function"):
            root = e
            while root.cpu_parent is not None:
                root = root.cpu_parent
            part, phase = made_by.get(root.sequence_nr, "other"), "backward"
        else:
            part = _forward_part(c)
            phase = "-" if part.startswith(("optimizer", "data", "gradient")) else "forward"
        parts[(part, phase)] += e.self_cpu_time_total
        ops[(e.name, part)] += e.self_cpu_time_total
        calls[(e.name, part)] += 1
    return parts, ops, calls


def tables(parts: Counter, ops: Counter, calls: Counter, steps: int, top: int) -> list[str]:
    total = sum(parts.values())
    ms = 1e-3 / steps
    out = ["| group | part | phase | self CPU ms per step | share |", "|---|---|---|--:|--:|"]
    for (part, phase), us in sorted(
        parts.items(), key=lambda kv: (list(GROUP).index(kv[0][0]), kv[0][1])
    ):
        out.append(
            f"| {GROUP[part]} | {part} | {phase} | {us * ms:,.1f} | {100 * us / total:.1f}% |"
        )
    out += ["", "| group | self CPU ms per step | share |", "|---|--:|--:|"]
    groups = Counter()
    for (part, _), us in parts.items():
        groups[GROUP[part]] += us
    out += [f"| {g} | {us * ms:,.1f} | {100 * us / total:.1f}% |" for g, us in groups.most_common()]
    out += [
        "",
        f"| top {top} ops (self CPU) | part | ms per step | share | calls per step |",
        "|---|---|--:|--:|--:|",
    ]
    for (name, part), us in ops.most_common(top):
        out.append(
            f"| `{name}` | {part} | {us * ms:,.1f} | {100 * us / total:.1f}% "
            f"| {calls[(name, part)] / steps:g} |"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--bptt", type=int, default=70)
    p.add_argument("--warm", type=int, default=3, help="unprofiled steps first")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (their mean reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=15, help="ops listed")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    a = p.parse_args()
    events, wall, opt = profile(a)
    parts, ops, calls = attribute(events)
    ran = "+".join(sorted(bench_module("lm_train").SEEN))
    total_ms = sum(parts.values()) / 1e3 / a.steps
    section = "\n".join(
        [
            f"\n## One bf16 LM training step of ours, profiled, {a.threads} CPU threads "
            f"({utc_now()})\n",
            f"Machine: {cpu_description()}; {versions()}.",
            "Command: `"
            + " ".join([".venv/bin/python bench/profile_step.py", *sys.argv[1:]])
            + "`",
            f"Our Learner + LMTask on our LanguageModel (30,008 / 400 / 1152 / 3), TrainConfig(amp="
            f'"bf16"), ran in {ran or "?"}; optimizer {opt}; bs {a.bs}, bptt {a.bptt}; {a.warm} '
            f"warm-up step(s), then {a.steps} profiled: {total_ms:,.0f} ms self CPU per step, "
            f"{1e3 * wall / a.steps:,.0f} ms wall per step under the profiler "
            f"({a.bs * a.bptt * a.steps / wall:,.0f} tokens/s). How the time is grouped: the "
            "docstring of bench/profile_step.py.\n",
            *tables(parts, ops, calls, a.steps, a.top),
            "",
            "Largest parts: "
            + "; ".join(
                f"{part} {phase} {100 * us / sum(parts.values()):.0f}%"
                for (part, phase), us in parts.most_common(3)
            )
            + ".",
            "",
        ]
    )
    print(section)
    if not a.no_write:
        append_results(section[1:], a.results)


if __name__ == "__main__":
    main()
