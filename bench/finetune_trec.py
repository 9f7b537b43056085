"""Fine-tune wiki30k_fwd on TREC-6 questions (CPU): perplexity before and after.

Runs the user-facing commands and records them: `ulmfit lm-eval` of the pretrained model on
the TREC-6 test questions, `ulmfit finetune-lm` on the training questions (its own held-out
10% gives before/after figures over the target vocabulary), and `ulmfit lm-eval` of the result
on the test questions. Appends a section to bench/RESULTS.md.

    .venv/bin/python bench/finetune_trec.py [--epochs 2] [--no-write]
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py (named by the issue), which would shadow the standard library's
# tokenize module: this folder goes to the end of the import path (benchlib is found there).
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE] + [_HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

from benchlib import cpu_model, git_commit  # noqa: E402
from benchlib import run_ulmfit as run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ULMFIT = str(Path(sys.executable).parent / "ulmfit")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    model = SHARED / "models" / "wiki30k_fwd"
    pth, itos = str(model / "lstm_fwd.pth"), str(model / "itos.pkl")
    train, test = (
        str(SHARED / "data" / "trec6" / "train.csv"),
        str(SHARED / "data" / "trec6" / "test.csv"),
    )
    work = Path(tempfile.mkdtemp(prefix="ulmfit-ft-trec-"))
    out_dir = str(work / "trec_lm")
    try:
        before, t_before, c_before = run(["lm-eval", pth, test, "--vocab", itos])
        ft, t_ft, c_ft = run(
            [
                "finetune-lm",
                train,
                "--pretrained",
                pth,
                "--vocab",
                itos,
                "--out",
                out_dir,
                "--epochs",
                str(a.epochs),
            ]
        )
        after, t_after, c_after = run(["lm-eval", out_dir, test])
    finally:
        keep = os.environ.get("KEEP")
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    import torch

    commit, cpu = git_commit(), cpu_model()
    fb, fa = ft.get("before", {}), ft.get("after", {})
    section = f"""
## Fine-tuning wiki30k_fwd on TREC-6 questions, CPU ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)

Machine: {cpu}, {os.cpu_count()} cores; python {platform.python_version()}; torch {torch.__version__}; ulmfit commit {commit}.
Command: `{" ".join([".venv/bin/python bench/finetune_trec.py", *sys.argv[1:]])}`, which runs:

1. `{c_before} --json` ({t_before:.0f} s)
2. `{c_ft.replace(str(work), "TMP")} --json` ({t_ft:.0f} s)
3. `{c_after.replace(str(work), "TMP")} --json` ({t_after:.0f} s)

| measured on | vocabulary | model | loss | perplexity | next-token accuracy | tokens |
|---|---|---|--:|--:|--:|--:|
| TREC-6 test (500 questions) | wiki30k (30,008) | pretrained wiki30k_fwd | {before["loss"]:.4f} | {before["perplexity"]:.1f} | {before["accuracy"]:.2%} | {before["tokens"]:,} |
| held-out 10% of TREC-6 train | TREC-6 train ({ft["vocab_remap"]["target_size"]:,}) | pretrained, remapped | {fb.get("loss", float("nan")):.4f} | {fb.get("perplexity", float("nan")):.1f} | {fb.get("accuracy", float("nan")):.2%} | {fb.get("tokens", 0):,} |
| held-out 10% of TREC-6 train | TREC-6 train ({ft["vocab_remap"]["target_size"]:,}) | fine-tuned, {a.epochs} epochs | {fa.get("loss", float("nan")):.4f} | {fa.get("perplexity", float("nan")):.1f} | {fa.get("accuracy", float("nan")):.2%} | {fa.get("tokens", 0):,} |
| TREC-6 test (500 questions) | TREC-6 train ({ft["vocab_remap"]["target_size"]:,}) | fine-tuned | {after["loss"]:.4f} | {after["perplexity"]:.1f} | {after["accuracy"]:.2%} | {after["tokens"]:,} |

Perplexities over different vocabularies are not comparable with each other (the TREC-6 vocabulary is
small and maps more tokens to xxunk: unknown rate {after.get("unk_rate", float("nan")):.1%} on the test questions after, against
{before.get("unk_rate", float("nan")):.1%} with wiki30k); the before/after pair on the held-out split uses one vocabulary and is the
like-for-like comparison. Coverage of the target vocabulary by the pretrained one: {ft["vocab_remap"]["summary"]}.
"""
    print(section)
    print(json.dumps({"before": before, "finetune": ft, "after": after}), file=sys.stderr)
    if not a.no_write:
        with open(REPO / "bench" / "RESULTS.md", "a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
