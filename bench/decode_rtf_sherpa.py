#!/usr/bin/env python3
"""Benchmark: synthasr greedy decoding (the PyTorch ASRBundle) vs sherpa-onnx greedy decoding of the
same model exported with ``synthasr export --format onnx``, on the same audio, same thread count.

Setup (all built in a temporary folder, nothing downloaded):

* model: the ``small`` preset (default), RANDOMLY INITIALISED (seed 0) -- speed does not depend on the
  weights' quality, but a random model emits a token on most frames, so the prediction network runs far
  more often than for a trained model (which emits on roughly one frame in three); that is the worst
  case for both decoders and especially for the Python-loop search;
  a second scenario, ``blank_biased``, raises the joiner's blank logit bias (bisection on the first
  utterance) until greedy search emits on ~30% of the frames, like a trained model, so the search
  cost is realistic (only that one bias differs; both scenarios are exported and timed the same way);
* tokenizer: 500-piece BPE trained on the fortune(6) text files (normalized);
* audio: ~``--seconds`` of espeak-ng speech (fortune sentences) in utterances of about 10 s, 16 kHz.

What is timed (median of ``--repeats`` runs after one untimed warm-up; synthasr and sherpa-onnx runs
alternate so load from other processes hits both alike), audio already in memory:

* synthasr: ``ASRBundle.transcribe`` = fbank (lhotse) + encoder + greedy search + detokenization;
* sherpa-onnx: ``create_stream`` + ``accept_waveform`` + ``decode_stream(s)`` = fbank
  (kaldi-native-fbank) + encoder + greedy search + detokenization.

Two modes: ``sequential`` (one utterance per call: latency-style serving) and ``batched`` (all
utterances in one call: ``transcribe(list)`` / ``decode_streams``). RTF = seconds / audio seconds.
Sequential mode also times sherpa-onnx on the ``--int8`` files against its fp32 files (alternating the
same way), counts the utterances whose int8 transcript equals the fp32 one and scores the int8
transcripts against the fp32 ones (CER, %). Int8 speed depends on the
CPU's integer instructions (VNNI or not), so the JSON records the CPU model and its int8-relevant flags.
Targets: synthasr within 1.5x of sherpa-onnx (sequential mode, each thread count); sherpa-onnx on our
model RTF <= 0.02 on one thread.

Usage: python bench/decode_rtf_sherpa.py [--out bench/results/decode_rtf_sherpa.json] [--threads 1 2]
       [--seconds 60] [--repeats 3] [--preset small]
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET_RATIO = 1.5
TARGET_SHERPA_RTF_1T = 0.02
SAMPLE_RATE = 16000


def fortune_sentences(min_words: int = 4, max_words: int = 25) -> List[str]:
    """Normalized one-line fortunes (deterministic order); raises if fortune(6) data is missing."""
    from synthasr.text import normalize

    files = sorted(p for p in glob.glob("/usr/share/games/fortunes/*") if Path(p).suffix == "")
    if not files:
        raise SystemExit("fortune data not found in /usr/share/games/fortunes (apt-get install fortunes)")
    out = []
    for path in files:
        for entry in Path(path).read_text(encoding="utf-8", errors="ignore").split("\n%\n"):
            try:
                text = normalize(" ".join(entry.split()))
            except ValueError:
                continue
            if min_words <= len(text.split()) <= max_words:
                out.append(text)
    return out


def speak(text: str) -> np.ndarray:
    """espeak-ng -> mono float32 at 16 kHz."""
    import soundfile as sf

    from synthasr.decode.bundle import resample

    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "--stdout"], input=text.encode(),
                         capture_output=True, check=True, timeout=120).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return resample(samples, rate, SAMPLE_RATE)


def make_audio(sentences: Sequence[str], seconds: float, utterance_seconds: float = 10.0) -> List[np.ndarray]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found (apt-get install espeak-ng)")
    rng = random.Random(0)
    pool = list(sentences)
    rng.shuffle(pool)
    utterances: List[np.ndarray] = []
    total = 0.0
    while total < seconds and pool:
        words: List[str] = []
        while pool and len(words) < utterance_seconds * 2.6:  # ~2.6 words/s at 165 wpm
            words += pool.pop().split()
        audio = speak(" ".join(words))
        utterances.append(audio)
        total += len(audio) / SAMPLE_RATE
    return utterances


def build_checkpoint(work: Path, preset: str, sentences: Sequence[str]) -> Path:
    """Random-init checkpoint with a real 500-piece BPE tokenizer embedded."""
    from synthasr.checkpoint import save_checkpoint
    from synthasr.config import to_dict
    from synthasr.data.features import FeatureConfig
    from synthasr.model import build_model
    from synthasr.tokenizer import Tokenizer, train_bpe

    tokenizer = Tokenizer.load(train_bpe(sentences, work / "lang", vocab_size=500, hard_vocab_limit=False))
    torch.manual_seed(0)
    model = build_model({"preset": preset, "vocab_size": tokenizer.vocab_size}).eval()
    return save_checkpoint(work / "random_init.pt", model.state_dict(), to_dict(model.config),
                           to_dict(FeatureConfig()), tokenizer.to_bytes())


def emission_rate(bundle, audio: Sequence[np.ndarray]) -> float:
    """Tokens emitted by greedy search per encoder frame."""
    from synthasr.decode.search import greedy_search

    tokens = frames = 0
    with torch.inference_mode():
        for samples in audio:
            feats = bundle._features(samples)
            enc, enc_lens = bundle.model.encode(feats.unsqueeze(0), torch.tensor([feats.size(0)]))
            tokens += len(greedy_search(bundle.model, enc, enc_lens)[0])
            frames += int(enc_lens.sum())
    return tokens / max(frames, 1)


def blank_biased_checkpoint(checkpoint: Path, audio: Sequence[np.ndarray], target: float = 0.3) -> Path:
    """Copy of ``checkpoint`` whose joiner blank bias makes greedy search emit on ~``target`` of frames."""
    from synthasr.checkpoint import load_checkpoint, save_checkpoint, tokenizer_proto
    from synthasr.decode.bundle import ASRBundle

    bundle = ASRBundle.from_checkpoint(checkpoint)
    bias = bundle.model.joiner.output_linear.bias
    with torch.no_grad():
        low, high = float(bias[0]), float(bias[0]) + 10.0
        for _ in range(14):
            bias[0] = (low + high) / 2
            if emission_rate(bundle, audio[:1]) > target:
                low = float(bias[0])
            else:
                high = float(bias[0])
        bias[0] = low
    ckpt = load_checkpoint(checkpoint)
    out = checkpoint.with_name("blank_biased.pt")
    return save_checkpoint(out, bundle.model.state_dict(), ckpt["model_config"], ckpt["feature_config"],
                           tokenizer_proto(ckpt))


def paired_median_seconds(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int):
    """Median wall time of each function; runs alternate a, b, a, b... so that load bursts from other
    processes on a shared machine hit both sides alike."""
    fn_a(), fn_b()  # warm-up (allocations, onnxruntime/torch kernel selection)
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def sherpa_runner(recognizer, audio: List[np.ndarray], batched: bool) -> Callable[[], List[str]]:
    def run() -> List[str]:
        streams = []
        for samples in audio:
            stream = recognizer.create_stream()
            stream.accept_waveform(SAMPLE_RATE, samples)
            streams.append(stream)
        if batched:
            recognizer.decode_streams(streams)
        else:
            for stream in streams:
                recognizer.decode_stream(stream)
        # sherpa-onnx prints <sos/eos> (id 1) literally, our tokenizer drops it; only random models emit it
        return [" ".join(s.result.text.replace("<sos/eos>", "").split()) for s in streams]

    return run


def ours_runner(bundle, audio: List[np.ndarray], batched: bool) -> Callable[[], List[str]]:
    def run() -> List[str]:
        if batched:
            return list(bundle.transcribe(audio, sample_rate=SAMPLE_RATE, method="greedy_search"))
        return [bundle.transcribe(a, sample_rate=SAMPLE_RATE, method="greedy_search") for a in audio]

    return run


def cpu_description() -> str:
    """CPU model name and the flags that select onnxruntime's int8 kernels (from /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    fields: Dict[str, str] = {}
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name", "unknown")
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return f"{model}; int8-relevant flags: {' '.join(f for f in wanted if f in flags) or 'none'}"


