"""The RNN-T training loop: one stage, resumable exactly, single process or DDP (torchrun).

What "exact" means here: a run killed at any point and restarted with the same command ends with
bit-identical weights on CPU. That needs every input of a step to be a function of saved state:
weights, AdamW moments, the schedule (two ints), the position in the epoch (two ints; see
``synthasr.data.dataset.EpochBatches``), and the python/numpy/torch RNG states (dropout) of every rank.
Batches themselves are seeded by their position, so DataLoader workers and prefetching do not matter.

The per-step objective is ``sum(loss over the global batch) / frames(global batch) + regularizer(model)``.
Under DDP each rank scales its local sum by ``world_size / global_frames`` so that DDP's gradient
averaging reproduces exactly the gradient of one process seeing the whole global batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from synthasr.checkpoint import CheckpointError, checkpoint_is_loadable, load_checkpoint, save_checkpoint
from synthasr.config import to_dict
from synthasr.data.dataset import (AsrDataset, EncoderOutDataset, EpochBatches, dev_loader, make_loader, make_sampler,
                                   make_spec_augment)
from synthasr.train.config import TrainConfig
from synthasr.train.optim import LRSchedule, build_optimizer, trainable_parameters

PathLike = Union[str, Path]
Regularizer = Callable[[nn.Module], torch.Tensor]

log = logging.getLogger("synthasr.train")

_CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")
_EPOCH_RE = re.compile(r"^epoch-(\d+)\.pt$")


class TrainingError(RuntimeError):
    """Training cannot continue (diverged, bad resume state, no data, ...); the message says why."""


# --------------------------------------------------------------------------------------------- #
# Distributed setup
# --------------------------------------------------------------------------------------------- #
@dataclass
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _resolve_device_kind(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device: cuda requested but torch.cuda.is_available() is False")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/LOCAL_RANK), if any."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistInfo(dist.get_world_size(), rank, int(os.environ.get("LOCAL_RANK", rank)), owns_group=False)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(world_size, rank, local_rank, owns_group=True)


def _all_gather_objects(info: DistInfo, obj: Any) -> List[Any]:
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------- #
# RNG state (weights_only-safe: only tensors, ints, floats, lists)
# --------------------------------------------------------------------------------------------- #
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_rng_state() -> Dict[str, Any]:
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "mt": list(mt), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- #
# Checkpoint discovery
# --------------------------------------------------------------------------------------------- #
def list_step_checkpoints(exp_dir: PathLike) -> List[Tuple[int, Path]]:
    """``checkpoint-STEP.pt`` files in ``exp_dir`` as (step, path), oldest first."""
    out = []
    for p in Path(exp_dir).glob("checkpoint-*.pt"):
        m = _CKPT_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def list_epoch_checkpoints(exp_dir: PathLike) -> List[Tuple[int, Path]]:
    out = []
    for p in Path(exp_dir).glob("epoch-*.pt"):
        m = _EPOCH_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def _newest_loadable(candidates: List[Tuple[int, Path]]) -> Optional[Tuple[Path, Dict[str, Any]]]:
    for _, path in reversed(candidates):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping unreadable checkpoint: %s", e)
            continue
        if "train_state" in ckpt:
            check_train_state(path, ckpt["train_state"])
            return path, ckpt
    return None


# What a resumable checkpoint's train_state must hold (see _Trainer._train_state).
_TRAIN_STATE_TYPES: Dict[str, type] = {
    "step": int, "epoch": int, "batches_done": int, "bad_steps": int, "world_size": int, "seed": int,
    "optimizer": dict, "scheduler": dict, "scaler": dict, "rng": list,
}


def check_train_state(path: Path, train_state: Any) -> None:
    """One-line :class:`TrainingError` naming the file and key when ``train_state`` is malformed."""
    if not isinstance(train_state, dict):
        raise TrainingError(f"{path}: malformed train_state: expected a mapping, got {type(train_state).__name__}")
    for key, kind in _TRAIN_STATE_TYPES.items():
        if key not in train_state:
            raise TrainingError(f"{path}: malformed train_state: missing key {key!r}")
        value = train_state[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TrainingError(f"{path}: malformed train_state: {key} must be {kind.__name__}, "
                                f"got {type(value).__name__}")
    for key in ("step", "epoch", "batches_done", "bad_steps", "world_size"):
        if train_state[key] < (1 if key in ("epoch", "world_size") else 0):
            raise TrainingError(f"{path}: malformed train_state: {key} = {train_state[key]} is out of range")
    if len(train_state["rng"]) != train_state["world_size"]:
        raise TrainingError(f"{path}: malformed train_state: rng holds {len(train_state['rng'])} states "
                            f"for world_size {train_state['world_size']}")


def find_resume_checkpoint(exp_dir: PathLike) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The loaded checkpoint with the largest training step in ``exp_dir`` (None on a fresh start)."""
    found = [c for c in (_newest_loadable(list_epoch_checkpoints(exp_dir)),
                         _newest_loadable(list_step_checkpoints(exp_dir))) if c is not None]
    if not found:
        return None
    # max() keeps the first of equal steps: an epoch file wins a tie (it already closed the epoch).
    return max(found, key=lambda c: int(c[1]["train_state"]["step"]))


