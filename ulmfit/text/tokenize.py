"""fastai-compatible tokenization: rules, then spaCy's English tokenizer, then ``replace_space``.

spaCy splits a text at whitespace first and tokenizes each whitespace-separated piece on its
own (its own cache is keyed by the piece). We do that split in Python and memoise the token
ids of every distinct piece, so spaCy runs once per distinct piece instead of once per
document, and the pieces a batch has not seen yet go through spaCy together in one call. No
spaCy ``Doc`` is built per text, which is where most of fastai's tokenization time goes.
``tests/test_tokenize.py`` checks the result against tokens produced by fastai 2.8 itself.

The one way a piece's tokens depend on its neighbours: spaCy applies its special cases (such
as ``''``, made of ``'`` + ``'``) to the whole token sequence, and a special case that
straddles the whitespace between two pieces can change how spaCy resolves overlapping
matches. Where the border tokens of neighbouring pieces could form such a pair, that stretch
of pieces goes to spaCy in one call (see ``Tokenizer._window``), which gives exactly what spaCy
gives for the whole text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import chain

import numpy as np

from ulmfit.text.rules import (
    BOS,
    DEFAULT_RULES,
    SPECIAL_TOKENS,
    Rule,
    apply_rules,
    text_wide_rules,
    word_rules,
)

# Maximal runs of whitespace / non-whitespace, the units spaCy's tokenizer works on.
# Python's ``\s`` and ``str.isspace`` (which spaCy uses) agree on every character.
_RUNS = re.compile(r"\S+|\s+")
# Texts where splitting on single spaces would not give spaCy's pieces: leading or trailing
# whitespace, or whitespace followed by a space (spaCy keeps "\n " as one token).
_NEEDS_RUNS = re.compile(r"^\s|\s$|\s ")
# Plain words with common punctuation around them, whose spaCy tokens are just these parts
# unless a special case applies (checked against spaCy on every distinct piece of IMDb in
# tests/test_tokenize.py): tokenizing them in Python saves spaCy's cost per call.
_SIMPLE = re.compile(
    r'((?:xxmaj |xxup )?)([("]?)([a-z]+(?:-[a-z]+)*)([,.)?!;:"]?|\),|\)\.|",|"\.|\."|,"|\?"|!")'
)
_OTHER_WS = re.compile(r"[^\S ]")
# Separates pieces tokenized together in one spaCy call; no special case contains it, so
# nothing can match across it.
_SEP = " xxpiecesep "


def spacy_tokenizer(lang: str = "en", special_tokens: list[str] = SPECIAL_TOKENS):
    """A blank spaCy pipeline's tokenizer with fastai's special tokens kept whole (no model download)."""
    import spacy
    from spacy.symbols import ORTH

    nlp = spacy.blank(lang)
    for tok in special_tokens:
        nlp.tokenizer.add_special_case(tok, [{ORTH: tok}])
    return nlp.tokenizer


def _bare_tokenizer(tokenizer):
    """The same affix rules without special cases: how spaCy splits before it merges specials."""
    from spacy.tokenizer import Tokenizer as SpacyTokenizer

    return SpacyTokenizer(
        tokenizer.vocab,
        rules={},
        prefix_search=tokenizer.prefix_search,
        suffix_search=tokenizer.suffix_search,
        infix_finditer=tokenizer.infix_finditer,
        token_match=tokenizer.token_match,
        url_match=tokenizer.url_match,
    )


def special_case_pairs(tokenizer) -> set[tuple[str, str]]:
    """Adjacent token pairs inside spaCy's multi-token special cases (e.g. ``("'", "'")``)."""
    bare = _bare_tokenizer(tokenizer)
    pairs: set[tuple[str, str]] = set()
    for key in tokenizer.rules:
        toks = [t.text for t in bare(key)]
        pairs.update(zip(toks, toks[1:]))
    return pairs


_ASCII_WS_SPACE = tuple(c + " " for c in "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f ")


def _needs_runs(text: str) -> bool:
    """``_NEEDS_RUNS.search(text)``, with a quicker answer for ASCII text."""
    if text.isascii():
        return (
            text[0].isspace() or text[-1].isspace() or any(pair in text for pair in _ASCII_WS_SPACE)
        )
    return _NEEDS_RUNS.search(text) is not None


