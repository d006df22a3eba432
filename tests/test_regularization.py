"""EWC / online EWC / L2-SP: hand-computed penalties, Fisher properties, lambda extremes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from synthasr.loss import LossConfig
from synthasr.model import ModelConfig, build_model
from synthasr.train.regularization import (
    EWC,
    L2SP,
    RegularizationError,
    consolidate_fisher,
    estimate_fisher,
    fisher_cached,
    load_fisher,
    resolve_lambdas,
    save_fisher,
    snapshot,
)

VOCAB = 40
USED_TOKENS = list(range(1, 21))  # tokens 21..39 never occur in the "old-domain" data
LOSS_CFG = LossConfig(kind="pruned", warmup_steps=0)


def _batches(n: int, seed: int, tokens=USED_TOKENS):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(3, 120, 80, generator=g)
        x_lens = torch.tensor([120, 100, 90])
        y = [[tokens[int(i)] for i in torch.randint(len(tokens), (k,), generator=g)] for k in (6, 4, 5)]
        out.append({"x": x, "x_lens": x_lens, "y": y})
    return out


def _loss(model, batch):
    out = model(batch["x"], batch["x_lens"], batch["y"], LOSS_CFG, step=10)
    return out["loss"] / out["num_frames"]


def _split(batch):
    """One-utterance batches of the test format (features cut to their own length)."""
    for i in range(len(batch["y"])):
        n = int(batch["x_lens"][i])
        yield {"x": batch["x"][i : i + 1, :n], "x_lens": batch["x_lens"][i : i + 1], "y": batch["y"][i : i + 1]}


def _regroup(batches, size):
    """The same utterances as ``batches`` in batches of ``size`` (zero-padded like a loader)."""
    utts = [u for b in batches for u in _split(b)]
    out = []
    for start in range(0, len(utts), size):
        group = utts[start : start + size]
        t = max(int(u["x_lens"][0]) for u in group)
        x = torch.zeros(len(group), t, group[0]["x"].shape[-1])
        for i, u in enumerate(group):
            x[i, : u["x"].shape[1]] = u["x"][0]
        out.append({"x": x, "x_lens": torch.cat([u["x_lens"] for u in group]), "y": [u["y"][0] for u in group]})
    return out


def _fisher(model, batches, num_batches, **kw):
    return estimate_fisher(model, batches, _loss, num_batches=num_batches, split=_split, progress=False, **kw)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return build_model(ModelConfig(preset="tiny", vocab_size=VOCAB))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 2, bias=False)
        self.joiner = nn.Linear(2, 1, bias=True)


def _tiny():
    m = Tiny()
    with torch.no_grad():
        m.encoder.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        m.joiner.weight.copy_(torch.tensor([[0.5, -0.5]]))
        m.joiner.bias.fill_(2.0)
    return m


def test_ewc_penalty_equals_hand_computation():
    m = _tiny()
    anchor = snapshot(m)
    with torch.no_grad():
        m.encoder.weight.add_(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))  # diffs 1, 0, 0, -2
        m.joiner.weight.add_(torch.tensor([[0.5, 0.5]]))  # diffs .5, .5
        m.joiner.bias.add_(3.0)  # diff 3
    fisher = {
        "encoder.weight": torch.tensor([[2.0, 5.0], [7.0, 0.25]]),
        "joiner.weight": torch.tensor([[4.0, 0.0]]),
        "joiner.bias": torch.tensor([1.0]),
    }
    ewc = EWC(m, anchor, fisher, lambdas={"encoder": 10.0, "joiner": 2.0})
    # encoder: 10/2 * (2*1 + 0.25*4) = 15 ; joiner: 2/2 * (4*0.25 + 0*0.25 + 1*9) = 10
    assert float(ewc(m).detach()) == pytest.approx(25.0)
    only_encoder = EWC(m, anchor, fisher, lambdas={"encoder": 10.0})
    assert float(only_encoder(m).detach()) == pytest.approx(15.0)
    assert only_encoder.num_regularized == 4
    # L2-SP: lambda/2 * sum diff^2 = 3/2 * (1 + 4 + .25 + .25 + 9)
    assert float(L2SP(m, anchor, 3.0)(m).detach()) == pytest.approx(1.5 * 14.5)
    # Per-module override of a default.
    assert float(L2SP(m, anchor, {"": 3.0, "joiner.bias": 0.0})(m).detach()) == pytest.approx(1.5 * 5.5)


def test_penalty_is_zero_at_the_anchor_and_differentiable():
    m = _tiny()
    anchor = snapshot(m)
    fisher = {n: torch.ones_like(p) for n, p in m.named_parameters()}
    ewc = EWC(m, anchor, fisher, 1.0)
    assert float(ewc(m).detach()) == 0.0
    with torch.no_grad():
        m.encoder.weight.add_(1.0)
    ewc(m).backward()
    torch.testing.assert_close(m.encoder.weight.grad, torch.ones(2, 2))  # d/dθ 1/2 (θ-θ*)^2 = θ-θ*


def test_fisher_nonnegative_and_zero_for_unused_embedding_rows(model):
    batches = _batches(3, seed=1)
    used = sorted({t for b in batches for seq in b["y"] for t in seq})
    unused = [t for t in range(1, VOCAB) if t not in used]
    assert len(used) >= 10 and len(unused) >= 19
    fisher = _fisher(model, batches, num_batches=3)
    assert set(fisher) == {n for n, _ in model.named_parameters()}
    assert all(bool((f >= 0).all()) for f in fisher.values())
    emb = fisher["decoder.embedding.weight"]
    assert torch.count_nonzero(emb[unused]) == 0  # never-seen tokens: exactly zero
    assert bool((emb[used].sum(dim=1) > 0).all())
    assert float(fisher["encoder.layers.0.ff.net.0.weight"].sum()) > 0
    assert all(p.grad is None for p in model.parameters())  # grads left as found


def test_fisher_is_mean_of_squared_per_utterance_gradients(model):
    batches = _batches(2, seed=2)
    fisher = _fisher(model, batches, num_batches=2)
    model.eval()
    squares = []
    for utterance in (u for b in batches for u in _split(b)):
        model.zero_grad()
        _loss(model, utterance).backward()
        squares.append(model.joiner.output_linear.weight.grad ** 2)
    assert len(squares) == 6
    torch.testing.assert_close(fisher["joiner.output_linear.weight"], sum(squares) / 6)


def test_fisher_does_not_depend_on_how_utterances_are_batched(model):
    """The old estimate (square of the batch-mean gradient) shrank ~1/B with the batch size B."""
    utterances = _batches(2, seed=4)  # 6 utterances
    per_size = {size: _fisher(model, _regroup(utterances, size), num_batches=6) for size in (1, 2, 3, 6)}
    for size in (2, 3, 6):
        for name, value in per_size[1].items():
            torch.testing.assert_close(per_size[size][name], value, rtol=1e-4, atol=1e-10, msg=f"{name}, batch {size}")


def test_fisher_uses_at_most_num_batches_and_max_utterances(model):
    seen = []

    def loss_fn(m, b):
        seen.append(len(b["y"]))
        return _loss(m, b)

    batches = _batches(4, seed=3)
    estimate_fisher(model, batches, loss_fn, num_batches=2, split=_split, progress=False)
    assert seen == [1] * 6  # 2 batches x 3 utterances, one at a time
    seen.clear()
    estimate_fisher(model, batches, loss_fn, num_batches=4, max_utterances=4, split=_split, progress=False)
    assert seen == [1] * 4
    with pytest.raises(RegularizationError, match="no usable utterances"):
        estimate_fisher(model, [], loss_fn, num_batches=2, split=_split, progress=False)


def test_split_batch_gives_each_utterance_its_own_features():
    from synthasr.train.regularization import split_batch

    feats = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    batch = {"features": feats, "feature_lens": torch.tensor([5, 3]), "texts": ["a b", "c"], "cut_ids": ["x", "y"]}
    parts = list(split_batch(batch))
    assert [p["texts"] for p in parts] == [["a b"], ["c"]] and [p["cut_ids"] for p in parts] == [["x"], ["y"]]
    assert torch.equal(parts[1]["features"], feats[1:2, :3]) and parts[1]["feature_lens"].tolist() == [3]


def _train(model, regularizer, steps=6, lr=1e-3, seed=5):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for b in _batches(steps, seed=seed, tokens=list(range(20, 40))):  # the "new domain" uses other tokens
        loss = _loss(model, b)
        if regularizer is not None:
            loss = loss + regularizer(model)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _copy(model):
    clone = build_model(ModelConfig(preset="tiny", vocab_size=VOCAB))
    clone.load_state_dict(model.state_dict())
    return clone


def test_lambda_zero_is_bit_identical_to_plain_finetuning(model):
    fisher = _fisher(model, _batches(2, seed=1), num_batches=2)
    anchor = snapshot(model)
    plain, with_ewc = _copy(model), _copy(model)
    _train(plain, None)
    _train(with_ewc, EWC(with_ewc, anchor, fisher, lambdas=0.0))
    for (n, a), (_, b) in zip(plain.state_dict().items(), with_ewc.state_dict().items()):
        assert torch.equal(a, b), n
    assert not torch.equal(plain.state_dict()["joiner.output_linear.weight"], anchor["joiner.output_linear.weight"])


def test_huge_lambda_keeps_weights_at_the_anchor(model):
    anchor = snapshot(model)
    lr = 1e-3
    free, held = _copy(model), _copy(model)
    _train(free, None, lr=lr)
    _train(held, L2SP(held, anchor, lambdas=1e7), lr=lr)
    drift_free = max(float((p.detach() - anchor[n]).abs().max()) for n, p in free.named_parameters())
    drift_held = max(float((p.detach() - anchor[n]).abs().max()) for n, p in held.named_parameters())
    assert drift_free > 4 * lr
    assert drift_held <= 1.5 * lr  # Adam moves at most ~lr per step; the spring pulls it straight back


def test_huge_ewc_lambda_on_encoder_only_holds_the_encoder(model):
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    anchor = snapshot(model)
    held = _copy(model)
    _train(held, EWC(held, anchor, fisher, lambdas={"encoder": 1e7}), lr=1e-3)
    enc = max(float((p.detach() - anchor[n]).abs().max()) for n, p in held.named_parameters() if n.startswith("encoder."))
    joi = max(float((p.detach() - anchor[n]).abs().max()) for n, p in held.named_parameters() if n.startswith("joiner."))
    assert enc <= 1.5e-3
    assert joi > 4e-3


def test_online_ewc_consolidation():
    prev = {"a": torch.tensor([1.0, 2.0]), "old": torch.tensor([4.0])}
    new = {"a": torch.tensor([0.5, 0.0]), "b": torch.tensor([3.0])}
    out = consolidate_fisher(prev, new, gamma=0.5)
    torch.testing.assert_close(out["a"], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(out["b"], torch.tensor([3.0]))
    torch.testing.assert_close(out["old"], torch.tensor([2.0]))
    assert consolidate_fisher(None, new, 0.9)["b"].item() == 3.0
    with pytest.raises(RegularizationError, match="gamma"):
        consolidate_fisher(prev, new, gamma=1.5)


def test_fisher_file_roundtrip_and_cache(tmp_path):
    fisher = {"w": torch.tensor([1.0, 2.0])}
    path = save_fisher(tmp_path / "fisher.pt", fisher, {"source": "general", "batches": 4})
    loaded, meta = load_fisher(path)
    torch.testing.assert_close(loaded["w"], fisher["w"])
    assert meta == {"source": "general", "batches": 4}
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.tensor([9.0, 9.0])}

    same = fisher_cached(path, compute, {"source": "general", "batches": 4})
    assert calls == [] and same["w"].tolist() == [1.0, 2.0]
    other = fisher_cached(path, compute, {"source": "general", "batches": 8})
    assert calls == [1] and other["w"].tolist() == [9.0, 9.0]
    assert load_fisher(path)[1] == {"source": "general", "batches": 8}
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(RegularizationError, match="bad.pt"):
        load_fisher(tmp_path / "bad.pt")


def test_lambda_prefix_errors():
    names = ["encoder.weight", "joiner.weight", "joiner.bias"]
    assert resolve_lambdas(names, {"": 1.0, "joiner": 5.0, "joiner.bias": 0.0}) == {
        "encoder.weight": 1.0, "joiner.weight": 5.0, "joiner.bias": 0.0,
    }
    assert resolve_lambdas(names, {"encoder": 2.0}) == {"encoder.weight": 2.0}
    with pytest.raises(RegularizationError, match="'encodr' matches no parameter"):
        resolve_lambdas(names, {"encodr": 1.0})
    with pytest.raises(RegularizationError, match=">= 0"):
        resolve_lambdas(names, -1.0)
    m = _tiny()
    with pytest.raises(RegularizationError, match="shape"):
        EWC(m, snapshot(m), {"encoder.weight": torch.ones(3)}, 1.0)
