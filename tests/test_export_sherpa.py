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
    return SimpleNamespace(ckpt=ckpt, wavs=wavs, feats=feats, exported=exported, model=model, tokenizer=tokenizer,
                           hyps=hyps)


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


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _greedy_path(exported, feats, context_size: int):
    """What the fp32 files see when greedy search decodes the test audio (one symbol per frame at most,
    like sherpa-onnx): the padded feature batch, every decoder context, and the joiner's inputs."""
    encoder, decoder, joiner = (_session(exported.out_dir / name) for name in ("encoder.onnx", "decoder.onnx",
                                                                                  "joiner.onnx"))
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).numpy()
    x_lens = np.array([f.size(0) for f in feats], dtype=np.int64)
    frames, frame_lens = encoder.run(None, {"x": x, "x_lens": x_lens})
    contexts, enc_in, dec_in = [], [], []
    for utt in range(len(feats)):
        hyp = [0] * context_size  # blank start context
        contexts.append(hyp[-context_size:])
        (dec,) = decoder.run(None, {"y": np.array([hyp[-context_size:]], dtype=np.int64)})
        for t in range(int(frame_lens[utt])):
            enc_in.append(frames[utt, t])
            dec_in.append(dec[0])
            (logit,) = joiner.run(None, {"encoder_out": frames[utt, t:t + 1], "decoder_out": dec})
            token = int(logit.argmax())
            if token != 0:
                hyp.append(token)
                contexts.append(hyp[-context_size:])
                (dec,) = decoder.run(None, {"y": np.array([hyp[-context_size:]], dtype=np.int64)})
    return ({"x": x, "x_lens": x_lens}, {"y": np.array(contexts, dtype=np.int64)},
            {"encoder_out": np.stack(enc_in), "decoder_out": np.stack(dec_in)})


@pytest.fixture(scope="module")
def int8_feeds(trained):
    """Per file: the greedy path on the test audio, and random probe inputs (wider than real ones)."""
    from synthasr.export.onnx import random_probe_inputs

    real = _greedy_path(trained.exported, trained.feats, trained.model.decoder.context_size)
    x, x_lens, y, enc, dec = (t.numpy() for t in random_probe_inputs(trained.model, seed=5))
    probe = ({"x": x, "x_lens": x_lens}, {"y": y}, {"encoder_out": enc, "decoder_out": dec})
    return {part: [real[i], probe[i]] for i, part in enumerate(("encoder", "decoder", "joiner"))}


def test_int8_files_are_quantized_and_within_the_quantization_error_bound(trained, int8_feeds):
    """Every MatMul weight (and the decoder's embedding) is stored as integers whose scale reproduces the
    fp32 weight to one step, no int8 weight is large enough to saturate a non-VNNI u8s8 kernel, and on
    real and probe inputs each integer matrix product stays within the error its quantization steps
    allow (a bound, not a tuned tolerance: it holds for exact int32 arithmetic on any CPU)."""
    from synthasr.export.int8 import INT16_PAIR_LIMIT, check_int8_model, count_quantizable, u8s8_pair_max
    from synthasr.export.onnx import _INT8_OPS

    for part, feeds in int8_feeds.items():
        fp32, int8 = trained.exported.out_dir / f"{part}.onnx", trained.exported.int8[part]
        expected = count_quantizable(fp32, _INT8_OPS[part])
        report = check_int8_model(fp32, int8, feeds, expect_quantized=expected)
        assert len(report.weights) == expected and expected >= 1, (part, len(report.weights), expected)
        assert report.matmuls and len(report.matmul_ratio) == len(report.matmuls), part
        assert all(w.values.dtype in (np.int8, np.uint8) for w in report.weights), part
        assert all(u8s8_pair_max(m.weight) <= INT16_PAIR_LIMIT for m in report.matmuls), part
        assert report.worst <= 1.0, (part, report.worst)