def prune_checkpoints(exp_dir: PathLike, keep_last_k: int, protect: Optional[PathLike] = None) -> None:
    """Delete all but the ``keep_last_k`` loadable ``checkpoint-*.pt`` with the largest steps.

    Only loadable files count (checked cheaply: tensors memory-mapped, not read): an unreadable
    ``checkpoint-999.pt`` must never push good checkpoints out. Unreadable files are left alone with
    a warning (resume skips them too); ``protect`` (the file just written) is never deleted; 0 keeps
    all; epoch files stay.
    """
    if keep_last_k <= 0:
        return
    keep = Path(protect).resolve() if protect is not None else None
    loadable = []
    for _, path in list_step_checkpoints(exp_dir):
        if _verified_loadable(path, trusted=path.resolve() == keep):
            loadable.append(path)
        else:
            log.warning("not counting unreadable %s among the kept checkpoints (left in place)", path)
    for path in loadable[:-keep_last_k]:
        if path.resolve() != keep:
            path.unlink(missing_ok=True)


# (path, size, mtime_ns) -> loadable. A checkpoint never changes after its atomic write, so each file is
# read once per process (~1.5 s for a 334 MB `medium` checkpoint with optimizer state on one CPU core).
_LOADABLE_CACHE: Dict[Tuple[str, int, int], bool] = {}


def _verified_loadable(path: Path, trusted: bool = False) -> bool:
    """Whether ``path`` loads; ``trusted`` (the file this process just wrote) skips the read."""
    try:
        stat = path.stat()
    except OSError:
        return False
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _LOADABLE_CACHE:
        _LOADABLE_CACHE[key] = trusted or checkpoint_is_loadable(path)
    return _LOADABLE_CACHE[key]


# --------------------------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------------------------- #
def _one_line(error: BaseException, limit: int = 300) -> str:
    """torch's multi-line load errors ("Error(s) in loading state_dict ...:\n\tMissing key(s) ...") as one line."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    if isinstance(error, KeyError):
        text = f"missing key {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _resolve_modules(model: nn.Module, names: Sequence[str]) -> List[nn.Module]:
    modules = []
    for name in names:
        try:
            modules.append(model.get_submodule(name))
        except AttributeError:
            raise TrainingError(f"eval_mode_modules: model has no submodule {name!r}") from None
    return modules


def _count_params(model: nn.Module) -> Tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def _model_config_dict(model: nn.Module, cfg: TrainConfig, vocab_size: int) -> Dict[str, Any]:
    config = getattr(model, "config", None)
    if config is not None and dataclasses.is_dataclass(config):
        return to_dict(config)
    if isinstance(config, dict):
        return dict(config)
    return to_dict(dataclasses.replace(cfg.model.resolved(), vocab_size=vocab_size))


def _amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if amp == "none" or device.type != "cuda":
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _setup_file_logging(exp_dir: Path, info: DistInfo) -> Optional[logging.Handler]:
    if not info.is_main:
        return None
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    path = exp_dir / "log" / f"log-train-{stamp}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


class _NullWriter:
    """Stands in for SummaryWriter on ranks other than 0."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------- #
# The trainer
# --------------------------------------------------------------------------------------------- #
@dataclass
class _Progress:
    step: int = 0  # batches consumed (global, same on every rank); drives schedule + loss warm-up
    epoch: int = 1  # 1-based epoch in progress
    batches_done: int = 0  # batches of ``epoch`` already consumed
    bad_steps: int = 0  # consecutive non-finite steps