def pieces(text: str) -> list[str]:
    """The whitespace-separated units spaCy tokenizes independently, whitespace runs included.

    A single space after a token is that token's trailing whitespace in spaCy and yields
    nothing; any other whitespace run (minus such a first space) is a token of its own.
    """
    if not text:
        return []
    if not _needs_runs(text):
        return text.split(" ")
    out: list[str] = []
    for run in _RUNS.findall(text):
        if run[0] == " " and out:
            run = run[1:]
            if not run:
                continue
        out.append(run)
    return out


def _tokens_by_piece(tokenizer, batch: list[str]) -> list[list[str]]:
    """Tokenize many pieces in one spaCy call and give each piece its own token texts.

    A piece that ends in whitespace would merge with the separator's space, so it goes alone.
    """
    alone = [k for k, p in enumerate(batch) if p[-1].isspace()]
    if alone:
        joined = [p for p in batch if not p[-1].isspace()]
        out = iter(_tokens_by_piece(tokenizer, joined) if joined else [])
        solo = {k: [t.text for t in tokenizer(batch[k])] for k in alone}
        return [solo[k] if k in solo else next(out) for k in range(len(batch))]
    text = _SEP.join(batch)
    starts, pos = [], 0
    for p in batch:
        starts.append(pos)
        pos += len(p) + len(_SEP)
    out: list[list[str]] = [[] for _ in batch]
    from spacy.attrs import IDX, LENGTH

    # Offsets as one array: building a Python Token object per token costs more than spaCy's
    # own work. A token's text is always the slice of the input it covers.
    spans = tokenizer(text).to_array([IDX, LENGTH]).tolist()
    k = 0
    for idx, length in spans:
        while k + 1 < len(batch) and idx >= starts[k + 1]:
            k += 1
        if idx < starts[k] + len(batch[k]):
            out[k].append(text[idx : idx + length])
    return out


def _spans(borders: list[int]) -> list[tuple[int, int]]:
    """Runs of pieces linked by the given borders (border n joins pieces n-1 and n)."""
    spans: list[tuple[int, int]] = []
    for n in borders:
        if spans and spans[-1][1] == n:
            spans[-1] = (spans[-1][0], n + 1)
        else:
            spans.append((n - 1, n + 1))
    return spans


