"""Text pieces of an answer as its tokens come, split the way transformers' `TextStreamer`
splits them: each piece ends at a space, a newline or a CJK character, so it holds whole
words and whole UTF-8 characters (a byte-fallback token that ends mid-character is held
until the character is complete).

The unary answer is `decode(tokens).strip()`. So that the pieces joined are exactly that
answer, leading whitespace is dropped and trailing whitespace is held until text follows it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TextStreamer


class _Collector(TextStreamer):  # type: ignore[misc]
    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.out: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.out.append(text)


class TextPieces:
    def __init__(self, tokenizer: Any) -> None:
        self._streamer = _Collector(tokenizer)
        self._started = False
        self._held = ""

    def put(self, token: int) -> str:
        """The text that token `token` completes (often empty)."""
        self._streamer.put(torch.tensor([token]))
        return self._take()

    def end(self) -> str:
        """What is left once the answer is over."""
        self._streamer.end()
        return self._take(final=True)

    def _take(self, final: bool = False) -> str:
        text = "".join(self._streamer.out)
        self._streamer.out.clear()
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        text = self._held + text
        body = text.rstrip()
        self._held = "" if final else text[len(body) :]
        return body
