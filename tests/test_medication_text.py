"""Tests for recipes/medication/local/prepare_text.py: real names, disjoint splits, no leakage."""
import bz2
import importlib.util
import json
import pickle
import random
import sys
from pathlib import Path

import pytest

from synthasr.text import is_normalized, normalize

_SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "medication" / "local" / "prepare_text.py"
_spec = importlib.util.spec_from_file_location("prepare_text", _SCRIPT)
P = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("prepare_text", P)  # dataclasses look their module up while the class is built
_spec.loader.exec_module(P)

MED_SIZES = {"train": 100, "dev": 30, "test": 30, "test_unseen": 20}
GENERAL_SIZES = {"train": 300, "dev": 50, "test": 50}


def _run(out_dir, seed=0):
    return P.prepare(out_dir, seed, num_names=40, unseen_fraction=0.1, med_sizes=MED_SIZES, general_sizes=GENERAL_SIZES)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    summary = _run(d)
    return d, summary


def test_summary_counts(out):
    d, summary = out
    assert summary["med_sentences"] == MED_SIZES
    assert summary["general_sentences"] == GENERAL_SIZES
    assert summary["names_seen"] == 36 and summary["names_unseen"] == 4
    assert summary["names_total_generic"] > 900 and summary["names_total_brand"] > 2000
    assert summary["med_name_oov_rate_vs_general_train"] == 1.0
    assert json.loads((d / "summary.json").read_text())["names_total"] == summary["names_total"]


def test_name_list_has_real_names(out):
    d, _ = out
    rows = [line.split("\t") for line in (d / "medication_names.txt").read_text().splitlines()]
    names = {r[0]: r for r in rows}
    assert len(rows) > 3000
    assert names["atorvastatin"][1] == "generic"
    assert names["lipitor"][1:3] == ["brand", "atorvastatin"]
    assert names["metformin"][1] == "generic"
    assert names["zoloft"][1:3] == ["brand", "sertraline"]
    # ordinary English words are not medication names even if some product is called that
    for word in ("tabloid", "choice", "justice", "success", "aspirin", "lithium"):
        assert word not in names
    assert all(is_normalized(r[0]) and " " not in r[0] for r in rows)


def test_records_are_normalized_with_ids(out):
    d, _ = out
    ids = set()
    for path in sorted(d.glob("*.jsonl")):
        for rec in _jsonl(path):
            assert rec["text"] == normalize(rec["raw"])
            assert is_normalized(rec["text"]) and rec["text"]
            assert rec["id"] not in ids
            ids.add(rec["id"])
    assert len(ids) == sum(MED_SIZES.values()) + sum(GENERAL_SIZES.values())


def test_med_splits_disjoint_and_names_consistent(out):
    d, _ = out
    splits = {s: _jsonl(d / f"med_{s}.jsonl") for s in MED_SIZES}
    texts = [r["text"] for recs in splits.values() for r in recs]
    assert len(texts) == len(set(texts))
    train_names = {n for r in splits["train"] for n in r["names"]}
    for split in ("dev", "test"):
        for r in splits[split]:
            assert set(r["names"]) <= train_names
    for r in splits["test_unseen"] + splits["train"]:
        for name in r["names"]:
            assert name in r["text"].split()
    roles = dict(line.split("\t")[::2] for line in (d / "names_used.txt").read_text().splitlines())
    unseen = {n for n, role in roles.items() if role == "unseen"}
    assert len(unseen) == 4
    assert {n for r in splits["test_unseen"] for n in r["names"]} <= unseen
    train_words = {w for s in ("train", "dev", "test") for r in splits[s] for w in r["text"].split()}
    general_words = {w for s in GENERAL_SIZES for r in _jsonl(d / f"general_{s}.jsonl") for w in r["text"].split()}
    assert not unseen & train_words
    assert not unseen & general_words


