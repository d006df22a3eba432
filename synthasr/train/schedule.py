"""Multi-stage continual-learning schedule: mix, augment, freeze, regularise, train, evaluate, report.

A schedule is one YAML file::

    exp_dir: exp/schedule              # optional; run_schedule(exp_dir=...) overrides it
    baseline: general                  # stage the report compares against (default: first stage)
    base:
      bpe_model: data/lang_bpe_500/bpe.model
      train: {model: {preset: small}, optim: {lr: 1.0e-3}, max_steps: 20000, ...}   # a TrainConfig
      sources:
        general: {cuts: [data/fbank/general_train_cuts.jsonl.gz], domain: general}
        medication_synth: [data/fbank/med_synth_cuts.jsonl.gz]       # short form: a list of manifests
      eval_sets:
        general_test: {cuts: data/fbank/general_test_cuts.jsonl.gz, domain: general}
        medication_test: data/fbank/med_test_cuts.jsonl.gz           # short form; domain read from cuts
      assets: {num_noises: 30, num_rirs: 40, babble_source: medication_synth}
      decode: {method: greedy_search}
    stages:
      - {name: general, init: scratch, data: {general: 1.0}}
      - name: adapt
        init: previous                 # scratch | previous | stage:<earlier stage> | path/to/checkpoint.pt
        data: {general: 0.7, medication_synth: 0.3}
        augment: {medication_synth: {speed: [0.9, 1.0, 1.1], noise_prob: 0.5, reverb_prob: 0.3}}
        freeze: {patterns: [encoder], eval_mode: true}   # or {encoder_layers_trainable: 2}: top 2 layers train
        regularization: {type: ewc, lambda: {encoder: 1000.0}, fisher_source: general, fisher_batches: 50}
        lr: 3.0e-4
        max_steps: 5000
        eval: [general_test, medication_test]

Each stage trains in ``exp_dir/<stage>/`` with :func:`synthasr.train.trainer.fit` (which auto-resumes),
is decoded on its eval sets (icefall result files in ``exp_dir/<stage>/decode/``, summary in
``exp_dir/<stage>/eval.json``) and the forgetting report is rewritten. A stage whose ``final.pt``
and ``eval.json`` both exist is skipped. Every config error is found before any training starts.
Relative paths are resolved against the current working directory (icefall's convention: run from
the recipe directory).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

from synthasr.augment.config import AugmentConfig
from synthasr.config import ConfigError, from_dict, load_yaml, to_dict
from synthasr.utils.io import atomic_write

log = logging.getLogger(__name__)
PathLike = Union[str, Path]
MIX_SOURCE_KEY = "mix_source"


class ScheduleError(ValueError):
    """The schedule cannot run; the message names the file, the stage and the key."""


# --------------------------------------------------------------------------------------------- #
# Config dataclasses
# --------------------------------------------------------------------------------------------- #
@dataclass
class SourceConfig:
    """A training source: one or more cut manifests; ``domain`` tags supervisions lacking a domain.

    ``where`` keeps only the cuts whose tags match (``{engine: espeak}``, or a list of allowed values):
    a leave-one-engine-out source is a filter over the full manifests, not another copy of them, and
    with ``encoder_cache`` it reuses the cache of an unfiltered source over the same manifests."""

    cuts: List[str]
    domain: Optional[str] = None
    where: Optional[Dict[str, Union[str, List[str]]]] = None


@dataclass
class EvalSetConfig:
    """An evaluation set; ``domain`` defaults to the majority ``custom['domain']`` of its cuts.
    ``breakdown`` (a cut tag, e.g. ``engine``) also scores every decode per tag value."""

    cuts: str
    domain: Optional[str] = None
    breakdown: Optional[str] = None


@dataclass
class AssetsConfig:
    """Noise and RIR collections built once per experiment (``exp_dir/assets``) when a stage needs them."""

    num_noises: int = 30
    noise_duration: float = 20.0
    babble_source: Optional[str] = None
    real_noise: bool = True
    num_rirs: int = 40
    seed: int = 0


@dataclass
class DecodeConfig:
    method: Literal["greedy_search", "modified_beam_search"] = "greedy_search"
    beam_size: int = 4
    max_duration: float = 300.0
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class TermsConfig:
    """Term list scored next to WER (name recall/precision): ``file`` as for ``synthasr evaluate --terms``;
    ``group_column`` (1-based, e.g. 3 for names_used.txt's seen/unseen) splits recall by group."""

    file: str
    group_column: Optional[int] = None


@dataclass
class BaseConfig:
    bpe_model: str
    sources: Dict[str, Union[List[str], SourceConfig]]
    eval_sets: Dict[str, Union[str, EvalSetConfig]] = field(default_factory=dict)
    train: Dict[str, Any] = field(default_factory=dict)
    assets: AssetsConfig = field(default_factory=AssetsConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    terms: Optional[TermsConfig] = None


@dataclass
class FreezeConfig:
    """``patterns``: modules to freeze (see :mod:`synthasr.train.freeze`); ``encoder_layers_trainable: N``
    additionally freezes the encoder's stem and all but its top N layers."""

    patterns: List[str] = field(default_factory=list)
    eval_mode: bool = True
    encoder_layers_trainable: Optional[int] = None


@dataclass
class RegularizationConfig:
    """``lambda`` (YAML key) is a number or ``{module_prefix: number}``; ``""`` is the default prefix.

    The Fisher sample: the utterances of the first ``fisher_batches`` batches (``fisher_max_duration``
    seconds each, default the stage's ``max_duration``) of ``fisher_source`` shuffled with
    ``fisher_seed``, at most ``fisher_utterances`` of them; one gradient per utterance.
    """

    type: Literal["none", "ewc", "online_ewc", "l2sp"] = "none"
    lambda_: Union[float, Dict[str, float]] = 0.0
    fisher_source: Optional[str] = None
    fisher_batches: int = 50
    fisher_max_duration: Optional[float] = None
    fisher_utterances: Optional[int] = None
    fisher_seed: int = 0
    gamma: float = 1.0


@dataclass
class StageConfig:
    name: str
    data: Dict[str, float]
    init: str = "previous"
    num_cuts: Optional[int] = None
    augment: Dict[str, AugmentConfig] = field(default_factory=dict)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    lr: Optional[float] = None
    max_steps: Optional[int] = None
    num_epochs: Optional[int] = None
    train: Dict[str, Any] = field(default_factory=dict)
    dev: Optional[str] = None
    eval: Optional[List[str]] = None
    encoder_cache: bool = False  # train from stored outputs of the (wholly frozen) encoder
    # With encoder_cache: the augmented sources' outputs are also stored for this many augmented copies
    # of every cut (offline, Kaldi-style: drawn once, not per epoch); training mixes clean + copies.
    augment_copies: int = 0


@dataclass
class ScheduleConfig:
    base: BaseConfig
    stages: List[StageConfig]
    exp_dir: Optional[str] = None
    baseline: Optional[str] = None


@dataclass
class StageResult:
    name: str
    dir: Path
    checkpoint: Path
    results: Dict[str, Dict[str, Any]]
    skipped: bool


@dataclass
class ScheduleResult:
    exp_dir: Path
    stages: List[StageResult]
    report: Optional[Dict[str, Any]]


# --------------------------------------------------------------------------------------------- #
# Loading + validation (everything that can fail before training)
# --------------------------------------------------------------------------------------------- #
def load_schedule(path: PathLike) -> ScheduleConfig:
    """Strictly load a schedule YAML (unknown keys / wrong types -> one-line ConfigError)."""
    data = load_yaml(path)
    stages = data.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):  # from_dict names a non-list
        reg = stage.get("regularization") if isinstance(stage, dict) else None
        if isinstance(reg, dict) and "lambda" in reg:
            if "lambda_" in reg:
                raise ConfigError(f"{path}: stages[{i}].regularization: give 'lambda' only once")
            reg["lambda_"] = reg.pop("lambda")
    return from_dict(ScheduleConfig, data, where=str(path))


@dataclass
class _Plan:
    """Validated, loaded schedule: what every stage needs, computed before any training."""

    cfg: ScheduleConfig
    path: Path
    exp_dir: Path
    tokenizer: Any
    sources: Dict[str, Any]
    eval_sets: Dict[str, Any]
    eval_domains: Dict[str, str]
    train_cfgs: Dict[str, Any]
    selected: List[StageConfig]
    terms: Any = None  # synthasr.score.TermList or None


def _err(path: Path, where: str, msg: str) -> ScheduleError:
    return ScheduleError(f"{path}: {where}: {msg}")


def _load_cuts(paths: Sequence[str], path: Path, where: str):
    from lhotse import CutSet

    if any(Path(p).is_dir() for p in paths):  # lhotse Shar directories: streamed, never loaded whole
        return _load_shar(paths, path, where)
    sets = []
    for p in paths:
        if not Path(p).is_file():
            raise _err(path, where, f"cut manifest {p} not found")
        try:
            loaded = CutSet.from_file(p)  # lhotse returns None for an empty manifest
            sets.append(loaded.to_eager() if loaded is not None else CutSet.from_cuts([]))
        except Exception as e:  # noqa: BLE001 - report any unreadable manifest in one line
            raise _err(path, where, f"cannot read {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    cuts = sets[0] if len(sets) == 1 else CutSet.from_cuts(c for s in sets for c in s)
    if len(cuts) == 0:
        raise _err(path, where, f"has no cuts ({', '.join(paths)})")
    return cuts


def _load_shar(paths: Sequence[str], path: Path, where: str):
    """A lazy CutSet over Shar directories, shards shuffled per epoch (:mod:`synthasr.data.shar`)."""
    from synthasr.data.shar import SharError, load_shar

    files = [p for p in paths if not Path(p).is_dir()]
    if files:
        raise _err(path, where, f"mixes Shar directories and cut manifests ({files[0]}); use one kind per source")
    try:
        cuts = load_shar(paths, shuffle_shards=True)
    except SharError as e:
        raise _err(path, where, str(e)) from None
    if len(cuts) == 0:
        raise _err(path, where, f"has no cuts ({', '.join(paths)})")
    return cuts


def _tag_domain(cuts, domain: Optional[str]):
    """Fill ``custom['domain']`` on supervisions that lack it (never overwrites an existing tag)."""
    if domain is None:
        return cuts
    from lhotse import CutSet

    if cuts.is_lazy:  # a Shar source: tag as it streams (iterating it here would read all its audio)
        from lhotse.lazy import LazyMapper

        return CutSet(LazyMapper(cuts.data, fn=_DomainTagger(domain)))
    return CutSet.from_cuts(_DomainTagger(domain)(c) for c in cuts)


class _DomainTagger:
    """Picklable per-cut step of :func:`_tag_domain`."""

    def __init__(self, domain: str) -> None:
        self.domain = domain

    def __call__(self, cut):
        from lhotse.utils import fastcopy

        sups = [s if (s.custom or {}).get("domain") else fastcopy(s, custom={**(s.custom or {}), "domain": self.domain})
                for s in cut.supervisions]
        return fastcopy(cut, supervisions=sups)


def _check_tags(cuts, field: str, path: Path, where: str) -> None:
    from synthasr.data.tags import TagError, tag_values

    try:
        tag_values(cuts, field)
    except TagError as e:
        raise _err(path, where, str(e)) from None


def _select_source(cuts, spec: SourceConfig, path: Path, where: str):
    """The cuts matching ``spec.where``; no match at all is an error (a typo in a tag value)."""
    from synthasr.data.tags import TagError, select_cuts

    if cuts.is_lazy:  # a Shar source: filtered as it streams; a missing tag fails when it is read
        return select_cuts(cuts, spec.where)
    for field in spec.where:
        _check_tags(cuts, field, path, where)
    try:
        chosen = select_cuts(cuts, spec.where)
    except TagError as e:  # pragma: no cover - _check_tags found every tag
        raise _err(path, where, str(e)) from None
    if len(chosen) == 0:
        raise _err(path, where, f"no cut of {', '.join(spec.cuts)} matches {dict(spec.where)}")
    return chosen


def _cache_parent(plan: "_Plan", name: str) -> Optional[str]:
    """For a filtered source (``where``), an unfiltered source over the same manifests whose encoder
    cache it can reuse; None otherwise."""
    specs = {n: SourceConfig(cuts=s) if isinstance(s, list) else s for n, s in plan.cfg.base.sources.items()}
    spec = specs[name]
    if not spec.where:
        return None
    for other, o in specs.items():
        if other != name and not o.where and list(o.cuts) == list(spec.cuts):
            return other
    return None


def _majority_domain(cuts) -> str:
    from synthasr.data.mixing import source_counts

    counts = source_counts(cuts, "domain")
    return max(counts, key=lambda k: (counts[k], k)) if counts else "unknown"


def _stage_train_config(base_train: Dict[str, Any], stage: StageConfig, path: Path, where: str):
    from synthasr.train.config import TrainConfig

    merged = _deep_merge(copy.deepcopy(base_train), stage.train)
    if stage.lr is not None:
        merged.setdefault("optim", {})["lr"] = stage.lr
    if stage.max_steps is not None:
        merged["max_steps"] = stage.max_steps
    if stage.num_epochs is not None:
        merged["num_epochs"] = stage.num_epochs
    try:
        return from_dict(TrainConfig, merged, where=f"{path}: {where}", key="train")
    except ConfigError as e:
        raise ScheduleError(str(e)) from None


def _deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def validate_schedule(
    path: PathLike, exp_dir: Optional[PathLike] = None, stages: Optional[Sequence[str]] = None
) -> _Plan:
    """Load the YAML and check every stage (data, weights, freeze, regulariser, init, eval sets)."""
    path = Path(path)
    try:
        cfg = load_schedule(path)
    except ConfigError as e:
        raise ScheduleError(str(e)) from None
    exp = exp_dir if exp_dir is not None else cfg.exp_dir
    if exp is None:
        raise _err(path, "exp_dir", "not set (give exp_dir in the schedule or run_schedule(exp_dir=...))")
    exp_dir = Path(exp)
    base = cfg.base
    if not cfg.stages:
        raise _err(path, "stages", "no stages")
    names = [s.name for s in cfg.stages]
    for i, s in enumerate(cfg.stages):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", s.name):
            raise _err(path, f"stages[{i}].name", f"{s.name!r} must be a plain directory name ([A-Za-z0-9_.-])")
        if names.count(s.name) > 1:
            raise _err(path, f"stages[{i}].name", f"duplicate stage name {s.name!r}")
    if cfg.baseline is not None and cfg.baseline not in names:
        raise _err(path, "baseline", f"{cfg.baseline!r} is not a stage ({', '.join(names)})")
    selected = list(cfg.stages)
    if stages is not None:
        unknown = [s for s in stages if s not in names]
        if unknown:
            raise _err(path, "stages", f"unknown stage {unknown[0]!r} requested (stages: {', '.join(names)})")
        selected = [s for s in cfg.stages if s.name in stages]

    tokenizer = _load_tokenizer(base.bpe_model, path)
    sources = {}
    for name, spec in base.sources.items():
        spec = SourceConfig(cuts=spec) if isinstance(spec, list) else spec
        cuts = _load_cuts(spec.cuts, path, f"base.sources.{name}")
        if spec.where:
            cuts = _select_source(cuts, spec, path, f"base.sources.{name}.where")
        sources[name] = _tag_domain(cuts, spec.domain)
    eval_sets, eval_domains = {}, {}
    for name, spec in base.eval_sets.items():
        spec = EvalSetConfig(cuts=spec) if isinstance(spec, str) else spec
        cuts = _load_cuts([spec.cuts], path, f"base.eval_sets.{name}")
        eval_sets[name] = _tag_domain(cuts, spec.domain)
        eval_domains[name] = spec.domain or _majority_domain(cuts)
        if spec.breakdown:
            _check_tags(cuts, spec.breakdown, path, f"base.eval_sets.{name}.breakdown")
    if base.assets.babble_source is not None and base.assets.babble_source not in sources:
        raise _err(path, "base.assets.babble_source", f"unknown source {base.assets.babble_source!r}")

    train_cfgs = {}
    for i, stage in enumerate(cfg.stages):
        where = f"stages[{i}] ({stage.name})"
        train_cfgs[stage.name] = _stage_train_config(base.train, stage, path, where)
        _validate_stage(path, where, i, stage, cfg, sources, eval_sets, train_cfgs[stage.name], tokenizer, exp_dir)
    selected_names = {s.name for s in selected}
    for i, stage in enumerate(cfg.stages):
        prev = _init_stage_name(cfg, stage, i)
        if stage.name in selected_names and prev is not None:
            if prev not in selected_names and not (exp_dir / prev / "final.pt").is_file():
                raise _err(path, f"stages[{i}] ({stage.name}).init",
                           f"stage {prev!r} is not being run and {exp_dir / prev / 'final.pt'} is missing")
    return _Plan(cfg, path, exp_dir, tokenizer, sources, eval_sets, eval_domains, train_cfgs, selected,
                 terms=_load_terms(base.terms, path))


def _load_terms(spec: Optional[TermsConfig], path: Path):
    from synthasr.score import ScoreError, TermList

    try:
        return None if spec is None else TermList.from_file(spec.file, spec.group_column)
    except ScoreError as e:
        raise _err(path, "base.terms", str(e)) from None


def _load_tokenizer(bpe_model: str, path: Path):
    from synthasr.tokenizer import Tokenizer

    if not Path(bpe_model).is_file():
        raise _err(path, "base.bpe_model", f"{bpe_model} not found")
    try:
        return Tokenizer.load(bpe_model)
    except Exception as e:  # noqa: BLE001
        raise _err(path, "base.bpe_model", f"cannot load {bpe_model}: {e}") from None


def _validate_stage(path, where, i, stage, cfg, sources, eval_sets, train_cfg, tokenizer, exp_dir) -> None:
    from synthasr.data.mixing import MixingError, normalized_weights
    from synthasr.train.freeze import FreezeError, check_patterns, resolve_freeze_patterns
    from synthasr.train.regularization import RegularizationError, resolve_lambdas

    try:
        normalized_weights(sources, stage.data)
    except MixingError as e:
        raise _err(path, f"{where}.data", str(e)) from None
    for src in stage.augment:
        if src not in stage.data:
            raise _err(path, f"{where}.augment", f"augmentation for {src!r}, which is not in this stage's data")
    if stage.num_cuts is not None and stage.num_cuts <= 0:
        raise _err(path, f"{where}.num_cuts", f"must be positive, got {stage.num_cuts}")
    if stage.augment_copies < 0:
        raise _err(path, f"{where}.augment_copies", f"must be >= 0, got {stage.augment_copies}")
    if stage.augment_copies and not stage.encoder_cache:
        raise _err(path, f"{where}.augment_copies", "needs encoder_cache: true (without the cache, augmentation is "
                   "drawn afresh every epoch; drop augment_copies)")
    if stage.augment_copies and not _augmented_sources(stage):
        raise _err(path, f"{where}.augment_copies", "no source of this stage has an augmentation to copy")

    if stage.init == "previous":
        if i == 0:
            raise _err(path, f"{where}.init", "'previous' but this is the first stage")
    elif stage.init.startswith("stage:"):
        earlier = [s.name for s in cfg.stages[:i]]
        if stage.init[len("stage:"):] not in earlier:
            raise _err(path, f"{where}.init", f"{stage.init!r} names no earlier stage (earlier: {', '.join(earlier) or 'none'})")
    elif stage.init != "scratch" and not Path(stage.init).is_file():
        raise _err(path, f"{where}.init", f"checkpoint {stage.init} not found")

    model = _skeleton(stage, train_cfg, tokenizer, path, where)
    try:
        patterns = resolve_freeze_patterns(model, stage.freeze.patterns, stage.freeze.encoder_layers_trainable)
        check_patterns(model, patterns)
    except FreezeError as e:
        raise _err(path, f"{where}.freeze", str(e)) from None
    _validate_encoder_cache(path, where, stage, model, patterns, train_cfg)

    reg = stage.regularization
    if reg.type != "none":
        if stage.init == "scratch":
            raise _err(path, f"{where}.regularization", f"{reg.type} needs previous weights, but init is 'scratch'")
        if reg.type in ("ewc", "online_ewc"):
            if reg.fisher_source is None:
                raise _err(path, f"{where}.regularization", f"{reg.type} needs fisher_source (old-domain source name)")
            if reg.fisher_source not in sources:
                raise _err(path, f"{where}.regularization.fisher_source",
                           f"unknown source {reg.fisher_source!r} (sources: {', '.join(sources)})")
            if reg.fisher_batches <= 0:
                raise _err(path, f"{where}.regularization.fisher_batches", f"must be positive, got {reg.fisher_batches}")
            if reg.fisher_utterances is not None and reg.fisher_utterances <= 0:
                raise _err(path, f"{where}.regularization.fisher_utterances",
                           f"must be positive, got {reg.fisher_utterances}")
            if reg.fisher_max_duration is not None and not reg.fisher_max_duration > 0:
                raise _err(path, f"{where}.regularization.fisher_max_duration",
                           f"must be positive, got {reg.fisher_max_duration}")
        if not 0.0 <= reg.gamma <= 1.0:
            raise _err(path, f"{where}.regularization.gamma", f"must be in [0, 1], got {reg.gamma}")
        try:
            resolve_lambdas([n for n, _ in model.named_parameters()], reg.lambda_)
        except RegularizationError as e:
            raise _err(path, f"{where}.regularization.lambda", str(e)) from None

    for key, names in (("eval", stage.eval or []), ("dev", [stage.dev] if stage.dev else [])):
        for name in names:
            if name not in eval_sets:
                raise _err(path, f"{where}.{key}", f"unknown eval set {name!r} (eval sets: {', '.join(eval_sets) or 'none'})")
    if any(a.noise_prob > 0 or a.reverb_prob > 0 for a in stage.augment.values()):
        if cfg.base.assets.num_noises <= 0 and not cfg.base.assets.real_noise and any(
            a.noise_prob > 0 for a in stage.augment.values()
        ):
            raise _err(path, f"{where}.augment", "noise requested but base.assets makes no noise")
        if cfg.base.assets.num_rirs <= 0 and any(a.reverb_prob > 0 for a in stage.augment.values()):
            raise _err(path, f"{where}.augment", "reverb requested but base.assets.num_rirs is 0")


def _skeleton(stage: StageConfig, train_cfg, tokenizer, path: Path, where: str):
    """The model a stage will train (architecture only), for checking freeze patterns / lambdas."""
    from synthasr.checkpoint import CheckpointError, load_checkpoint
    from synthasr.model import build_model

    if stage.init not in ("scratch", "previous") and not stage.init.startswith("stage:"):
        try:
            ckpt = load_checkpoint(stage.init)
        except CheckpointError as e:
            raise _err(path, f"{where}.init", str(e)) from None
        vocab = int(ckpt["model_config"].get("vocab_size", 0))
        if vocab != tokenizer.vocab_size:
            raise _err(path, f"{where}.init", f"checkpoint vocab_size {vocab} != tokenizer vocab_size {tokenizer.vocab_size}")
        return build_model(ckpt["model_config"])
    return build_model(dataclasses.replace(train_cfg.model, vocab_size=tokenizer.vocab_size))


# --------------------------------------------------------------------------------------------- #
# Running
# --------------------------------------------------------------------------------------------- #
def run_schedule(path: PathLike, exp_dir: Optional[PathLike] = None, stages: Optional[Sequence[str]] = None) -> ScheduleResult:
    """Validate everything, then run (or skip finished) stages in order, evaluate, and write the report.

    Under torchrun every rank trains every stage (DDP); rank 0 alone builds assets, estimates the
    Fisher, decodes and writes files, and the other ranks receive its results
    (:mod:`synthasr.train.distributed`), so every rank returns the same :class:`ScheduleResult`.
    """
    from synthasr.train.distributed import schedule_ranks

    plan = validate_schedule(path, exp_dir, stages)
    with schedule_ranks(_schedule_device(plan)) as ranks:
        ranks.run_on_main(lambda: _write_resolved_schedule(plan), "writing schedule.yaml")
        order = [s.name for s in plan.cfg.stages]
        results: List[StageResult] = []
        report = None
        for stage in plan.selected:
            results.append(_run_stage(plan, stage, order.index(stage.name), ranks))
            report = ranks.run_on_main(lambda: _write_report(plan), "writing the report")
    return ScheduleResult(plan.exp_dir, results, report)


def _schedule_device(plan: _Plan) -> str:
    """The ``train.device`` of the selected stages; under torchrun they must agree (one process group)."""
    import os

    devices = sorted({plan.train_cfgs[s.name].device for s in plan.selected})
    if len(devices) > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise _err(plan.path, "train.device", f"the stages run on different devices ({', '.join(devices)}); "
                                              "a torchrun schedule needs one")
    return devices[0]


def _write_resolved_schedule(plan: _Plan) -> None:
    import yaml

    plan.exp_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(plan.exp_dir / "schedule.yaml") as f:
        yaml.safe_dump(to_dict(plan.cfg), f, sort_keys=False)


def _write_report(plan: _Plan) -> Optional[Dict[str, Any]]:
    from synthasr.report import ReportError, write_report

    try:
        report = write_report(plan.exp_dir, baseline=plan.cfg.baseline)
    except ReportError as e:  # e.g. the named baseline has not been evaluated yet
        log.warning("report not written yet: %s", e)
        return None
    log.info("report written to %s", plan.exp_dir)
    return report


def _stage_done(stage_dir: Path) -> bool:
    return (stage_dir / "final.pt").is_file() and (stage_dir / "eval.json").is_file()


def _finished_results(stage_dir: Path) -> Optional[Dict[str, Dict[str, Any]]]:
    """The eval results of a stage finished in an earlier run (None when it must run)."""
    if not _stage_done(stage_dir):
        return None
    return json.loads((stage_dir / "eval.json").read_text(encoding="utf-8"))["results"]


def _run_stage(plan: _Plan, stage: StageConfig, index: int, ranks) -> StageResult:
    stage_dir = plan.exp_dir / stage.name
    earlier = ranks.run_on_main(lambda: _finished_results(stage_dir), f"checking stage {stage.name}")
    if earlier is not None:
        log.info("stage %s: finished earlier, skipping", stage.name)
        return StageResult(stage.name, stage_dir, stage_dir / "final.pt", earlier, skipped=True)
    import torch

    from synthasr.train.freeze import freeze, resolve_freeze_patterns
    from synthasr.train.trainer import fit

    train_cfg = plan.train_cfgs[stage.name]
    init_ckpt = _init_checkpoint(plan, stage, index)
    torch.manual_seed(train_cfg.seed)
    model = _build_init_model(train_cfg, plan.tokenizer, init_ckpt)
    regularizer = _make_regularizer(plan, stage, index, model, init_ckpt, train_cfg, ranks)
    patterns = resolve_freeze_patterns(model, stage.freeze.patterns, stage.freeze.encoder_layers_trainable)
    report = freeze(model, patterns, eval_mode=stage.freeze.eval_mode)
    log.info("stage %s: %s", stage.name, report.summary())
    cached = ranks.main_first(lambda: _encoder_cache_sources(plan, stage, model, train_cfg),
                              "caching encoder outputs") if stage.encoder_cache else None
    train_cuts = _stage_cuts(plan, stage, train_cfg.seed + index, sources=cached, ranks=ranks)
    dev = plan.eval_sets[stage.dev] if stage.dev else None
    meta = {"stage": stage.name, "stage_index": index, "schedule": str(plan.path), "init": str(init_ckpt or "scratch")}
    final = fit(train_cfg, stage_dir, train_cuts, dev, plan.tokenizer, model=model, regularizer=regularizer,
                eval_mode_modules=report.eval_mode_modules, source_key=MIX_SOURCE_KEY, meta=meta,
                inputs="encoder_out" if stage.encoder_cache else "features")
    ranks.barrier()  # rank 0 has written final.pt before anyone reads it
    results = ranks.run_on_main(lambda: _evaluate_stage(plan, stage, index, Path(final), ranks.local_rank),
                                f"evaluating stage {stage.name}")
    return StageResult(stage.name, stage_dir, Path(final), results, skipped=False)


def _validate_encoder_cache(path: Path, where: str, stage: StageConfig, model, patterns: List[str], train_cfg) -> None:
    """``encoder_cache: true`` replays stored encoder outputs: only valid while the whole encoder is
    frozen in eval mode and nothing changes a cached source's audio or features."""
    if not stage.encoder_cache:
        return
    from synthasr.train.freeze import expand_patterns

    key = f"{where}.encoder_cache"
    if not stage.freeze.eval_mode:
        raise _err(path, key, "needs freeze.eval_mode: true (encoder dropout would differ from the stored outputs)")
    frozen = expand_patterns(model, patterns)
    covered = lambda name: any(name == f or name.startswith(f + ".") for f in frozen)  # noqa: E731
    names = [n for n, m in model.encoder.named_modules(prefix="encoder") if not list(m.children())]
    names += [n for n, _ in model.encoder.named_parameters(prefix="encoder")]
    loose = next((n for n in names if not covered(n)), None)
    if loose is not None:
        raise _err(path, key, f"needs the whole encoder frozen (freeze: {{patterns: [encoder]}}), but {loose} is not")
    for src in _augmented_sources(stage):
        if not stage.augment_copies:
            raise _err(path, f"{where}.augment.{src}", "audio augmentation cannot be drawn per epoch from "
                       "encoder_cache; store augmented copies (augment_copies: N) or set encoder_cache: false")
    if train_cfg.data.spec_augment.enabled:
        raise _err(path, f"{where}.train.data.spec_augment", "SpecAugment cannot apply to stored encoder outputs "
                   "(encoder_cache: true); set enabled: false")


def _augmented_sources(stage: StageConfig) -> List[str]:
    """The stage's sources (weight > 0) with a non-identity augmentation."""
    return [src for src, weight in stage.data.items()
            if weight > 0 and src in stage.augment and not stage.augment[src].is_identity]


def _encoder_cache_sources(plan: _Plan, stage: StageConfig, model, train_cfg) -> Dict[str, Any]:
    """The stage's sources with the frozen encoder's outputs attached, built (or resumed) once per
    encoder: ``exp_dir/encoder_cache/<source>/<key>``, so stages sharing a frozen encoder share it.

    A filtered source (``where``) over another source's manifests filters that source's cache. With
    ``augment_copies``, an augmented source also gets that many augmented copies of every cut
    (:func:`_augmented_copies`), stored in ``encoder_cache/<source>.augmented-<digest>/<key>``, where
    ``<digest>`` names the augmentation config and seed: stages that augment the same way share the
    copies, and stages that augment differently never overwrite each other's."""
    import torch
    from lhotse import CutSet

    from synthasr.data.encoder_cache import build_encoder_cache, encoder_cache_key
    from synthasr.data.tags import select_cuts

    key = encoder_cache_key(model, train_cfg.features)[:16]
    device = "cuda" if train_cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    augmented = set(_augmented_sources(stage)) if stage.augment_copies else set()

    def cache(cuts, folder: str, encode_view=None):
        return build_encoder_cache(model, cuts, plan.exp_dir / "encoder_cache" / folder / key, train_cfg.features,
                                   max_duration=train_cfg.data.max_duration, device=device,
                                   on_the_fly_features=train_cfg.data.on_the_fly_features, encode_view=encode_view)

    out = {}
    for name, weight in sorted(stage.data.items()):
        if weight <= 0:
            continue
        log.info("stage %s: encoder outputs of source %s (cache key %s)", stage.name, name, key)
        parent = _cache_parent(plan, name) or name  # a filter over another source's manifests: filter its cache
        cuts = cache(plan.sources[parent], parent)
        if name in augmented:
            copies, view = _augmented_copies(plan, stage, name, parent, train_cfg.seed)
            folder = f"{parent}.augmented-{augmentation_digest(stage.augment[name], train_cfg.seed)}"
            log.info("stage %s: %d augmented copies of source %s in %s", stage.name, stage.augment_copies, name, folder)
            stored = cache(copies, folder, encode_view=view)
            cuts = CutSet.from_cuts(list(cuts) + list(stored))
        spec = plan.cfg.base.sources[name]
        out[name] = select_cuts(cuts, spec.where) if parent != name else cuts
    return out


def augmentation_digest(cfg: AugmentConfig, seed: int) -> str:
    """A short, stable name for one augmentation config drawn with one seed (the stored copies'
    folder). The copy count is left out: N copies are the first N of N + 1, so they can be shared."""
    import hashlib

    text = json.dumps({"augment": to_dict(cfg), "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _augmented_copies(plan: _Plan, stage: StageConfig, name: str, parent: str, seed: int):
    """``stage.augment_copies`` renamed copies (``<id>_aug<k>``) of every cut of ``parent``, and the
    view that augments each with ``name``'s config. The draw is keyed by the copy id and the training
    seed, not by the stage, so stages with the same augmentation share one set of stored copies."""
    from lhotse import CutSet

    noise, rirs = _assets(plan, stage)
    cfg = stage.augment[name]
    copies = CutSet.from_cuts(c.with_id(f"{c.id}_aug{k}") for k in range(1, stage.augment_copies + 1)
                              for c in plan.sources[parent])
    return copies, _AugmentView(cfg, seed, parent, list(noise or []), list(rirs or []))


class _AugmentView:
    """What the encoder hears for a stored augmented copy (picklable, unlike a closure)."""

    def __init__(self, cfg, seed: int, source: str, noise: List, rirs: List) -> None:
        self.cfg, self.seed, self.source, self.noise, self.rirs = cfg, seed, source, noise, rirs

    def __call__(self, cut):
        from synthasr.augment import augment_one, augmentation_rng

        return augment_one(cut, self.cfg, augmentation_rng(self.seed, 0, self.source, cut.id), self.noise, self.rirs)


def _init_stage_name(cfg: ScheduleConfig, stage: StageConfig, index: int) -> Optional[str]:
    """The earlier stage whose final.pt initialises ``stage`` (``previous`` or ``stage:<name>``), if any."""
    if stage.init == "previous" and index > 0:
        return cfg.stages[index - 1].name
    if stage.init.startswith("stage:"):
        return stage.init[len("stage:"):]
    return None


def _init_checkpoint(plan: _Plan, stage: StageConfig, index: int) -> Optional[Path]:
    if stage.init == "scratch":
        return None
    prev = _init_stage_name(plan.cfg, stage, index)
    if prev is not None:
        ckpt = plan.exp_dir / prev / "final.pt"
        if not ckpt.is_file():
            raise ScheduleError(f"{plan.path}: stages[{index}] ({stage.name}).init: stage {prev!r} "
                                f"has no final.pt (run it first)")
        return ckpt
    return Path(stage.init)


def _build_init_model(train_cfg, tokenizer, ckpt_path: Optional[Path]):
    from synthasr.checkpoint import load_checkpoint
    from synthasr.model import build_model

    if ckpt_path is None:
        return build_model(dataclasses.replace(train_cfg.model, vocab_size=tokenizer.vocab_size))
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model


def _stage_cuts(plan: _Plan, stage: StageConfig, seed: int, sources: Optional[Dict[str, Any]] = None, ranks=None):
    """Weighted mixing (tagged with the source name), then per-source augmentation.

    Augmenting after mixing keys every random draw by the mixed cut's id (``_rep<k>`` copies differ)
    and by the epoch (the returned CutSet is epoch-aware), see :mod:`synthasr.augment`.
    """
    from synthasr.augment import augment_sources
    from synthasr.data.mixing import mix_sources

    build_assets = lambda: _assets(plan, stage)  # noqa: E731 - rank 0 writes them, the others read its files
    noise, rirs = ranks.main_first(build_assets, "building noise/RIR assets") if ranks else build_assets()
    used = {n: (sources or plan.sources)[n] for n, w in stage.data.items() if w > 0}
    weights = {n: stage.data[n] for n in used}
    if len(used) == 1 and stage.num_cuts is None:  # a single source: one plain pass, no resampling
        from lhotse import CutSet
        from lhotse.lazy import LazyMapper

        ((name, cuts),) = used.items()
        mixed = CutSet(LazyMapper(cuts, fn=_SourceTagger(name)))
    else:
        mixed = mix_sources(used, weights, seed=seed, num_cuts=stage.num_cuts, tag_key=MIX_SOURCE_KEY)
    # With the encoder cache, augmentation is already in the stored copies (augment_copies).
    configs = {} if sources is not None else {n: stage.augment[n] for n in used if n in stage.augment}
    return augment_sources(mixed, configs, seed=seed, source_key=MIX_SOURCE_KEY, noise_cuts=noise, rirs=rirs)


class _SourceTagger:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, cut):
        from synthasr.data.mixing import tag_cut

        return tag_cut(cut, MIX_SOURCE_KEY, self.name)


def _assets(plan: _Plan, stage: StageConfig):
    from synthasr.augment import make_noise, make_rirs
    from synthasr.augment.noise import ETW_NOISE_GLOB

    a = plan.cfg.base.assets
    needs_noise = any(c.noise_prob > 0 for c in stage.augment.values())
    needs_rirs = any(c.reverb_prob > 0 for c in stage.augment.values())
    noise = rirs = None
    if needs_noise:
        babble = plan.sources[a.babble_source] if a.babble_source else None
        noise = make_noise(plan.exp_dir / "assets" / "noise", a.num_noises, seed=a.seed, babble_from=babble,
                           duration=a.noise_duration, real_noise_glob=ETW_NOISE_GLOB if a.real_noise else None)
    if needs_rirs:
        rirs = make_rirs(plan.exp_dir / "assets" / "rirs", a.num_rirs, seed=a.seed)
    return noise, rirs


def _make_regularizer(plan: _Plan, stage: StageConfig, index: int, model, init_ckpt: Optional[Path], train_cfg,
                      ranks=None):
    """EWC / online EWC / L2-SP anchored at the stage's initial weights (computed before freezing).

    Rank 0 estimates the Fisher (or reads its cache) on its own device; the other ranks receive it.
    """
    from synthasr.train.regularization import EWC, L2SP, snapshot

    reg = stage.regularization
    if reg.type == "none":
        return None
    anchor = snapshot(model)
    if reg.type == "l2sp":
        return L2SP(model, anchor, reg.lambda_)
    local_rank = ranks.local_rank if ranks else 0
    compute = lambda: _stage_fisher(plan, stage, index, model, init_ckpt, train_cfg, local_rank)  # noqa: E731
    fisher = ranks.run_on_main(compute, f"estimating the Fisher of stage {stage.name}") if ranks else compute()
    return EWC(model, anchor, fisher, reg.lambda_)


def _stage_fisher(plan: _Plan, stage: StageConfig, index: int, model, init_ckpt: Path, train_cfg, local_rank: int):
    """The Fisher a stage trains with, cached next to its init checkpoint and keyed by content."""
    from synthasr.train.regularization import consolidate_fisher, fisher_cached, load_fisher, save_fisher

    reg = stage.regularization
    fisher_path = init_ckpt.parent / ("fisher.pt" if init_ckpt.name == "final.pt" else f"{init_ckpt.stem}.fisher.pt")
    meta = _fisher_meta(plan, reg, init_ckpt, train_cfg)
    fisher = fisher_cached(fisher_path, lambda: _compute_fisher(plan, reg, model, train_cfg, local_rank), meta)
    if reg.type == "online_ewc":
        online_path = plan.exp_dir / stage.name / "fisher_online.pt"
        if online_path.is_file():  # resumed stage: reuse exactly what it trained with
            fisher, _ = load_fisher(online_path)
        else:
            prev = _previous_online_fisher(plan, index)
            fisher = consolidate_fisher(prev, fisher, reg.gamma)
            save_fisher(online_path, fisher, {"gamma": reg.gamma, **meta})
    return fisher


FISHER_ESTIMATOR = "per-utterance-v2"  # change when the estimate changes meaning: older caches are recomputed


def _fisher_meta(plan: _Plan, reg: RegularizationConfig, init_ckpt: Path, train_cfg) -> Dict[str, Any]:
    """What a Fisher depends on, by content: the init weights, the source manifests and every setting,
    so retraining the init stage (same file name, new weights) never reuses a stale Fisher."""
    import hashlib

    spec = plan.cfg.base.sources[reg.fisher_source]
    spec = SourceConfig(cuts=spec) if isinstance(spec, list) else spec
    settings = {
        "estimator": FISHER_ESTIMATOR, "batches": reg.fisher_batches, "utterances": reg.fisher_utterances,
        "seed": reg.fisher_seed, "max_duration": reg.fisher_max_duration or train_cfg.data.max_duration,
        "loss": to_dict(train_cfg.loss), "features": to_dict(train_cfg.features), "domain": spec.domain,
        **({"where": dict(spec.where)} if spec.where else {}),  # (absent key: older caches stay valid)
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in [init_ckpt, *spec.cuts]:
        digest.update(_file_digest(Path(path)).encode())
    return {"key": digest.hexdigest(), "checkpoint": str(init_ckpt), "source": reg.fisher_source,
            **{k: settings[k] for k in ("estimator", "batches", "utterances", "seed", "max_duration")}}


def _file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    if path.is_dir():  # a Shar source: its cut manifests, by name and content
        for shard in sorted(path.glob("cuts.*.jsonl*")):
            h.update(f"{shard.name}:{_file_digest(shard)}".encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _previous_online_fisher(plan: _Plan, index: int):
    from synthasr.train.regularization import load_fisher

    # Follow the init chain (not list order), so sibling branches of an ablation never share a Fisher.
    names = [s.name for s in plan.cfg.stages]
    prev = _init_stage_name(plan.cfg, plan.cfg.stages[index], index)
    while prev is not None:
        path = plan.exp_dir / prev / "fisher_online.pt"
        i = names.index(prev)
        prev = _init_stage_name(plan.cfg, plan.cfg.stages[i], i)
        if path.is_file():
            return load_fisher(path)[0]
    return None


def _compute_fisher(plan: _Plan, reg: RegularizationConfig, model, train_cfg, local_rank: int = 0):
    import torch

    from synthasr.data.dataset import sample_loader
    from synthasr.train.regularization import estimate_fisher, rnnt_frame_loss

    use_cuda = train_cfg.device != "cpu" and torch.cuda.is_available()
    model.to(torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))
    loader = sample_loader(plan.sources[reg.fisher_source], train_cfg.features,
                           reg.fisher_max_duration or train_cfg.data.max_duration, seed=reg.fisher_seed)
    try:
        return estimate_fisher(model, loader, rnnt_frame_loss(plan.tokenizer, train_cfg.loss), reg.fisher_batches,
                               max_utterances=reg.fisher_utterances)
    finally:
        model.to("cpu")


def _breakdown(spec: Union[str, EvalSetConfig]) -> Optional[str]:
    return None if isinstance(spec, str) else spec.breakdown


def _evaluate_stage(plan: _Plan, stage: StageConfig, index: int, final: Path,
                    local_rank: int = 0) -> Dict[str, Dict[str, Any]]:
    import torch

    from synthasr.checkpoint import load_checkpoint
    from synthasr.decode import evaluate
    from synthasr.decode.evaluation import eval_summary
    from synthasr.model import build_model

    dec = plan.cfg.base.decode
    use_cuda = dec.device == "cuda" or (dec.device == "auto" and torch.cuda.is_available())
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    log.info("stage %s: decoding on %s", stage.name, device)
    ckpt = load_checkpoint(final)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    names = stage.eval if stage.eval is not None else list(plan.eval_sets)
    results: Dict[str, Dict[str, Any]] = {}
    stage_dir = plan.exp_dir / stage.name
    for name in names:
        wer = evaluate(model, plan.tokenizer, plan.eval_sets[name], out_dir=stage_dir / "decode", test_set_name=name,
                       method=dec.method, beam_size=dec.beam_size, device=device, max_duration=dec.max_duration,
                       feature_config=ckpt.get("feature_config") or None, terms=plan.terms,
                       breakdown=_breakdown(plan.cfg.base.eval_sets[name]))
        spec = plan.cfg.base.eval_sets[name]
        results[name] = {"domain": plan.eval_domains[name], **eval_summary(wer, relative_to=stage_dir),
                         "cuts": str(Path(spec if isinstance(spec, str) else spec.cuts).resolve())}
    with atomic_write(stage_dir / "eval.json") as f:
        json.dump({"stage": stage.name, "index": index, "checkpoint": str(final), "results": results}, f, indent=2)
    return results
