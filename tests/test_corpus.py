"""ulmfit.corpus: the document plumbing between text and loaders, usable without torch."""

import subprocess
import sys

import numpy as np
from conftest import REPO

from ulmfit.corpus import concat_docs, gather_docs, reverse_docs


def test_the_corpus_module_loads_neither_torch_nor_spacy():
    """What prepares or reads data (a cached ``prepare``, the CLI before a command runs)
    imports this module; it must not pull in the training stack or the tokenizer."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from ulmfit import corpus\n"
        "ids, off = np.arange(10), np.array([0, 3, 3, 10])\n"
        "g, o = corpus.gather_docs(ids, off, np.array([2, 0]))\n"
        "corpus.reverse_docs(g, o)\n"
        "corpus.split_docs(3, 0.34, 0)\n"
        "corpus.vocab_map(['a', 'b'], ['b'])\n"
        "corpus.concat_docs([g, g])\n"
        "print(sorted(m for m in ('torch', 'spacy', 'thinc') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_concat_docs_is_the_inverse_of_cutting_at_the_offsets():
    docs = [np.array([5, 6, 7]), np.array([], dtype=np.int64), np.array([8])]
    ids, offsets = concat_docs(docs)
    assert ids.tolist() == [5, 6, 7, 8] and offsets.tolist() == [0, 3, 3, 4]
    again, off = gather_docs(ids, offsets, np.arange(3))
    assert again.tolist() == ids.tolist() and off.tolist() == offsets.tolist()
    assert reverse_docs(ids, offsets).tolist() == [7, 6, 5, 8]
    empty_ids, empty_off = concat_docs([])
    assert len(empty_ids) == 0 and empty_off.tolist() == [0]