def bench_threads(threads: int, exported, checkpoint: Path, audio: List[np.ndarray], repeats: int) -> Dict:
    import sherpa_onnx

    from synthasr.decode.bundle import ASRBundle
    from synthasr.score import compute_wer

    torch.set_num_threads(threads)
    bundle = ASRBundle.from_checkpoint(checkpoint)
    recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
        **exported.files(), num_threads=threads, sample_rate=SAMPLE_RATE, feature_dim=exported.feature_dim,
        decoding_method="greedy_search")
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    out: Dict[str, Dict] = {}
    for mode in ("sequential", "batched"):
        ours_fn, theirs_fn = ours_runner(bundle, audio, mode == "batched"), sherpa_runner(recognizer, audio,
                                                                                          mode == "batched")
        ours_text, theirs_text = ours_fn(), theirs_fn()
        ours_s, theirs_s = paired_median_seconds(ours_fn, theirs_fn, repeats)
        out[mode] = {
            "synthasr_seconds": round(ours_s, 4),
            "sherpa_onnx_seconds": round(theirs_s, 4),
            "synthasr_rtf": round(ours_s / seconds, 5),
            "sherpa_onnx_rtf": round(theirs_s / seconds, 5),
            "synthasr_over_sherpa": round(ours_s / theirs_s, 3),
            "identical_transcripts": sum(a == b for a, b in zip(ours_text, theirs_text)),
            "words_emitted": sum(len(t.split()) for t in ours_text),
        }
    int8 = sherpa_onnx.OfflineRecognizer.from_transducer(
        **exported.files(int8=True), num_threads=threads, sample_rate=SAMPLE_RATE, feature_dim=exported.feature_dim,
        decoding_method="greedy_search")
    fp32_fn, int8_fn = sherpa_runner(recognizer, audio, False), sherpa_runner(int8, audio, False)
    fp32_text, int8_text = fp32_fn(), int8_fn()
    fp32_s, int8_s = paired_median_seconds(fp32_fn, int8_fn, repeats)
    out["sequential"].update({
        "sherpa_onnx_int8_seconds": round(int8_s, 4),
        "sherpa_onnx_int8_rtf": round(int8_s / seconds, 5),
        "sherpa_onnx_int8_over_fp32": round(int8_s / fp32_s, 3),
        "int8_transcripts_identical_to_fp32": sum(a == b for a, b in zip(fp32_text, int8_text)),
        # a random model's transcripts hinge on tiny logit margins, so also how far apart they are
        "int8_cer_against_fp32": round(compute_wer(
            (f"u{i}", ref, hyp) for i, (ref, hyp) in enumerate(zip(fp32_text, int8_text))).cer, 2),
    })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "decode_rtf_sherpa.json")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()

    import sherpa_onnx

    from synthasr.export.onnx import export_onnx
    from synthasr.model import parameter_counts
    from synthasr.utils.io import atomic_write

    with tempfile.TemporaryDirectory(prefix="decode_rtf_sherpa-") as tmp:
        work = Path(tmp)
        sentences = fortune_sentences()
        audio = make_audio(sentences, args.seconds)
        random_init = build_checkpoint(work, args.preset, sentences)
        checkpoints = {"random_init": random_init, "blank_biased": blank_biased_checkpoint(random_init, audio)}
        from synthasr.decode.bundle import ASRBundle

        params = parameter_counts(ASRBundle.from_checkpoint(random_init).model)
        results: Dict[str, Dict] = {}
        for name, checkpoint in checkpoints.items():
            torch.set_num_threads(1)
            exported = export_onnx(checkpoint, work / f"onnx_{name}", int8=True)
            results[name] = {"emitted_tokens_per_frame": round(emission_rate(ASRBundle.from_checkpoint(checkpoint),
                                                                             audio), 3)}
            for n in args.threads:
                results[name][f"threads_{n}"] = bench_threads(n, exported, checkpoint, audio, args.repeats)

    seq = {f"{scenario}/{k}": v["sequential"] for scenario, by_threads in results.items()
           for k, v in by_threads.items() if k.startswith("threads_")}
    report = {
        "model": f"{args.preset} (random init, seed 0; blank_biased: same with a calibrated joiner blank bias)",
        "parameters": params,
        "audio_seconds": round(sum(len(a) for a in audio) / SAMPLE_RATE, 2),
        "utterances": len(audio),
        "audio": "espeak-ng en-us, 165 wpm, fortune(6) sentences, 16 kHz",
        "timed": "features + encoder + greedy search + detokenization, audio in memory, median of "
                 f"{args.repeats} alternating runs after 1 warm-up",
        "results": results,
        "targets": {
            "synthasr_within_x_of_sherpa_onnx (sequential)": TARGET_RATIO,
            "sherpa_onnx_rtf_1_thread_max (sequential)": TARGET_SHERPA_RTF_1T,
        },
        "met": {
            "synthasr_within_x_of_sherpa_onnx": {k: v["synthasr_over_sherpa"] <= TARGET_RATIO for k, v in seq.items()},
            "sherpa_onnx_rtf_1_thread": {k: v["sherpa_onnx_rtf"] <= TARGET_SHERPA_RTF_1T
                                         for k, v in seq.items() if k.endswith("/threads_1")},
        },
        "versions": {"torch": torch.__version__, "sherpa_onnx": getattr(sherpa_onnx, "__version__", "?"),
                     "python": platform.python_version()},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads max, "
                   f"{len(__import__('os').sched_getaffinity(0))} cpus visible",
        "cpu": cpu_description(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