class _Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        exp_dir: Path,
        train_cuts: Any,
        dev_cuts: Any,
        tokenizer: Any,
        model: Optional[nn.Module],
        regularizer: Optional[Regularizer],
        eval_mode_modules: Sequence[str],
        source_key: str,
        meta: Optional[Dict[str, Any]],
        info: DistInfo,
        device: torch.device,
        inputs: str = "features",
    ) -> None:
        self.cfg = cfg
        self.exp_dir = exp_dir
        self.train_cuts = train_cuts
        self.dev_cuts = dev_cuts
        self.tokenizer = tokenizer
        self.regularizer = regularizer
        self.source_key = source_key
        self.meta = dict(meta or {})
        self.info = info
        self.device = device
        self.progress = _Progress()
        self.source_base: Counter = Counter()  # counts restored from a checkpoint (rank 0 only)
        self.source_local: Counter = Counter()  # counts seen by this rank since (re)start

        seed_everything(cfg.seed)
        self.model = self._build_model(model)
        seed_everything(cfg.seed + info.rank)  # distinct dropout per rank; rank 0 == single process
        self.model.to(device)
        self.eval_modules = _resolve_modules(self.model, eval_mode_modules)
        self.model_config = _model_config_dict(self.model, cfg, tokenizer.vocab_size)
        self.params = [p for _, p in trainable_parameters(self.model)]
        self.optimizer = build_optimizer(trainable_parameters(self.model), cfg.optim)
        self.schedule = LRSchedule(self.optimizer, cfg.optim)
        self.amp_dtype = _amp_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ddp_model = self._wrap_ddp()
        self.sampler = make_sampler(
            train_cuts, max_duration=cfg.data.max_duration, shuffle=cfg.data.shuffle, seed=cfg.seed,
            bucketing=cfg.data.bucketing, num_buckets=cfg.data.num_buckets, drop_last=cfg.data.drop_last,
            world_size=info.world_size, rank=info.rank,
        )
        self.dataset = AsrDataset(
            feature_config=cfg.features, on_the_fly_features=cfg.data.on_the_fly_features,
            spec_augment=make_spec_augment(cfg.data.spec_augment), seed=cfg.seed + 1_000_003 * info.rank,
            source_key=source_key,
        )
        if inputs == "encoder_out":  # a frozen encoder's stored outputs (synthasr.data.encoder_cache)
            self.dataset = EncoderOutDataset(seed=self.dataset.seed, source_key=source_key)
        self.writer: Any = _NullWriter()
        self.interval: Dict[str, float] = {}

    # ---- setup ---------------------------------------------------------------------------- #
    def _build_model(self, model: Optional[nn.Module]) -> nn.Module:
        vocab = int(self.tokenizer.vocab_size)
        if model is not None:
            mcfg = getattr(model, "config", None)
            model_vocab = getattr(mcfg, "vocab_size", vocab) if mcfg is not None else vocab
            if model_vocab not in (0, vocab):
                raise TrainingError(f"model vocab_size {model_vocab} != tokenizer vocab_size {vocab}")
            return model
        if self.cfg.model.vocab_size not in (0, vocab):
            raise TrainingError(f"model.vocab_size {self.cfg.model.vocab_size} != tokenizer vocab_size {vocab}")
        from synthasr.model import build_model

        return build_model(dataclasses.replace(self.cfg.model, vocab_size=vocab))

    def _wrap_ddp(self) -> nn.Module:
        if not self.info.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # kind=full never touches the simple-loss projections (simple_am_proj/simple_lm_proj): without
        # find_unused_parameters DDP's reducer waits for their gradients and the first backward fails.
        # Globally unused parameters keep grad None, so AdamW skips them exactly as in one process.
        find_unused = self.cfg.ddp_find_unused_parameters or self.cfg.loss.kind == "full"
        if find_unused and not self.cfg.ddp_find_unused_parameters:
            log.info("DDP: find_unused_parameters on (loss.kind=full leaves the simple-loss projections unused)")
        return DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=find_unused)

    def _set_train_mode(self) -> None:
        self.model.train()
        for m in self.eval_modules:
            m.eval()

    # ---- checkpoints ---------------------------------------------------------------------- #
    def _source_counts(self) -> Dict[str, int]:
        total = Counter(self.source_base)
        for local in _all_gather_objects(self.info, dict(self.source_local)):
            total.update(local)
        return dict(sorted(total.items()))

    def _train_state(self) -> Dict[str, Any]:
        rng = _all_gather_objects(self.info, get_rng_state())
        p = self.progress
        return {
            "step": p.step, "epoch": p.epoch, "batches_done": p.batches_done, "bad_steps": p.bad_steps,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng, "world_size": self.info.world_size,
            "seed": self.cfg.seed,
        }

    def _meta(self, source_counts: Dict[str, int]) -> Dict[str, Any]:
        p = self.progress
        return {**self.meta, "step": p.step, "epoch": p.epoch, "source_counts": source_counts, "seed": self.cfg.seed}

    def save(self, path: Path, with_train_state: bool = True) -> None:
        """Collective (all ranks gather RNG/source counts); rank 0 writes atomically."""
        train_state = self._train_state() if with_train_state else None
        counts = self._source_counts()
        if not self.info.is_main:
            return
        save_checkpoint(
            path, self.model.state_dict(), self.model_config, to_dict(self.cfg.features),
            self.tokenizer.to_bytes(), train_state=train_state, meta=self._meta(counts),
        )
        log.info("saved %s", path)

    def _remove_stale_temp_files(self) -> None:
        """Temp files a killed writer left behind (``.checkpoint-40.tmpab12.pt``); never read anyway."""
        if not self.info.is_main:
            return
        for path in self.exp_dir.glob(".*.tmp*.pt"):
            path.unlink(missing_ok=True)

    def _maybe_resume(self) -> None:
        self._remove_stale_temp_files()
        found = find_resume_checkpoint(self.exp_dir)
        if found is None:
            log.info("fresh start (no checkpoint in %s)", self.exp_dir)
            return
        path, ckpt = found
        ts = ckpt["train_state"]
        if int(ts["world_size"]) != self.info.world_size:
            raise TrainingError(
                f"{path}: saved with world_size={ts['world_size']}, now {self.info.world_size}; "
                "resume with the same number of processes"
            )
        if int(ts["seed"]) != self.cfg.seed:
            raise TrainingError(f"{path}: saved with seed={ts['seed']}, config has seed={self.cfg.seed}")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ts["optimizer"])
            self.schedule.load_state_dict(ts["scheduler"])
            self.scaler.load_state_dict(ts["scaler"])
            set_rng_state(ts["rng"][self.info.rank])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
            raise TrainingError(f"{path}: cannot resume from this checkpoint: {_one_line(e)}") from None
        self.progress = _Progress(int(ts["step"]), int(ts["epoch"]), int(ts["batches_done"]), int(ts["bad_steps"]))
        if self.info.is_main:
            self.source_base = Counter({k: int(v) for k, v in ckpt["meta"].get("source_counts", {}).items()})
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.progress.step,
                 self.progress.epoch, self.progress.batches_done)

    # ---- one step ------------------------------------------------------------------------- #
    def _forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        cached = "encoder_out" in batch  # stored outputs of the frozen encoder: start after it
        feats = batch["encoder_out" if cached else "features"].to(self.device, non_blocking=True)
        lens = batch["encoder_out_lens" if cached else "feature_lens"].to(self.device, non_blocking=True)
        tokens = self.tokenizer.encode(list(batch["texts"]))
        extra = {"from_encoder_out": True} if cached else {}
        with self._autocast():
            return self.ddp_model(feats, lens, tokens, self.cfg.loss, self.progress.step, **extra)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _reduce_stats(self, out: Dict[str, torch.Tensor]) -> Dict[str, float]:
        keys = sorted(k for k in out if k != "num_frames")
        values = [torch.as_tensor(out[k], device=self.device).detach().float().reshape(()) for k in keys]
        frames = torch.as_tensor(out["num_frames"], device=self.device).detach().float().reshape(())
        nonfinite = (~torch.isfinite(values[keys.index("loss")])).float()
        stats = torch.stack(values + [frames, nonfinite])
        if self.info.enabled:
            import torch.distributed as dist

            dist.all_reduce(stats)
        flat = stats.tolist()
        result = dict(zip(keys, flat[: len(keys)]))
        result["num_frames"] = flat[len(keys)]
        result["nonfinite"] = flat[len(keys) + 1]
        return result

    def train_step(self, batch: Dict[str, Any]) -> None:
        out = self._forward(batch)
        stats = self._reduce_stats(out)
        if stats["nonfinite"] > 0:
            if self.info.enabled:  # keep DDP's reducer in lock-step; the gradients are discarded
                (out["loss"] * 0.0).backward()
            self._bad_step(batch, f"non-finite loss ({stats['loss']})")
            return
        frames = max(stats["num_frames"], 1.0)
        objective = out["loss"].float() * (self.info.world_size / frames)
        reg = None
        if self.regularizer is not None:
            reg = self.regularizer(self.model)
            objective = objective + reg
        self.scaler.scale(objective).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.max_grad_norm))
        if not math.isfinite(grad_norm):
            if self.amp_dtype != torch.float16:
                self._bad_step(batch, f"non-finite gradient norm ({grad_norm})")
                return
            # fp16 overflow: GradScaler skips this update and lowers its scale; not a bad step.
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            log.info("step %d: fp16 gradient overflow; loss scale now %g", self.progress.step, self.scaler.get_scale())
            return
        self.scaler.step(self.optimizer)  # with fp16 an overflow is skipped here and the scale shrinks
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.bad_steps = 0
        self._accumulate(stats, frames, reg, grad_norm)

    def _bad_step(self, batch: Dict[str, Any], why: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.bad_steps += 1
        ids = [i for ids in _all_gather_objects(self.info, list(batch["cut_ids"])) for i in ids]
        shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
        log.warning("step %d: %s; batch skipped (%d consecutive); cuts: %s", self.progress.step, why,
                    self.progress.bad_steps, shown)
        self.writer.add_scalar("train/bad_steps", self.progress.bad_steps, self.progress.step)
        if self.progress.bad_steps > self.cfg.max_bad_steps:
            raise TrainingError(
                f"training diverged: {self.progress.bad_steps} consecutive bad steps at step {self.progress.step} "
                f"(max_bad_steps={self.cfg.max_bad_steps}); last: {why}; cuts: {shown}"
            )

    def _accumulate(self, stats: Dict[str, float], frames: float, reg: Optional[torch.Tensor],
                    grad_norm: float) -> None:
        acc = self.interval
        for k, v in stats.items():
            if k not in ("num_frames", "nonfinite"):
                acc[k] = acc.get(k, 0.0) + v
        acc["num_frames"] = acc.get("num_frames", 0.0) + frames
        acc["reg_loss"] = acc.get("reg_loss", 0.0) + (float(reg.detach()) if reg is not None else 0.0)
        acc["grad_norm"] = acc.get("grad_norm", 0.0) + grad_norm
        acc["steps"] = acc.get("steps", 0.0) + 1

    # ---- logging / validation ------------------------------------------------------------- #
    def _log_interval(self) -> Optional[float]:
        acc, self.interval = self.interval, {}
        counts = self._source_counts()  # collective
        if not acc or not self.info.is_main:
            return None
        step, frames, n = self.progress.step, max(acc.pop("num_frames"), 1.0), acc.pop("steps")
        per_frame = {k: acc.pop(k) / frames for k in list(acc) if k not in ("reg_loss", "grad_norm")}
        for k, v in per_frame.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.add_scalar("train/reg_loss", acc["reg_loss"] / n, step)
        self.writer.add_scalar("train/grad_norm", acc["grad_norm"] / n, step)
        self.writer.add_scalar("train/lr", self.schedule.current_lr(), step)
        total = sum(counts.values()) or 1
        for name, c in counts.items():
            self.writer.add_scalar(f"train/source_frac/{name}", c / total, step)
        fracs = " ".join(f"{k}={c / total:.3f}" for k, c in counts.items())
        parts = " ".join(f"{k}={v:.6g}" for k, v in sorted(per_frame.items()))
        log.info("epoch %d step %d: %s reg=%.6g grad_norm=%.6g lr=%.4g sources[%s]", self.progress.epoch, step,
                 parts, acc["reg_loss"] / n, acc["grad_norm"] / n, self.schedule.current_lr(), fracs)
        return per_frame.get("loss")

    def validate(self) -> None:
        """Dev loss (and WER when synthasr.decode is available) on rank 0; RNG states untouched."""
        if self.dev_cuts is None or not self.info.is_main:
            return
        saved = get_rng_state()
        try:
            self.model.eval()
            total, frames = 0.0, 0.0
            with torch.no_grad():
                loader = dev_loader(self.dev_cuts, self.cfg.features, self.cfg.data.max_duration, self.source_key)
                for batch in loader:
                    feats = batch["features"].to(self.device)
                    lens = batch["feature_lens"].to(self.device)
                    with self._autocast():
                        out = self.model(feats, lens, self.tokenizer.encode(list(batch["texts"])), self.cfg.loss,
                                         self.progress.step)
                    total += float(out["loss"])
                    frames += float(out["num_frames"])
            dev_loss = total / max(frames, 1.0)
            self.writer.add_scalar("valid/loss", dev_loss, self.progress.step)
            msg = f"validation at step {self.progress.step}: dev loss {dev_loss:.4f}"
            wer = self._dev_wer()
            if wer is not None:
                self.writer.add_scalar("valid/wer", wer, self.progress.step)
                msg += f", dev WER {wer:.2f}%"
            log.info(msg)
        finally:
            set_rng_state(saved)
            self._set_train_mode()

    def _dev_wer(self) -> Optional[float]:
        if not self.cfg.valid_wer:
            return None
        try:
            from synthasr.decode.evaluation import evaluate
        except ImportError:
            return None
        result = evaluate(
            self.model, self.tokenizer, self.dev_cuts, out_dir=self.exp_dir / "valid", test_set_name="dev",
            device=str(self.device), max_duration=self.cfg.data.max_duration,
            feature_config=self.cfg.features, suffix=f"step-{self.progress.step}",
        )
        return float(result.wer)

    # ---- main loop ------------------------------------------------------------------------ #
    def run(self) -> Path:
        self._maybe_resume()
        trainable, total = _count_params(self.model)
        log.info("parameters: %d trainable of %d total (%.1f%%); device %s; world size %d; amp %s",
                 trainable, total, 100.0 * trainable / max(total, 1), self.device, self.info.world_size,
                 self.cfg.amp if self.amp_dtype is not None else "none")
        if self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.exp_dir / "tensorboard"), purge_step=self.progress.step or None)
        try:
            self._loop()
            final = self.exp_dir / "final.pt"
            self.save(final, with_train_state=False)
            log.info("training finished at step %d; wrote %s", self.progress.step, final)
            return final
        finally:
            self.writer.close()

    def _finished(self) -> bool:
        if self.cfg.max_steps is not None:
            return self.progress.step >= self.cfg.max_steps
        return self.progress.epoch > self.cfg.num_epochs

    def _loop(self) -> None:
        from tqdm import tqdm

        self._set_train_mode()
        while not self._finished():
            p = self.progress
            self.schedule.set_epochs_done(p.epoch - 1)
            loader = make_loader(self.dataset, EpochBatches(self.sampler, p.epoch, p.batches_done),
                                 self.cfg.data.num_workers)
            bar = tqdm(loader, desc=f"epoch {p.epoch}", initial=p.batches_done, dynamic_ncols=True,
                       disable=not (self.info.is_main and self.cfg.progress_bar))
            consumed = 0
            for batch in bar:
                self._count_sources(batch)
                self.train_step(batch)
                consumed += 1
                p.step += 1
                p.batches_done += 1
                self.schedule.step()
                self._periodic(bar)
                if self._finished():
                    break
            bar.close()
            if self._finished() and self.cfg.max_steps is not None:
                return
            if consumed == 0 and p.batches_done == 0:
                raise TrainingError(f"epoch {p.epoch} produced no batches: are the training cuts empty?")
            self._end_epoch()

    def _count_sources(self, batch: Dict[str, Any]) -> None:
        self.source_local.update(batch["sources"])

    def _periodic(self, bar: Any) -> None:
        cfg, step = self.cfg, self.progress.step
        if cfg.log_every_n_steps and step % cfg.log_every_n_steps == 0:
            loss = self._log_interval()
            if loss is not None:
                bar.set_postfix(step=step, loss=f"{loss:.4f}")
        if cfg.valid_every_n_steps and step % cfg.valid_every_n_steps == 0:
            self.validate()
        if cfg.checkpoint_every_n_steps and step % cfg.checkpoint_every_n_steps == 0:
            self.save(self.exp_dir / f"checkpoint-{step}.pt")
            if self.info.is_main:
                prune_checkpoints(self.exp_dir, cfg.keep_last_k, protect=self.exp_dir / f"checkpoint-{step}.pt")

    def _end_epoch(self) -> None:
        finished_epoch = self.progress.epoch
        if self.interval:
            self._log_interval()
        self.validate()
        self.progress.epoch += 1
        self.progress.batches_done = 0
        self.save(self.exp_dir / f"epoch-{finished_epoch}.pt")


