"""Tests for synthasr.tokenizer: icefall layout, determinism, round trips, clear errors."""
import hashlib

import pytest

from synthasr.text import normalize
from synthasr.tokenizer import Tokenizer, TokenizerError, train_bpe

_BASE = [
    "please refill my lipitor prescription",
    "take twenty milligrams of atorvastatin twice a day with food",
    "is it safe to take ibuprofen with warfarin",
    "the doctor switched me from zoloft to prozac",
    "how many tablets of metformin should i take in the morning",
    "my pharmacy is out of amoxicillin can you call another store",
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
]
CORPUS = [normalize(f"{s} {i}") for i in range(30) for s in _BASE]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    train_bpe(CORPUS, out, vocab_size=120)
    return out


def test_layout_and_tokens_txt(bpe_dir):
    tok = Tokenizer.load(bpe_dir / "bpe.model")
    assert tok.vocab_size == 120
    assert tok.blank_id == 0 and tok.id_to_piece(0) == "<blk>"
    assert tok.piece_to_id("<sos/eos>") == 1
    assert tok.unk_id == 2 and tok.id_to_piece(2) == "<unk>"
    lines = (bpe_dir / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    assert len(lines) == 120
    for i, line in enumerate(lines):
        piece, idx = line.rsplit(" ", 1)
        assert int(idx) == i and tok.id_to_piece(i) == piece
    assert tok.tokens_txt() == (bpe_dir / "tokens.txt").read_text(encoding="utf-8")


def test_deterministic_bytes(tmp_path, bpe_dir):
    for model_type, vocab_size in (("bpe", 120), ("unigram", 80)):
        a = train_bpe(CORPUS, tmp_path / f"a_{model_type}", vocab_size=vocab_size, model_type=model_type)
        b = train_bpe(CORPUS, tmp_path / f"b_{model_type}", vocab_size=vocab_size, model_type=model_type)
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert (tmp_path / "a_bpe" / "bpe.model").read_bytes() == (bpe_dir / "bpe.model").read_bytes()


def test_encode_decode_round_trip_and_bytes(bpe_dir):
    tok = Tokenizer.load(bpe_dir / "bpe.model")
    texts = ["please refill my prozac prescription", "the lazy fox"]
    ids = tok.encode(texts)
    assert all(i not in (0, 1, 2) for seq in ids for i in seq)
    assert tok.decode(ids) == texts
    # blanks and <sos/eos> carry no text
    assert tok.decode([[0] + ids[1] + [0, 1]]) == ["the lazy fox"]
    clone = Tokenizer.from_bytes(tok.to_bytes())
    assert clone.encode(texts) == ids and clone.vocab_size == tok.vocab_size
    assert tok.encode_as_pieces(["the"]) == [["\u2581the"]]


def test_unknown_character_maps_to_unk(bpe_dir):
    tok = Tokenizer.load(bpe_dir / "bpe.model")
    assert tok.encode(["\u00e9"])[0][-1] == tok.unk_id


def test_vocab_too_large_is_an_error_unless_soft(tmp_path):
    with pytest.raises(TokenizerError, match=r"vocab_size=500 is too large .*at most \d+ pieces"):
        train_bpe(["a b c", "hello"], tmp_path / "x", vocab_size=500)
    assert not (tmp_path / "x" / "bpe.model").exists()
    model = train_bpe(["a b c", "hello"], tmp_path / "y", vocab_size=500, hard_vocab_limit=False)
    assert 3 < Tokenizer.load(model).vocab_size < 500


def test_input_errors(tmp_path):
    with pytest.raises(TokenizerError, match="training text 2 is not normalized"):
        train_bpe(["fine text", "Not Fine"], tmp_path / "n", vocab_size=10)
    with pytest.raises(TokenizerError, match="no non-empty training text"):
        train_bpe(["", ""], tmp_path / "n", vocab_size=10)
    with pytest.raises(TokenizerError, match="model_type"):
        train_bpe(CORPUS, tmp_path / "n", model_type="char")
    with pytest.raises(TokenizerError, match="model file not found"):
        Tokenizer.load(tmp_path / "missing.model")
    with pytest.raises(TokenizerError, match="not a valid sentencepiece model"):
        Tokenizer.from_bytes(b"garbage")


def test_decode_rejects_out_of_range_ids(bpe_dir):
    tok = Tokenizer.load(bpe_dir / "bpe.model")
    with pytest.raises(TokenizerError, match="token id 120 out of range"):
        tok.decode([[5, 120]])


def test_train_bpe_cli(tmp_path):
    from click.testing import CliRunner

    from synthasr.cli import cli

    text = tmp_path / "text"
    text.write_text("u1 Take 20mg of Lipitor\u00ae\nu2 Please refill my Zoloft!\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["train-bpe", "--text", str(text), "--kaldi", "--out-dir", str(tmp_path / "lang"),
              "--vocab-size", "30", "--no-hard-vocab-limit"]
    )
    assert result.exit_code == 0, result.output
    tok = Tokenizer.load(tmp_path / "lang" / "bpe.model")
    assert tok.decode(tok.encode(["take twenty milligrams of lipitor"])) == ["take twenty milligrams of lipitor"]
    bad = CliRunner().invoke(cli, ["train-bpe", "--text", str(text), "--out-dir", str(tmp_path / "l2"),
                                   "--vocab-size", "5000"])
    assert bad.exit_code != 0 and "too large" in bad.output


def test_train_bpe_reads_jsonl_text_field_only(tmp_path):
    """The recipe's splits are JSONL: the units must come from the 'text' field, never from the keys,
    ids or the raw copy (which a plain-text read would normalise into 'id general train zero ...')."""
    import json

    from click.testing import CliRunner

    from synthasr.cli import cli

    text = tmp_path / "general_train.jsonl"
    records = [{"id": f"general-train-{i:06d}", "text": line, "raw": line.upper(), "source": "wordnet"}
               for i, line in enumerate(["the sound faded out", "dashed by the refusal", "a quiet sound"] * 20)]
    text.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    result = CliRunner().invoke(cli, ["train-bpe", "--text", str(text), "--out-dir", str(tmp_path / "lang"),
                                      "--vocab-size", "40", "--no-hard-vocab-limit"])
    assert result.exit_code == 0, result.output
    pieces = set((tmp_path / "lang" / "tokens.txt").read_text(encoding="utf-8").split())
    letters = set("".join(p.lstrip("\u2581") for p in pieces if not p.startswith("<") and not p.isdigit()))
    assert letters <= set("thesoundfadedoutashedbyrefusalquiet"), letters  # no 'w' (wordnet), 'g' (general), 'z' (zero)

    text.write_text('{"id": "x", "raw": "no text field"}\n', encoding="utf-8")
    bad = CliRunner().invoke(cli, ["train-bpe", "--text", str(text), "--out-dir", str(tmp_path / "l2")])
    assert bad.exit_code != 0 and f"{text}:1:" in bad.output and "'text' field" in bad.output
