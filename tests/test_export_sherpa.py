"""sherpa-onnx decodes our exported model exactly as synthasr.decode() decodes the PyTorch checkpoint.

A randomly initialised transducer emits blanks everywhere, which would make "both transcripts are
empty" a vacuous pass. So a ``tiny`` model is first overfitted (full RNN-T loss, a few hundred fast
steps at most) on three short espeak-ng utterances until greedy search emits text for each; then the
checkpoint is exported and the same 16 kHz audio files are decoded by both sides.
"""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sherpa_onnx = pytest.importorskip("sherpa_onnx")
pytest.importorskip("onnxruntime")
sf = pytest.importorskip("soundfile")

TEXTS = ["take two tablets daily", "aspirin with food", "call the doctor now"]
MAX_STEPS = 400
CHECK_EVERY = 10


def _speak(text: str) -> tuple:
    out = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", text], capture_output=True,
                         check=True, timeout=60).stdout
    samples, rate = sf.read(io.BytesIO(out), dtype="float32")
    return samples, rate


def _overfit(model, tokenizer, feats, steps_cap: int):
    """Train until greedy search gives non-empty text for every utterance (checked every 10 steps)."""
    from synthasr.decode.search import greedy_search
    from synthasr.loss import LossConfig

    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    x_lens = torch.tensor([f.size(0) for f in feats])
    y = tokenizer.encode(TEXTS)
    optimizer = torch.optim.Adam(model.parameters(), lr=6e-3)
    loss_cfg = LossConfig(kind="full", backend="auto")
    hyps = [""] * len(TEXTS)
    for step in range(1, steps_cap + 1):
        model.train()
        loss = model(x, x_lens, y, loss_cfg, step)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % CHECK_EVERY == 0:
            model.eval()
            with torch.no_grad():
                enc, enc_lens = model.encode(x, x_lens)
                hyps = tokenizer.decode(greedy_search(model, enc, enc_lens))
            if _recognizes_each_utterance(hyps):
                break
    return model.eval(), hyps


def _recognizes_each_utterance(hyps) -> bool:
    """Every hypothesis is non-empty, starts like its own reference and differs from the others (the
    model tells the utterances apart; alignments are still fuzzy this early, so the text may be cut)."""
    return (all(h and h[0] == ref[0] for h, ref in zip(hyps, TEXTS))
            and len(set(hyps)) == len(hyps))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from synthasr.checkpoint import save_checkpoint
    from synthasr.config import to_dict
    from synthasr.data.features import FeatureConfig, make_extractor
    from synthasr.decode.bundle import resample
    from synthasr.export.onnx import export_onnx
    from synthasr.model import build_model
    from synthasr.tokenizer import Tokenizer, train_bpe

    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("export_sherpa")
    feature_cfg = FeatureConfig()
    extractor = make_extractor(feature_cfg)
    wavs, feats = [], []
    for i, text in enumerate(TEXTS):
        samples, rate = _speak(text)
        samples = resample(samples, rate, 16000)  # both decoders get the same 16 kHz samples
        path = root / f"utt{i}.wav"
        sf.write(str(path), samples, 16000, subtype="FLOAT")
        wavs.append(path)
        feats.append(torch.from_numpy(extractor.extract(samples, sampling_rate=16000)))
    tokenizer = Tokenizer.load(train_bpe(TEXTS, root / "lang", vocab_size=30, hard_vocab_limit=False))
    model = build_model({"preset": "tiny", "vocab_size": tokenizer.vocab_size})
    model, hyps = _overfit(model, tokenizer, feats, MAX_STEPS)
    assert _recognizes_each_utterance(hyps), f"the tiny model did not learn the utterances in {MAX_STEPS} steps: {hyps}"
    ckpt = save_checkpoint(root / "pretrained.pt", model.state_dict(), to_dict(model.config), to_dict(feature_cfg),
                           tokenizer.to_bytes())
    exported = export_onnx(ckpt, root / "onnx", int8=True)
    return SimpleNamespace(ckpt=ckpt, wavs=wavs, exported=exported, model=model, tokenizer=tokenizer, hyps=hyps)