def test_general_text_has_no_medication_names(out):
    d, _ = out
    all_names = {line.split("\t")[0] for line in (d / "medication_names.txt").read_text().splitlines()}
    texts = {s: [r["text"] for r in _jsonl(d / f"general_{s}.jsonl")] for s in GENERAL_SIZES}
    for split_texts in texts.values():
        for t in split_texts:
            assert not all_names.intersection(t.split()), t
            assert P.MIN_WORDS <= len(t.split()) <= P.MAX_WORDS
    assert not set(texts["train"]) & set(texts["dev"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["dev"]) & set(texts["test"])


@pytest.mark.slow
def test_same_seed_same_bytes(out, tmp_path):
    d, _ = out
    _run(tmp_path / "again", seed=0)
    for path in sorted(d.iterdir()):
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name
    _run(tmp_path / "other", seed=1)
    assert (tmp_path / "other" / "med_train.jsonl").read_bytes() != (d / "med_train.jsonl").read_bytes()


def test_sentence_generation_is_seeded_and_unique():
    names = [P.MedName(n, "generic", n, "test") for n in ("alphazol", "betazine", "cetramab", "deltavir")]
    first = P.make_med_splits(names[:3], names[3:], {"train": 30, "dev": 5, "test": 5, "test_unseen": 5}, random.Random(3))
    second = P.make_med_splits(names[:3], names[3:], {"train": 30, "dev": 5, "test": 5, "test_unseen": 5}, random.Random(3))
    assert [s.text for v in first.values() for s in v] == [s.text for v in second.values() for s in v]
    assert {n for s in first["train"] for n in s.names} == {"alphazol", "betazine", "cetramab"}
    assert all(s.names[0] == "deltavir" for s in first["test_unseen"])


def test_templates_normalize_with_doses():
    rng = random.Random(0)
    name = P.MedName("lipitor", "brand", "atorvastatin", "test")
    other = P.MedName("zoloft", "brand", "sertraline", "test")
    assert len(P.TEMPLATES) >= 40
    for template in P.TEMPLATES:
        text = normalize(P.render(template, [name, other], rng))
        assert "lipitor" in text.split() and is_normalized(text)
    assert normalize("Take 0.5 mg of Lipitor b.i.d.") == "take zero point five milligrams of lipitor twice a day"


def test_fortune_parsing_and_missing_sources(tmp_path):
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    (fortunes / "wisdom").write_text(
        "The early bird gets the worm. Be kind to your neighbors!\n\t\t-- Anonymous\n%\n"
        "Q: Why?\nA: Because.\n%\nA |_| drawing\n%\n", encoding="utf-8")
    (fortunes / "drugs").write_text("Aspirin is a fine drug for you.\n%\n", encoding="utf-8")
    assert P.fortune_sentences(fortunes) == ["The early bird gets the worm.", "Be kind to your neighbors!"]
    with pytest.raises(P.TextPrepError, match="install the Debian package 'fortunes'"):
        P.fortune_sentences(tmp_path / "nope")
    with pytest.raises(P.TextPrepError, match="install the Debian package 'wordnet-base'"):
        P.wordnet_examples(tmp_path / "nope")


def test_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.pkl.bz2"
    with bz2.open(path, "wb") as f:
        pickle.dump({"drug_canonical_to_data": {"x": random.Random}}, f)
    with pytest.raises(P.TextPrepError, match="refusing to load"):
        P.load_drug_dictionary(path)


def test_brand_mapping_needs_generic_plus_salt(tmp_path):
    unii = tmp_path / "UNII_Names.txt"
    unii.write_text(
        "Name\tTYPE\tUNII\tDisplay Name\n"
        "LIPITOR\tbn\tX1\tATORVASTATIN CALCIUM\n"
        "ODDNAME\tbn\tX2\tATORVASTATIN MIXTURE WITH STUFF\n"
        "NS-218\tbn\tX3\tATORVASTATIN\n"
        "ATORVA\tcn\tX1\tATORVASTATIN CALCIUM\n", encoding="utf-8")
    assert P.unii_brands(unii, {"atorvastatin": "a600045"}) == {"lipitor": "atorvastatin"}
    unii.write_text("bad header\n", encoding="utf-8")
    with pytest.raises(P.TextPrepError, match="unexpected header"):
        P.unii_brands(unii, {})


def test_general_vocab_size_closes_the_vocabulary():
    pool = [(t, t, "x") for t in ("a b", "a c", "b c", "a z", "q r s", "a b c", "c a")]
    top = P.frequent_words(pool, 3)
    assert top == {"a", "b", "c"}
    splits = P.split_general(pool, banned=set(), sizes={"train": 3, "dev": 1, "test": 1},
                             rng=random.Random(0), vocab_size=3)
    kept = [s[0] for part in splits.values() for s in part]
    assert sorted(kept) == sorted(["a b", "a c", "b c", "a b c", "c a"])
    with pytest.raises(P.TextPrepError, match="3 most frequent words"):
        P.split_general(pool, banned=set(), sizes={"train": 6, "dev": 0, "test": 0}, rng=random.Random(0),
                        vocab_size=3)


def test_lm_text_keeps_out_every_scored_sentence_and_trains_an_lm(out, tmp_path):
    """local/prepare_lm_text.py: the general pool + training splits, never a dev/test or real-speech
    sentence; then `synthasr train-lm` over a BPE model with the term list as extra sentences."""
    import subprocess

    from click.testing import CliRunner

    from synthasr.cli import cli
    from synthasr.tokenizer import train_bpe

    out_dir, _ = out
    data = tmp_path / "data"
    (data / "real").mkdir(parents=True)
    (data / "text").symlink_to(out_dir, target_is_directory=True)
    general_train = [r["text"] for r in _jsonl(out_dir / "general_train.jsonl")]
    (data / "real" / "general_real.jsonl").write_text(json.dumps({"id": "r1", "text": general_train[0]}) + "\n",
                                                      encoding="utf-8")
    lm_text = tmp_path / "lm_text.txt"
    script = _SCRIPT.parent / "prepare_lm_text.py"
    run = subprocess.run([sys.executable, str(script), "--data-dir", str(data), "--out", str(lm_text)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = lm_text.read_text(encoding="utf-8").splitlines()
    held_out = {r["text"] for split in ("general_dev", "general_test", "med_dev", "med_test", "med_test_unseen")
                for r in _jsonl(out_dir / f"{split}.jsonl")}
    assert held_out and not held_out.intersection(lines)
    assert general_train[0] not in lines  # a real-speech transcript is scored: kept out too
    assert set(general_train[1:]) <= set(lines) and len(lines) == len(set(lines))
    assert {r["text"] for r in _jsonl(out_dir / "med_train.jsonl")} <= set(lines)
    assert len(lines) > len(general_train) + 100  # the general pool adds text nobody spoke
    names = {line.split("\t")[0] for line in (out_dir / "medication_names.txt").read_text(encoding="utf-8").splitlines()}
    med_train = {r["text"] for r in _jsonl(out_dir / "med_train.jsonl")}
    assert not any(names.intersection(s.split()) for s in lines if s not in med_train)

    train_bpe(lines[:2000], tmp_path / "lang", vocab_size=120)
    arpa, some = tmp_path / "lm.arpa.gz", tmp_path / "some.txt"
    some.write_text("".join(line + "\n" for line in lines[:3000]), encoding="utf-8")
    result = CliRunner().invoke(cli, ["train-lm", "--bpe-model", str(tmp_path / "lang" / "bpe.model"), "--text",
                                      str(some), "--terms", str(out_dir / "names_used.txt"), "--order", "3",
                                      "--out", str(arpa), "--dev-text", str(out_dir / "med_dev.jsonl")])
    assert result.exit_code == 0, result.output
    assert "3-grams" in result.output and "per-token perplexity" in result.output and arpa.is_file()
    bad_terms = tmp_path / "terms.txt"
    bad_terms.write_text("aspirin\n\u0007\n", encoding="utf-8")
    bad = CliRunner().invoke(cli, ["train-lm", "--bpe-model", str(tmp_path / "lang" / "bpe.model"), "--text",
                                   str(some), "--terms", str(bad_terms), "--out", str(tmp_path / "x.arpa")])
    assert bad.exit_code != 0 and f"{bad_terms}:2:" in bad.output
