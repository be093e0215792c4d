"""WordPiece tokenisation on the `tokenizers` library, configured from a checkpoint folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer as _Backend
from tokenizers import normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from minbert.pretrained import CheckpointError, resolve_checkpoint


class Tokenizer:
    """Encodes single sentences or sentence pairs as BERT inputs.

    Pairs are `[CLS] a [SEP] b [SEP]` with token_type_ids 0 then 1, truncated longest-first
    to `max_length`; batches are padded to their longest member.
    """

    def __init__(self, backend: _Backend, max_length: int = 512):
        self.backend = backend
        self.max_length = max_length
        self.pad_id = backend.token_to_id("[PAD]")
        if self.pad_id is None:
            raise CheckpointError("the vocabulary has no [PAD] token")
        backend.no_padding()
        backend.enable_truncation(max_length, strategy="longest_first")

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, max_length: int = 512) -> "Tokenizer":
        """Reads tokenizer.json if the checkpoint has one, otherwise vocab.txt + its config."""
        folder = resolve_checkpoint(name_or_path)
        if (folder / "tokenizer.json").is_file():
            try:
                backend = _Backend.from_file(str(folder / "tokenizer.json"))
            except Exception as e:  # the Rust library's parse errors have no common type
                raise CheckpointError(f"{folder / 'tokenizer.json'}: not a tokenizers file "
                                      f"({str(e).splitlines()[0][:200]})") from None
            return cls(backend, max_length)
        if not (folder / "vocab.txt").is_file():
            raise CheckpointError(f"{folder}: neither tokenizer.json nor vocab.txt")
        settings = {}
        if (folder / "tokenizer_config.json").is_file():
            try:
                settings = json.loads((folder / "tokenizer_config.json").read_text(
                    encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{folder / 'tokenizer_config.json'}: not JSON ({e})"
                                      ) from None
        return cls.from_vocab(folder / "vocab.txt", lowercase=settings.get("do_lower_case", True),
                              strip_accents=settings.get("strip_accents"), max_length=max_length)

    @classmethod
    def from_vocab(cls, vocab_file: str | Path, lowercase: bool = True,
                   strip_accents: bool | None = None, max_length: int = 512) -> "Tokenizer":
        """BERT's basic + WordPiece tokenizer over a vocab.txt, as BertTokenizerFast builds it."""
        vocab = {}
        try:
            with open(vocab_file, encoding="utf-8") as fp:
                for index, line in enumerate(fp):
                    vocab.setdefault(line.rstrip("\n"), index)
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{vocab_file}: not UTF-8 text ({e.reason})") from None
        for token in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
            if token not in vocab:
                raise CheckpointError(f"{vocab_file}: the vocabulary has no {token} token")
        backend = _Backend(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents,
            lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        return cls(backend, max_length)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, first: Sequence[str], second: Sequence[str] | None = None
               ) -> tuple[list[tuple[list[int], list[int]]], list[bool]]:
        """Unpadded (input_ids, token_type_ids) per example, and whether each was longer
        than max_length (and so cut); tokenise once, pad per batch."""
        inputs = list(first) if second is None else list(zip(first, second, strict=True))
        encodings = self.backend.encode_batch(inputs)
        return [(e.ids, e.type_ids) for e in encodings], [bool(e.overflowing) for e in encodings]

    def encode_ids(self, first: Sequence[str], second: Sequence[str] | None = None
                   ) -> list[tuple[list[int], list[int]]]:
        return self.encode(first, second)[0]

    def __call__(self, first: Sequence[str] | str, second: Sequence[str] | str | None = None
                 ) -> dict[str, torch.Tensor]:
        if isinstance(first, str):
            first = [first]
            second = [second] if isinstance(second, str) else second
        return pad_batch(self.encode_ids(first, second), self.pad_id)


def pad_batch(encoded: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
              ) -> dict[str, torch.Tensor]:
    """Pads (input_ids, token_type_ids) pairs to the longest in the batch."""
    longest = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(encoded), longest), dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
    for row, (ids, types) in enumerate(encoded):
        input_ids[row, :len(ids)] = torch.as_tensor(ids)
        token_type_ids[row, :len(types)] = torch.as_tensor(types)
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "attention_mask": attention_mask}