class Tokenizer:
    """Rules + spaCy + fastai's post rule (spaces in tokens become ``▁``), with a memo per piece.

    Settings only in ``__init__``; learned state ends in ``_``. Tokens get ids in the order
    this tokenizer first meets them (``itos_``); they are local to this object and are mapped
    to a vocabulary later. The memo holds at most ``max_memo`` pieces, so that a stream of
    unique junk cannot grow memory without bound (when full it is cleared; ids stay valid).
    """

    def __init__(
        self,
        rules: list[Rule] | None = None,
        lang: str = "en",
        special_tokens: list[str] | None = None,
        max_memo: int = 1_000_000,
        batch_chars: int = 200_000,
    ) -> None:
        self.rules = DEFAULT_RULES if rules is None else rules
        # With fastai's default rules, the per-word rules are memoised with the tokens.
        self._per_word = list(self.rules) == DEFAULT_RULES
        self.lang = lang
        self.special_tokens = SPECIAL_TOKENS if special_tokens is None else special_tokens
        self.max_memo = max_memo
        self.batch_chars = batch_chars
        self._spacy = None
        self._pairs: set[tuple[str, str]] = set()
        self.itos_: list[str] = []
        self.stoi_: dict[str, int] = {}
        self.memo_: dict[str, tuple[int, ...]] = {}
        # Pieces whose first token could be the second half of a special case, with the
        # tokens their first position may show before spaCy merges special cases.
        self.risky_: dict[str, tuple[tuple[int, ...], frozenset[str]]] = {}
        # Pieces whose last token could start a special case: the possible last tokens.
        self.lasts_: dict[str, frozenset[str]] = {}
        self.windows_: dict[tuple[str, ...], tuple[int, ...]] = {}
        self._sets: dict[frozenset[str], frozenset[str]] = {}
        self.fallbacks_ = 0  # stretches of neighbouring pieces spaCy had to see together
        self._bos = self._ids([BOS])[0]

    # -- spaCy, loaded on first use so that building a Tokenizer costs nothing ------------
    def _load(self) -> None:
        from spacy.symbols import ORTH

        self._spacy = spacy_tokenizer(self.lang, self.special_tokens)
        self._bare = _bare_tokenizer(self._spacy)
        self._pairs = special_case_pairs(self._spacy)
        self._firsts = {a for a, _ in self._pairs}
        self._seconds = {b for _, b in self._pairs}
        # Tokens a special case can produce: only where one sits at a piece's border can the
        # border differ from what the affix rules alone give.
        self._special_orths = {t[ORTH] for v in self._spacy.rules.values() for t in v}

    def _ids(self, toks: Iterable[str]) -> tuple[int, ...]:
        stoi, itos = self.stoi_, self.itos_
        out = []
        for t in toks:
            t = t.replace(" ", "▁")
            i = stoi.get(t)
            if i is None:
                i = stoi[t] = len(itos)
                itos.append(t)
            out.append(i)
        return tuple(out)

    def _learn(self, new: list[str]) -> None:
        """Tokenize unseen pieces.

        A piece such as ``end.\n\nnext`` (IMDb's ``<br />``) holds whitespace runs of its own;
        its parts are learned one by one and joined, since no special case crosses a
        whitespace token, so that such combinations cost no spaCy call.
        """
        if self._spacy is None:
            self._load()
        if len(self.memo_) + len(new) > self.max_memo:
            self.memo_.clear()
            self.risky_.clear()
            self.lasts_.clear()
            self.windows_.clear()
        composite = [p for p in new if _OTHER_WS.search(p) and not p.isspace()]
        if not composite:
            self._learn_atoms(new)
            return
        parts = {p: _RUNS.findall(p) for p in composite}
        atoms = dict.fromkeys(p for p in new if p not in parts)
        for runs in parts.values():
            atoms.update(
                dict.fromkeys(r for r in runs if r not in self.memo_ and r not in self.risky_)
            )
        self._learn_atoms(list(atoms))
        for p, runs in parts.items():
            ids: list[int] = []
            for r in runs:
                entry = self.memo_.get(r)
                ids.extend(entry if entry is not None else self.risky_[r][0])
            first, last = runs[0], runs[-1]
            if last in self.lasts_:
                self.lasts_[p] = self.lasts_[last]
            if first in self.risky_:
                self.risky_[p] = (tuple(ids), self.risky_[first][1])
            else:
                self.memo_[p] = tuple(ids)

    def _learn_atoms(self, new: list[str]) -> None:
        """Tokenize unseen whitespace-free pieces, in batches of about ``batch_chars`` characters."""
        if self._per_word:
            new_text = [word_rules(p) for p in new]
        else:
            new_text = new
        i = 0
        while i < len(new):
            j, size = i, 0
            while j < len(new) and (j == i or size < self.batch_chars):
                size += len(new[j]) + len(_SEP)
                j += 1
            batch = new[i:j]
            texts = new_text[i:j]
            raws, hard = self._tokens(texts)
            need_bare = [
                k
                for k in hard
                if raws[k][0] in self._special_orths or raws[k][-1] in self._special_orths
            ]
            bares = dict(
                zip(need_bare, _tokens_by_piece(self._bare, [texts[k] for k in need_bare]))
            )
            sets = self._sets
            for k, (piece, raw) in enumerate(zip(batch, raws)):
                bare = bares.get(k, raw)
                firsts = frozenset({raw[0], bare[0]} & self._seconds)
                lasts = frozenset({raw[-1], bare[-1]} & self._firsts)
                # the same few sets recur for thousands of pieces: keep one object of each
                firsts = sets.setdefault(firsts, firsts)
                lasts = sets.setdefault(lasts, lasts)
                ids = self._ids(raw)
                if lasts:
                    self.lasts_[piece] = lasts
                if firsts:
                    self.risky_[piece] = (ids, firsts)
                else:
                    self.memo_[piece] = ids
            i = j

    def _tokens(self, texts: list[str]) -> tuple[list[list[str]], list[int]]:
        """spaCy's tokens of each piece (plain words skip spaCy, which is slow per call), and
        which pieces went through spaCy."""
        out: list[list[str] | None] = []
        hard: list[int] = []
        rules = self._spacy.rules
        for k, text in enumerate(texts):
            m = _SIMPLE.fullmatch(text)
            if m is not None:
                mark, pre, core, post = m.groups()
                parts = core.split("-")
                if not (
                    text in rules
                    or core in rules
                    or pre + core in rules
                    or any(core + post[:i] in rules for i in (1, 2))
                    or any(parts[-1] + post[:i] in rules for i in (1, 2))
                    or pre + parts[0] in rules
                    or any(w in rules for w in parts)
                ):
                    toks = [mark[:-1]] if mark else []
                    if pre:
                        toks.append(pre)
                    for i, w in enumerate(parts):
                        toks.extend(("-", w) if i else (w,))
                    toks.extend(post)
                    out.append(toks)
                    continue
            out.append(None)
            hard.append(k)
        if hard:
            for k, toks in zip(hard, _tokens_by_piece(self._spacy, [texts[k] for k in hard])):
                out[k] = toks
        return out, hard  # type: ignore[return-value]

    def _encode_pieces(self, ps: list[str]) -> list[int] | None:
        """Token ids of one text from its pieces; None if a piece is not known yet."""
        head = [self._bos] if self._per_word else []
        found = list(map(self.memo_.get, ps))
        if None not in found:
            return head + list(chain.from_iterable(found))
        risky, lasts_of, pairs = self.risky_, self.lasts_, self._pairs
        # Borders where a special case could straddle two pieces (see the module docstring).
        joined: list[int] = []
        for n, p in enumerate(ps):
            if found[n] is None:
                entry = risky.get(p)
                if entry is None:
                    return None
                found[n] = entry[0]
                lasts = lasts_of.get(ps[n - 1]) if n else None
                if lasts and any((a, b) in pairs for a in lasts for b in entry[1]):
                    joined.append(n)
        if not joined:
            return head + list(chain.from_iterable(found))
        out = head
        n = 0
        for start, stop in _spans(joined):
            out.extend(chain.from_iterable(found[n:start]))
            out.extend(self._window(tuple(ps[start:stop])))
            n = stop
        out.extend(chain.from_iterable(found[n:]))
        return out

    def _window(self, run: tuple[str, ...]) -> tuple[int, ...]:
        """Ids of neighbouring pieces that spaCy must see together.

        Pieces outside the run share no special-case match with it, so spaCy's answer for the
        run alone (the pieces joined by the single spaces between them) is its answer for
        that stretch of the whole text.
        """
        ids = self.windows_.get(run)
        if ids is None:
            self.fallbacks_ += 1
            text = " ".join(word_rules(p) for p in run) if self._per_word else " ".join(run)
            ids = self.windows_[run] = self._ids(t.text for t in self._spacy(text))
        return ids

    # -- public ---------------------------------------------------------------------------
    def clean(self, text: str) -> str:
        """The text after the rules, as spaCy will see it."""
        return apply_rules(text, self.rules)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Local token ids (see ``itos_``) of each text, in order."""
        if self._per_word:
            split = [pieces(text_wide_rules(t)) for t in texts]
        else:
            split = [pieces(apply_rules(t, self.rules)) for t in texts]
        out: list[list[int] | None] = [self._encode_pieces(ps) for ps in split]
        todo = [k for k, ids in enumerate(out) if ids is None]
        if todo:
            seen = self.memo_.keys() | self.risky_.keys()
            new: dict[str, None] = {}
            for k in todo:
                new.update(dict.fromkeys(p for p in split[k] if p not in seen))
            self._learn(list(new))
            for k in todo:
                ids = self._encode_pieces(split[k])
                if ids is None:  # the memo was cleared mid-batch: learn this text alone
                    self._learn([p for p in dict.fromkeys(split[k]) if p not in self.memo_])
                    ids = self._encode_pieces(split[k])
                out[k] = ids
        return out  # type: ignore[return-value]

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids of ``texts`` as one int32 array, plus each text's length (for a flat corpus)."""
        docs = self.encode_batch(texts)
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        flat = np.fromiter((i for d in docs for i in d), dtype=np.int32, count=int(lengths.sum()))
        return flat, lengths

    def tokenize_batch(self, texts: list[str]) -> list[list[str]]:
        """Token strings of each text, identical to fastai's ``tokenize_texts``."""
        itos = self.itos_
        return [[itos[i] for i in ids] for ids in self.encode_batch(texts)]

    def __call__(self, text: str) -> list[str]:
        return self.tokenize_batch([text])[0]