def test_int8_joiner_argmax_and_sherpa_onnx_text_equal_fp32(trained, int8_feeds):
    """Where the fp32 joiner's best token beats the runner-up by more than twice the quantization
    error bound, the int8 joiner must pick the same token; on the greedy path of the test audio that
    is most frames. sherpa-onnx then decodes the int8 files to the fp32 text."""
    from synthasr.export.int8 import describe_int8, matmul_error_bound

    joiner_in = int8_feeds["joiner"][0]
    fp32 = _session(trained.exported.joiner).run(None, joiner_in)[0]
    int8 = _session(trained.exported.int8["joiner"]).run(None, joiner_in)[0]
    (matmul,) = describe_int8(trained.exported.joiner, trained.exported.int8["joiner"])[1]
    bound = matmul_error_bound(np.tanh(joiner_in["encoder_out"] + joiner_in["decoder_out"]), matmul.weight)
    top2 = np.sort(fp32, axis=-1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2 * bound.max(-1)
    assert decided.mean() >= 0.5, decided.mean()  # the check below is not vacuous
    np.testing.assert_array_equal(int8.argmax(-1)[decided], fp32.argmax(-1)[decided])

    text_fp32 = _sherpa_decode(_recognizer(trained.exported), trained.wavs)
    text_int8 = _sherpa_decode(_recognizer(trained.exported, int8=True), trained.wavs)
    assert all(text_fp32) and text_int8 == text_fp32


def _rewrite_int8(src, dst, edit):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    edit(model, onnx, numpy_helper)
    onnx.save(model, str(dst))
    return dst


def test_int8_check_fails_on_broken_quantization(trained, int8_feeds, tmp_path):
    """The check is able to fail: a wrong weight scale, an accumulator that saturates (what VPMADDUBSW
    does to full-range int8 weights), or a file that is not quantized at all."""
    from synthasr.export.int8 import Int8CheckError, check_int8_model

    fp32, int8 = trained.exported.joiner, trained.exported.int8["joiner"]
    feeds = int8_feeds["joiner"]

    def scale_times_1_25(model, onnx, numpy_helper):
        scale = next(t for t in model.graph.initializer if t.name.endswith("_scale"))
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.25), scale.name))

    with pytest.raises(Int8CheckError, match=r"quantization steps from fp32"):
        check_int8_model(fp32, _rewrite_int8(int8, tmp_path / "scale.onnx", scale_times_1_25), feeds)

    def saturate_accumulator(model, onnx, numpy_helper):  # Clip the int32 product to +-2**12
        nodes = list(model.graph.node)
        at = next(i for i, n in enumerate(nodes) if n.op_type == "MatMulInteger")
        raw = nodes[at].output[0]
        nodes[at].output[0] = raw + "_unclipped"
        nodes.insert(at + 1, onnx.helper.make_node("Clip", [raw + "_unclipped", "clip_lo", "clip_hi"], [raw]))
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int32), n)
                                        for v, n in ((-2 ** 12, "clip_lo"), (2 ** 12, "clip_hi"))])
        onnx.checker.check_model(model)

    with pytest.raises(Int8CheckError, match=r"largest error quantization can cause"):
        check_int8_model(fp32, _rewrite_int8(int8, tmp_path / "clip.onnx", saturate_accumulator), feeds)

    with pytest.raises(Int8CheckError, match=r"0 quantized weights"):
        check_int8_model(fp32, fp32, feeds)


def test_exported_pieces_of_the_trained_model_match_pytorch(trained):
    from synthasr.export.onnx import random_probe_inputs, reference_outputs, run_exported

    model = trained.model
    x, x_lens, y, enc, dec = random_probe_inputs(model, seed=3, lengths=(140, 97, 31, 12))
    want = reference_outputs(model, x, x_lens, y, enc, dec)
    got = run_exported(trained.exported.out_dir, x.numpy(), x_lens.numpy(), y.numpy(), enc.numpy(), dec.numpy())
    np.testing.assert_array_equal(got["encoder"][1], want["encoder"][1])
    for part in ("encoder", "decoder", "joiner"):
        np.testing.assert_allclose(got[part][0], want[part][0], atol=1e-4, rtol=1e-4, err_msg=part)
