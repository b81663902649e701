"""The MiniLM word-piece tokenizer, without torch: the serving processes tokenize typed intents and
new items' texts, and need only numpy and the `tokenizers` library for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Tokenizer:
    """Fast word-piece tokenizer from the model folder's tokenizer.json. Texts are truncated to
    `max_tokens` and a batch is padded to its longest text rounded up to a multiple of
    `PAD_MULTIPLE`: MiniLM's cost grows with the padded length (one ML-100K title, 16 tokens on
    average: p50 10.4 ms padded to 32, 7.6 ms to a multiple of 8, on one CPU thread), padding
    never changes an embedding (masked attention, masked mean), and the few distinct lengths
    still let Triton batch requests and TensorRT keep few shapes."""

    PAD_MULTIPLE = 8

    def __init__(self, model_dir: Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.tok = HFTokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.tok.enable_truncation(max_length=max_tokens)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]", pad_to_multiple_of=self.PAD_MULTIPLE)
        self.max_tokens = max_tokens

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> input_ids (N, T) int64, attention_mask (N, T) int64; T <= max_tokens."""
        if not texts:
            return np.zeros((0, self.PAD_MULTIPLE), np.int64), np.zeros((0, self.PAD_MULTIPLE), np.int64)
        enc = self.tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)[:, : self.max_tokens]  # the rounding never exceeds max_tokens
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)[:, : self.max_tokens]
        return ids, mask
