"""Caption metrics of generated captions against each tile's reference sentences: BLEU-1..4, ROUGE-L, CIDEr.

The scorers are pycocoevalcap's pure-Python ones (`Bleu(4)`, `Rouge`, `Cider`), the numbers COCO captioning
papers report. Its PTBTokenizer, METEOR and SPICE are NOT used: they start a Java process, which our machines
and CI do not have. We tokenize ourselves instead: lower-case, words are runs of letters/digits (an inner
apostrophe kept: `it's`), punctuation dropped. Scores are therefore close to, not identical with, numbers
computed through the PTB tokenizer (which splits `it's` into `it 's`, for one).

Corner cases: a generated caption with no word is scored as one word that no reference can contain (so it
scores 0 instead of crashing ROUGE-L's division by the candidate length); reference sentences with no word are
dropped, and a tile left with no reference at all is left out. CIDEr's idf weights come from the references
of the tiles scored together, so it is comparable only between runs over the same tiles (and 0 for one tile).
"""

from __future__ import annotations

import re

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_NO_WORD = "<empty>"  # never a token of tokenize(): `<` and `>` are not word characters


def tokenize(text: str) -> str:
    """Lower-cased words joined by single spaces (the input format of pycocoevalcap's scorers)."""
    return " ".join(_WORD.findall(text.lower()))


def caption_scores(generated: dict[str, str], references: dict[str, list[str]]) -> dict[str, float | None]:
    """Corpus-level bleu1..bleu4, rouge_l and cider of `generated` (key -> caption) against `references`
    (key -> sentences), over the keys of `generated` that have at least one reference with a word.
    All None when no key can be scored (JSON has no NaN)."""
    refs = {k: [t for t in map(tokenize, references.get(k) or []) if t] for k in generated}
    keys = sorted(k for k, r in refs.items() if r)
    if not keys:
        return dict.fromkeys(METRICS)
    gts = {k: refs[k] for k in keys}
    res = {k: [tokenize(generated[k]) or _NO_WORD] for k in keys}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"bleu{n}": float(bleu[n - 1]) for n in range(1, 5)}, "rouge_l": float(rouge), "cider": float(cider)}


__all__ = ["METRICS", "tokenize", "caption_scores"]