# --------------------------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------------------------- #
def flushes_subnormals() -> bool:
    """Whether this thread flushes subnormal floats to zero (``torch.set_flush_denormal``).

    Subnormals make x86 arithmetic many times slower, and training a transducer produces ever more of
    them as it grows confident: the medication recipe's baseline went from 12 to 25 s per 50 steps over
    9 epochs. The flag is per thread, and OpenMP's worker threads copy it from the main thread only when
    they start, at torch's first parallel operation: set it before any torch work (``synthasr train``
    does) to flush in every thread. :func:`fit` sets it for its own thread when it is off."""
    return float(torch.tensor([1e-40]) * 1.0) == 0.0  # one element: computed on this thread


def fit(
    cfg: TrainConfig,
    exp_dir: PathLike,
    train_cuts: Any,
    dev_cuts: Any = None,
    tokenizer: Any = None,
    model: Optional[nn.Module] = None,
    regularizer: Optional[Regularizer] = None,
    eval_mode_modules: Sequence[str] = (),
    source_key: str = "domain",
    meta: Optional[Dict[str, Any]] = None,
    inputs: str = "features",
) -> Path:
    """Train (or resume) one stage in ``exp_dir``; return ``exp_dir/final.pt``.

    Returns at once when ``final.pt`` exists (the stage is finished). Only trainable parameters
    (``requires_grad``) are optimized; ``regularizer(model)`` is added to the per-frame loss.
    ``inputs="encoder_out"``: train from the ``encoder_out`` arrays the cuts carry (built by
    :func:`synthasr.data.encoder_cache.build_encoder_cache` from this model's frozen encoder); the
    checkpoints still hold the whole model and validation runs it from features.
    """
    exp_dir = Path(exp_dir)
    final = exp_dir / "final.pt"
    if final.is_file():
        return final
    if tokenizer is None:
        raise TrainingError("fit: a tokenizer is required")
    _check_inputs(cfg, model, inputs)
    _check_config(cfg)
    device_kind = _resolve_device_kind(cfg.device)
    info = setup_distributed(device_kind)
    device = torch.device(device_kind, info.local_rank) if device_kind == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (all_gather_object) use the current device
    exp_dir.mkdir(parents=True, exist_ok=True)
    handler = _setup_file_logging(exp_dir, info)
    flushing = device.type == "cpu" and not flushes_subnormals() and torch.set_flush_denormal(True)
    try:
        if cfg.amp != "none" and device.type != "cuda":
            log.warning("amp=%s ignored: mixed precision is used on CUDA only", cfg.amp)
        _write_config(exp_dir, cfg, info)
        trainer = _Trainer(cfg, exp_dir, train_cuts, dev_cuts, tokenizer, model, regularizer, eval_mode_modules,
                           source_key, meta, info, device, inputs=inputs)
        return trainer.run()
    finally:
        if flushing:
            torch.set_flush_denormal(False)  # as it was before fit()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        if info.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _check_config(cfg: TrainConfig) -> None:
    """Refuse what would only fail (or silently train NaN) later: invalid or non-finite values in a
    config built in Python, and a loss backend this environment lacks (before any data is loaded)."""
    from synthasr.loss.backends import LossBackendError, require_backend
    from synthasr.train.config import validate_tree

    validate_tree(cfg)
    try:
        require_backend(cfg.loss.backend)
    except LossBackendError as e:
        raise TrainingError(f"loss.backend: {e}") from None


def _check_inputs(cfg: TrainConfig, model: Optional[nn.Module], inputs: str) -> None:
    """Stored encoder outputs are only the encoder's outputs while it is frozen and nothing alters features."""
    if inputs == "features":
        return
    if inputs != "encoder_out":
        raise TrainingError(f"fit: inputs must be 'features' or 'encoder_out', got {inputs!r}")
    if model is None or any(p.requires_grad for p in model.encoder.parameters()):
        raise TrainingError("fit: inputs='encoder_out' needs a given model whose encoder is frozen (requires_grad False)")
    if cfg.data.spec_augment.enabled:
        raise TrainingError("data.spec_augment: SpecAugment acts on features and cannot apply to stored encoder "
                            "outputs (inputs='encoder_out'); set data.spec_augment.enabled: false")


def _write_config(exp_dir: Path, cfg: TrainConfig, info: DistInfo) -> None:
    if not info.is_main:
        return
    import yaml

    from synthasr.utils.io import atomic_write

    with atomic_write(exp_dir / "train-config.yaml") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
