"""report.html: a self-contained page built from eval.json, recogs files and the eval cuts' audio.

The fast tests parse the page (tables, audio data URIs that decode to the right utterance, no external
URLs); the slow one renders it in headless Chromium and checks the screenshot and the live DOM.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import soundfile as sf

from synthasr.decode.evaluation import eval_summary
from synthasr.report import pick_utterances, write_report
from synthasr.score import TermList, compute_wer, write_results

RATE = 16000
TERMS = TermList.from_terms([("metformin", "seen"), ("warfarin", "seen"), ("zoloft", "unseen")])
MED_TEXTS = ["take metformin daily", "refill my warfarin", "is zoloft safe", "stop metformin now"]
# Hypotheses per stage: the baseline misses names, the final model gets most of them.
HYPS = {
    "baseline": ["take met for men daily", "refill my war", "is so loft safe", "stop met formin now"],
    "final": ["take metformin daily", "refill my warfarin", "is zoloft safe", "stop metoprolol now"],
}
VOICES = [("espeak", "en-us+m1"), ("espeak", "en-gb+f2"), ("piper", "joe-1"), ("piper", "joe-2")]


class _Page(HTMLParser):
    """Tags with their attributes, and the text of every table cell."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: List[Tuple[str, Dict[str, Optional[str]]]] = []
        self.text: List[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> List[Dict[str, Optional[str]]]:
        return [attrs for t, attrs in self.tags if t == tag]


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _make_set(root: Path, name: str, texts: List[str], real: bool = False) -> Tuple[Path, Dict[str, int]]:
    """Cuts with audio: utterance k of voice v lasts its own number of samples (to check the mapping)."""
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.utils import fastcopy

    cuts, lengths = [], {}
    rng = np.random.default_rng(0)
    for v, (engine, voice) in enumerate(VOICES):
        for k, text in enumerate(texts):
            utt_id = f"{name}_{v}_{k}"
            n = RATE + 1000 * v + 160 * k
            t = np.arange(n) / RATE
            audio = (0.3 * np.sin(2 * np.pi * (200 + 50 * v) * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)
            path = root / "audio" / f"{utt_id}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), audio, RATE)
            rec = Recording.from_file(path, recording_id=utt_id)
            custom = {"source": "real"} if real else {"source": "synthetic", "engine": engine, "voice": voice}
            sup = SupervisionSegment(utt_id, utt_id, 0.0, rec.duration, text=text,
                                     speaker=f"spk{v}" if real else voice, custom=custom)
            cuts.append(fastcopy(rec.to_cut(), id=utt_id, supervisions=[sup]))
            lengths[utt_id] = n
    out = root / f"{name}_cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(out)
    return out, lengths


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """Two evaluated stages (baseline, final) on a medication set (with names) and a real-speech set."""
    root = tmp_path_factory.mktemp("report_html")
    med_cuts, med_lengths = _make_set(root, "med", MED_TEXTS)
    real_cuts, real_lengths = _make_set(root, "real", ["call the doctor", "open the door"], real=True)
    exp_dir = root / "exp"
    for index, stage in enumerate(["baseline", "final"]):
        stage_dir = exp_dir / stage
        results = {}
        for name, prefix, cuts, texts, hyps, terms in [
            ("med_test", "med", med_cuts, MED_TEXTS, HYPS[stage], TERMS),
            ("general_real", "real", real_cuts, ["call the doctor", "open the door"], ["call the doctor", "open a door"],
             None),
        ]:
            triples = [(f"{prefix}_{v}_{k}", texts[k], hyps[k]) for v in range(len(VOICES)) for k in range(len(texts))]
            wer = compute_wer(triples, terms=terms)
            wer.files = {k: str(p) for k, p in write_results(stage_dir / "decode", name, "greedy_search", wer).items()}
            domain = "medication" if name == "med_test" else "general"
            results[name] = {"domain": domain, **eval_summary(wer, relative_to=stage_dir), "cuts": str(cuts)}
        (stage_dir / "eval.json").write_text(json.dumps({"stage": stage, "index": index, "results": results}))
    write_report(exp_dir, tensorboard=False, utts_per_voice=2, max_voices=3)
    return {"dir": exp_dir, "lengths": {**med_lengths, **real_lengths}}


def _audio_rows(page: _Page) -> List[Tuple[str, Dict[str, Optional[str]]]]:
    """(utterance id of the table row, audio attributes), in page order."""
    rows, utt = [], None
    for tag, attrs in page.tags:
        if tag == "tr":
            utt = attrs.get("data-utt")
        elif tag == "audio":
            rows.append((utt, attrs))
    return rows


def test_page_is_self_contained_with_tables_plot_and_audio(exp):
    page = _parse(exp["dir"] / "report.html")
    tables = page.all("table")
    assert [t.get("class") for t in tables] == ["stages", "terms", "utts", "utts"]
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not value.lower().startswith(("http:", "https:", "//")), (tag, key, value[:80])
    (img,) = page.all("img")
    assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.all("section")[1]["id"] == "set-med_test"


def test_audio_players_play_the_utterance_of_their_row(exp):
    page = _parse(exp["dir"] / "report.html")
    rows = _audio_rows(page)
    # 3 voices (espeak en-gb+f2, piper joe-1, espeak en-us+m1: engines in turn) x 2 utterances per set;
    # real speech has one "engine" (source real) and its speakers as voices
    assert [utt for utt, _ in rows] == ["med_1_0", "med_1_1", "med_2_0", "med_2_1", "med_0_0", "med_0_1",
                                        "real_0_0", "real_0_1", "real_1_0", "real_1_1", "real_2_0", "real_2_1"]
    for utt, attrs in rows:
        header, data = attrs["src"].split(",", 1)
        assert header == "data:audio/flac;base64"
        audio, rate = sf.read(io.BytesIO(base64.b64decode(data)))
        assert rate == RATE and len(audio) == exp["lengths"][utt], utt


def test_voices_names_and_highlighted_errors_are_shown(exp):
    text = (exp["dir"] / "report.html").read_text(encoding="utf-8")
    assert "en-us+m1" in text and "joe-1" in text and "spk0" in text  # real speech: the speaker
    assert '<span class="label">final</span>take metformin daily</div>' in text  # no error: nothing marked
    assert '<span class="sub" title="reference: metformin">met</span> <ins title="inserted">for</ins>' in text
    assert '<span class="sub" title="reference: the">a</span>' in text  # general_real, final stage
    page = _parse(exp["dir"] / "report.html")
    cells = [t.strip() for t in page.text]
    i = cells.index("metformin")  # worst name at the final stage: recognised as metoprolol once
    assert cells[i:i + 8] == ["metformin", "seen", "8", "4", "4", "0", "metoprolol ×4", "–"]


def test_linked_audio_resolves_relative_to_the_page(exp, tmp_path):
    exp_dir = tmp_path / "exp"
    shutil.copytree(exp["dir"], exp_dir)
    (exp_dir / "report.png").unlink()
    write_report(exp_dir, tensorboard=False, plot=False, audio="link", utts_per_voice=1, max_voices=2)
    page = _parse(exp_dir / "report.html")
    srcs = [a["src"] for a in page.all("audio")]
    assert len(srcs) == 4 and not any(s.startswith("data:") for s in srcs)
    for src in srcs:
        assert (exp_dir / src).resolve().is_file(), src
    assert page.all("img") and not (exp_dir / "report.png").exists()  # plot embedded even without report.png


def test_missing_audio_and_old_evals_leave_notes(exp, tmp_path):
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    exp_dir = tmp_path / "exp"
    shutil.copytree(exp["dir"], exp_dir)
    evals = {st: json.loads((exp_dir / st / "eval.json").read_text()) for st in ("baseline", "final")}
    cuts = CutSet.from_file(evals["final"]["results"]["med_test"]["cuts"])
    def moved(cut):
        source = fastcopy(cut.recording.sources[0], source=str(tmp_path / "gone.flac"))
        return fastcopy(cut, recording=fastcopy(cut.recording, sources=[source]))

    broken = CutSet.from_cuts(moved(c) if c.id == "med_1_0" else c for c in cuts)
    broken.to_file(tmp_path / "broken_cuts.jsonl.gz")
    evals["final"]["results"]["med_test"]["cuts"] = str(tmp_path / "broken_cuts.jsonl.gz")
    evals["baseline"]["results"]["med_test"]["cuts"] = str(tmp_path / "gone_cuts.jsonl.gz")  # moved away
    for st, ev in evals.items():
        del ev["results"]["general_real"]["recogs"]  # as written before report.html existed
        (exp_dir / st / "eval.json").write_text(json.dumps(ev))
    write_report(exp_dir, tensorboard=False, plot=False)
    text = (exp_dir / "report.html").read_text()
    assert "No per-utterance results recorded for this set" in text
    assert text.count("<audio") == 4 * 2 - 1  # med_test: 4 voices x 2 (defaults), one file gone
    assert text.count("audio unavailable") == 1 and "gone.flac" in text


def test_pick_utterances_round_robin_over_engines(exp, tmp_path):
    cuts = exp["dir"] / "baseline" / "eval.json"
    med = json.loads(cuts.read_text())["results"]["med_test"]["cuts"]
    ids = {f"med_{v}_{k}" for v in range(4) for k in range(4)}
    picked = pick_utterances(med, ids, per_voice=1, max_voices=4)
    assert [key for key, _ in picked] == [("espeak", "en-gb+f2"), ("piper", "joe-1"), ("espeak", "en-us+m1"),
                                          ("piper", "joe-2")]
    assert [[u for u, _ in utts] for _, utts in picked] == [["med_1_0"], ["med_2_0"], ["med_0_0"], ["med_3_0"]]


def _chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    try:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], check=True,
                       capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return None
    return shutil.which("chromium")


@pytest.mark.slow
def test_renders_in_headless_chromium(exp, tmp_path):
    from PIL import Image

    browser = _chromium()
    if browser is None:
        pytest.skip("Debian chromium is not installed and `apt-get install -y chromium` failed")
    url = (exp["dir"] / "report.html").resolve().as_uri()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400"]
    shot = tmp_path / "shot.png"
    proc = subprocess.run(common + [f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2400, 1280)
    dark = pixels < 128  # text, table borders, the plot's lines
    assert dark.mean() > 0.01 and pixels.std() > 20, (dark.mean(), pixels.std())
    rows_with_ink = np.flatnonzero(dark.any(axis=1))
    assert rows_with_ink.max() - rows_with_ink.min() > 1200  # content down the page, not one line
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    page = _Page()
    page.feed(dom)
    assert len(page.all("audio")) == 12 and len(page.all("table")) == 4 and len(page.all("img")) == 1
    assert "SynthASR report" in dom and "metoprolol" in dom
