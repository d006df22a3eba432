"""SentencePiece BPE/unigram tokenizer in icefall's layout, and ``tokens.txt`` for sherpa-onnx.

Layout (as icefall's ``train_bpe_model.py`` sets it up): ``<blk>`` is id 0 (the RNN-T blank),
``<sos/eos>`` id 1, ``<unk>`` id 2, no BOS/EOS pieces. ``tokens.txt`` lists ``<piece> <id>`` per line,
which is what sherpa-onnx reads next to an exported model.

Training is deterministic (one thread, no input sampling or shuffling, fixed random seed) so the same
text always gives byte-identical ``bpe.model`` files; checkpoints embed the model proto bytes
(:meth:`Tokenizer.to_bytes`) so a model never gets separated from its vocabulary.

Callers pass text that already went through :func:`synthasr.text.normalize`; the tokenizer itself does
no normalization (sentencepiece's own normalizer is switched to identity).
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterable, Iterator, List, Sequence, Union

import sentencepiece as spm

from synthasr.text import is_normalized
from synthasr.utils.io import atomic_write

__all__ = ["TokenizerError", "Tokenizer", "train_bpe", "BLANK", "SOS_EOS", "UNK"]

BLANK = "<blk>"
SOS_EOS = "<sos/eos>"
UNK = "<unk>"
USER_DEFINED_SYMBOLS = [BLANK, SOS_EOS]
BLANK_ID = 0
UNK_ID = len(USER_DEFINED_SYMBOLS)  # 2, as in icefall
_SEED = 1234

PathLike = Union[str, Path]


class TokenizerError(ValueError):
    """Tokenizer training or loading failed; the message says why in one line."""


def train_bpe(
    texts: Iterable[str],
    out_dir: PathLike,
    vocab_size: int = 500,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    hard_vocab_limit: bool = True,
    require_normalized: bool = True,
) -> Path:
    """Train a sentencepiece model on ``texts``; write ``out_dir/bpe.model`` and ``out_dir/tokens.txt``.

    ``hard_vocab_limit=True`` (default) makes a corpus too small for ``vocab_size`` an error rather than
    a silently smaller vocabulary; ``False`` lets sentencepiece shrink it. Returns the model path.
    """
    if model_type not in ("bpe", "unigram"):
        raise TokenizerError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if vocab_size <= len(USER_DEFINED_SYMBOLS) + 1:
        raise TokenizerError(f"vocab_size must be > {len(USER_DEFINED_SYMBOLS) + 1}, got {vocab_size}")
    if not 0.0 < character_coverage <= 1.0:
        raise TokenizerError(f"character_coverage must be in (0, 1], got {character_coverage}")
    sentences = _collect_sentences(texts, require_normalized)
    proto = _train_proto(sentences, vocab_size, model_type, character_coverage, hard_vocab_limit)
    out_dir = Path(out_dir)
    model_path = out_dir / "bpe.model"
    with atomic_write(model_path, "wb") as f:
        f.write(proto)
    with atomic_write(out_dir / "tokens.txt") as f:
        f.write(Tokenizer.from_bytes(proto).tokens_txt())
    return model_path


def _collect_sentences(texts: Iterable[str], require_normalized: bool) -> List[str]:
    sentences = []
    for i, text in enumerate(texts, start=1):
        text = text.rstrip("\n")
        if require_normalized and not is_normalized(text):
            raise TokenizerError(
                f"training text {i} is not normalized (run synthasr.text.normalize first): {text[:60]!r}"
            )
        if text:
            sentences.append(text)
    if not sentences:
        raise TokenizerError("no non-empty training text given to train_bpe")
    return sentences


def _train_proto(
    sentences: List[str], vocab_size: int, model_type: str, character_coverage: float, hard_vocab_limit: bool
) -> bytes:
    spm.set_random_generator_seed(_SEED)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            user_defined_symbols=USER_DEFINED_SYMBOLS,
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            hard_vocab_limit=hard_vocab_limit,
            num_threads=1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            normalization_rule_name="identity",
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(_explain_sentencepiece_error(str(e), vocab_size)) from None
    return model.getvalue()


def _explain_sentencepiece_error(message: str, vocab_size: int) -> str:
    too_high = re.search(r"Vocabulary size (?:is )?too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        return (
            f"vocab_size={vocab_size} is too large for this training text (at most {too_high.group(2)} "
            "pieces possible); lower vocab_size, add text, or pass hard_vocab_limit=False"
        )
    if "Vocabulary size is smaller than required_chars" in message:
        return f"vocab_size={vocab_size} is smaller than the number of distinct characters; raise vocab_size"
    first = next((line for line in message.splitlines() if line.strip()), message)
    return f"sentencepiece training failed: {first.strip()}"


class Tokenizer:
    """A loaded sentencepiece model with icefall's special ids (blank 0, ``<sos/eos>`` 1, unk 2)."""

    def __init__(self, processor: spm.SentencePieceProcessor, source: str) -> None:
        self._sp = processor
        self._source = source
        if self._sp.id_to_piece(BLANK_ID) != BLANK:
            raise TokenizerError(
                f"{source}: id 0 is {self._sp.id_to_piece(BLANK_ID)!r}, expected {BLANK!r}; "
                "train the model with synthasr.tokenizer.train_bpe"
            )
        self._skip_on_decode = {BLANK_ID, self.piece_to_id(SOS_EOS)}

    @classmethod
    def load(cls, path: PathLike) -> "Tokenizer":
        """Load ``bpe.model`` from disk."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: sentencepiece model file not found")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    @classmethod
    def from_bytes(cls, model_proto: bytes, source: str = "<bytes>") -> "Tokenizer":
        """Load from serialized model proto bytes (as embedded in a checkpoint)."""
        processor = spm.SentencePieceProcessor()
        try:
            processor.load_from_serialized_proto(model_proto)
        except (RuntimeError, OSError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TokenizerError(f"{source}: not a valid sentencepiece model ({first})") from None
        return cls(processor, source)

    def to_bytes(self) -> bytes:
        """Serialized model proto; ``Tokenizer.from_bytes(t.to_bytes())`` gives the same tokenizer."""
        return self._sp.serialized_model_proto()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def blank_id(self) -> int:
        return BLANK_ID

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    def id_to_piece(self, token_id: int) -> str:
        self._check_id(token_id)
        return self._sp.id_to_piece(token_id)

    def piece_to_id(self, piece: str) -> int:
        """Id of ``piece``; unknown pieces map to :attr:`unk_id` (sentencepiece's behaviour)."""
        return self._sp.piece_to_id(piece)

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        """Token ids for each (already normalized) text."""
        if isinstance(texts, str):
            raise TypeError("encode() expects a list of strings, not a single string")
        return self._sp.encode(list(texts), out_type=int)

    def encode_as_pieces(self, texts: Sequence[str]) -> List[List[str]]:
        if isinstance(texts, str):
            raise TypeError("encode_as_pieces() expects a list of strings, not a single string")
        return self._sp.encode(list(texts), out_type=str)

    def decode(self, ids_list: Sequence[Sequence[int]]) -> List[str]:
        """Text for each id sequence; blank and ``<sos/eos>`` ids are dropped (they carry no text)."""
        out = []
        for ids in ids_list:
            kept = []
            for i in ids:
                i = int(i)
                self._check_id(i)
                if i not in self._skip_on_decode:
                    kept.append(i)
            out.append(self._sp.decode(kept))
        return out

    def tokens_txt(self) -> str:
        """``tokens.txt`` content: ``<piece> <id>`` per line, ``<blk> 0`` first (icefall/sherpa-onnx)."""
        return "".join(f"{piece} {i}\n" for i, piece in self._pieces())

    def _pieces(self) -> Iterator[tuple]:
        for i in range(self.vocab_size):
            yield i, self._sp.id_to_piece(i)

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} out of range [0, {self.vocab_size}) for {self._source}")

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self._source!r})"
