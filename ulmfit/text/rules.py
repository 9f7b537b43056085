"""fastai 2.8's default text rules, each a pure ``str -> str`` function.

The rules run before spaCy splits a text, in the order of ``DEFAULT_RULES``. They are kept
byte-for-byte equivalent to fastai's so that our tokens, and therefore fastai's pretrained
vocabularies and weights, line up. Replace the list to change the cleaning; the rule names
are part of the cache key, so a different list never reuses stale tokens.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

UNK, PAD, BOS, EOS, FLD = "xxunk", "xxpad", "xxbos", "xxeos", "xxfld"
TK_REP, TK_WREP, TK_UP, TK_MAJ = "xxrep", "xxwrep", "xxup", "xxmaj"
SPECIAL_TOKENS: list[str] = [UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ]

Rule = Callable[[str], str]

_HTML_FIXES = (
    ("#39;", "'"),
    ("amp;", "&"),
    ("#146;", "'"),
    ("nbsp;", " "),
    ("#36;", "$"),
    ("\\n", "\n"),
    ("quot;", "'"),
    ("<br />", "\n"),
    ('\\"', '"'),
    ("<unk>", UNK),
    (" @.@ ", "."),
    (" @-@ ", "-"),
    ("...", " …"),
)


def fix_html(text: str) -> str:
    """Undo the HTML escapes and markup scraped review sites leave behind (IMDb's ``<br />``)."""
    for old, new in _HTML_FIXES:
        text = text.replace(old, new)
    return html.unescape(text)


_RE_REP = re.compile(r"(\S)(\1{2,})")


def _rep(m: re.Match) -> str:
    c, cc = m.groups()
    return f" {TK_REP} {len(cc) + 1} {c} "


def replace_rep(text: str) -> str:
    """``cccc`` -> ``xxrep 4 c``: keeps emphasis as a signal without a vocabulary entry per length."""
    return _RE_REP.sub(_rep, text)


_RE_WREP = re.compile(r"(?:\s|^)(\w+)\s+((?:\1\s+)+)\1(\s|\W|$)")


def _wrep(m: re.Match) -> str:
    c, cc, e = m.groups()
    return f" {TK_WREP} {len(cc.split()) + 2} {c} {e}"


def replace_wrep(text: str) -> str:
    """``w w w w`` -> ``xxwrep 4 w``, the word-level twin of :func:`replace_rep`."""
    return _RE_WREP.sub(_wrep, text)


_RE_SPEC = re.compile(r"([/#\\])")


def spec_add_spaces(text: str) -> str:
    """Put spaces around ``/``, ``#`` and ``\\`` so that ``10/10`` becomes three tokens."""
    return _RE_SPEC.sub(r" \1 ", text)


_RE_SPACE = re.compile(" {2,}")


def rm_useless_spaces(text: str) -> str:
    """Collapse runs of spaces (spaCy would otherwise emit whitespace tokens for them)."""
    return _RE_SPACE.sub(" ", text)


_RE_ALL_CAPS = re.compile(r"(\s|^)([A-Z]+[^a-z\s]*)(?=(\s|$))")


def _all_caps(m: re.Match) -> str:
    tok = f"{TK_UP} " if len(m.groups()[1]) > 1 else ""
    return f"{m.groups()[0]}{tok}{m.groups()[1].lower()}"


def replace_all_caps(text: str) -> str:
    """``SHOUT`` -> ``xxup shout``: the vocabulary stays lower-case, the emphasis stays visible."""
    return _RE_ALL_CAPS.sub(_all_caps, text)


_RE_MAJ = re.compile(r"(\s|^)([A-Z][^A-Z\s]*)(?=(\s|$))")


def _maj(m: re.Match) -> str:
    tok = f"{TK_MAJ} " if len(m.groups()[1]) > 1 else ""
    return f"{m.groups()[0]}{tok}{m.groups()[1].lower()}"


def replace_maj(text: str) -> str:
    """``Word`` -> ``xxmaj word``, so capitalised and plain forms share one embedding."""
    return _RE_MAJ.sub(_maj, text)


def lowercase(text: str) -> str:
    """Lower-case, strip, and mark the start of the document with ``xxbos``."""
    return f"{BOS} " + text.lower().strip()


DEFAULT_RULES: list[Rule] = [
    fix_html,
    replace_rep,
    replace_wrep,
    spec_add_spaces,
    rm_useless_spaces,
    replace_all_caps,
    replace_maj,
    lowercase,
]


def apply_rules(text: str, rules: list[Rule] = DEFAULT_RULES) -> str:
    """Run ``rules`` in order; fastai's ``TokenizeWithRules`` does the same before spaCy."""
    for rule in rules:
        text = rule(text)
    return text


# fastai's chain, split where it stops looking across words. The first five rules need the
# whole text; replace_all_caps, replace_maj and lowercase only ever change one
# whitespace-separated word at a time (their matches cannot cross whitespace, and neither can
# str.lower's context rules), so the tokenizer can memoise them per word. The text-wide rules
# below are exact equivalents of the originals with a cheap test that skips a regex pass when
# it cannot match.


def _replace_wrep_fast(text: str) -> str:
    # A match needs two consecutive identical whitespace-separated words (the first word and
    # its first repeat); without them the (slow) regex cannot match.
    words = text.split()
    if not any(map(str.__eq__, words, words[1:])):
        return text
    return replace_wrep(text)


def _rm_useless_spaces_fast(text: str) -> str:
    return rm_useless_spaces(text) if "  " in text else text


def text_wide_rules(text: str) -> str:
    """The text-wide part of DEFAULT_RULES, stripped as ``lowercase`` would strip it."""
    text = spec_add_spaces(_replace_wrep_fast(replace_rep(fix_html(text))))
    return _rm_useless_spaces_fast(text).strip()


def word_rules(piece: str) -> str:
    """The per-word part of DEFAULT_RULES (without the leading ``xxbos``)."""
    return replace_maj(replace_all_caps(piece)).lower()
