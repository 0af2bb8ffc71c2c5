"""Caption -> token ids, the reader's `tokenize` callable: open_clip's tokenizer, its BPE memoised per word.

open_clip's `SimpleTokenizer` cleans the caption (ftfy, HTML unescape, whitespace, lower case), splits it into
words with its regex, and turns each word into byte-level BPE ids. The BPE merge itself is cached by open_clip,
but the per-word byte mapping and id lookups are not: for an 80-word LLM caption that Python work is most of
the ~170 us a caption costs, inside the DataLoader workers that share the cores with the training step. Here a
word's ids are computed once per worker with open_clip's own `byte_encoder`, `bpe` and `encoder` and reused,
and reading stops once the context is full. The ids are those of `tokenizer([caption])[0]` (sot, ids, eot,
truncated with eot last, zero padded), which `tests/test_tokenize.py` checks. Any other tokenizer (HF, SigLIP,
or a SimpleTokenizer with a context reduction) is called as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from open_clip.tokenizer import SimpleTokenizer


class CaptionTokenizer:
    """One caption -> 1-D LongTensor [context_length] (a class: DataLoader workers pickle it)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.memoised = isinstance(tokenizer, SimpleTokenizer) and tokenizer.reduction_fn is None
        self._words: dict[str, list[int]] = {}

    def __call__(self, caption: str) -> torch.Tensor:
        if not self.memoised:
            return self.tokenizer([caption])[0]
        tok, length, words = self.tokenizer, self.tokenizer.context_length, self._words
        ids = [tok.sot_token_id]
        for word in tok.pat.findall(tok.clean_fn(caption)):  # the pattern has no groups: whole matches
            ids += words.get(word) or self._encode(word)
            if len(ids) >= length:  # the rest would be cut: open_clip truncates to length with eot last
                break
        ids = ids[:length - 1] + [tok.eot_token_id]
        return torch.tensor(ids + [0] * (length - len(ids)), dtype=torch.long)

    def _encode(self, word: str) -> list[int]:
        """open_clip's SimpleTokenizer.encode for one word of the cleaned text."""
        tok = self.tokenizer
        ids = [tok.encoder[piece] for piece in tok.bpe("".join(tok.byte_encoder[b] for b in word.encode("utf-8")))
               .split(" ")]
        self._words[word] = ids
        return ids


__all__ = ["CaptionTokenizer"]