def _recognizer(exported, int8: bool = False, num_threads: int = 1):
    return sherpa_onnx.OfflineRecognizer.from_transducer(
        **exported.files(int8=int8), num_threads=num_threads, sample_rate=16000, feature_dim=80,
        decoding_method="greedy_search")


def _sherpa_decode(recognizer, wavs, batched: bool = False):
    streams = []
    for wav in wavs:
        samples, rate = sf.read(str(wav), dtype="float32")
        stream = recognizer.create_stream()
        stream.accept_waveform(rate, samples)
        streams.append(stream)
    if batched:
        recognizer.decode_streams(streams)
    else:
        for stream in streams:
            recognizer.decode_stream(stream)
    return [" ".join(s.result.text.split()) for s in streams]


def test_sherpa_onnx_greedy_equals_synthasr_decode(trained):
    import synthasr

    ours = synthasr.decode([str(w) for w in trained.wavs], model=str(trained.ckpt), method="greedy_search")
    theirs = _sherpa_decode(_recognizer(trained.exported), trained.wavs)
    assert all(ours), ours
    assert theirs == [" ".join(t.split()) for t in ours]
    # the in-training check (features from the same extractor, padded batch) saw the same text
    assert ours == trained.hyps


def test_sherpa_onnx_batched_decoding_matches_one_by_one(trained):
    """decode_streams pads the batch with log(1e-10) frames; the encoder masks padding, so the text
    must not change."""
    recognizer = _recognizer(trained.exported, num_threads=2)
    assert _sherpa_decode(recognizer, trained.wavs, batched=True) == _sherpa_decode(recognizer, trained.wavs)


def test_int8_model_is_close_to_fp32_and_runs_in_sherpa_onnx(trained):
    """Dynamic int8 quantization perturbs outputs by quantization noise only: small relative error, the
    same joiner argmax, and sherpa-onnx decodes the int8 files to (nearly) the fp32 text."""
    from synthasr.export.onnx import random_probe_inputs, run_exported
    from synthasr.score import compute_wer

    x, x_lens, y, enc, dec = random_probe_inputs(trained.model, seed=5)
    args = (x.numpy(), x_lens.numpy(), y.numpy(), enc.numpy(), dec.numpy())
    fp32 = run_exported(trained.exported.out_dir, *args)
    int8 = run_exported(trained.exported.out_dir, *args, int8=True)
    for part in ("encoder", "decoder", "joiner"):
        a, b = fp32[part][0], int8[part][0]
        relative_rms = float(np.sqrt(np.mean((a - b) ** 2)) / a.std())
        assert 0.0 < relative_rms < 0.05, (part, relative_rms)  # 0.0 would mean nothing was quantized
    agree = float(np.mean(fp32["joiner"][0].argmax(-1) == int8["joiner"][0].argmax(-1)))
    assert agree >= 0.9, agree

    text_fp32 = _sherpa_decode(_recognizer(trained.exported), trained.wavs)
    text_int8 = _sherpa_decode(_recognizer(trained.exported, int8=True), trained.wavs)
    result = compute_wer((f"u{i}", ref, hyp) for i, (ref, hyp) in enumerate(zip(text_fp32, text_int8)))
    assert result.cer <= 50.0, (text_fp32, text_int8)


def test_exported_pieces_of_the_trained_model_match_pytorch(trained):
    from synthasr.export.onnx import random_probe_inputs, reference_outputs, run_exported

    model = trained.model
    x, x_lens, y, enc, dec = random_probe_inputs(model, seed=3, lengths=(140, 97, 31, 12))
    want = reference_outputs(model, x, x_lens, y, enc, dec)
    got = run_exported(trained.exported.out_dir, x.numpy(), x_lens.numpy(), y.numpy(), enc.numpy(), dec.numpy())
    np.testing.assert_array_equal(got["encoder"][1], want["encoder"][1])
    for part in ("encoder", "decoder", "joiner"):
        np.testing.assert_allclose(got[part][0], want[part][0], atol=1e-4, rtol=1e-4, err_msg=part)
