"""The run-config schema of ``recsys-jax train``: sections data, model, loss, eval, train, optim, mesh.

The defaults are the embedded default run (``configs/recsys/synthetic_tiny.yaml``): HSTU on the
built-in synthetic dataset, small enough to train in about a minute on 2 CPU cores.
Load with :func:`load_config`: a YAML file is merged over these defaults (a key it leaves out keeps
the default), then ``key.sub=value`` overrides apply; unknown keys and wrong types are errors.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Literal


from core_jax import config as config_lib
from core_jax.config import ConfigError
from core_jax.loop import TrainConfig
from core_jax.mesh import MeshConfig
from core_jax.optim import OptimConfig
from recsys_jax.data.attribution import AttributionConfig, parse_window
from recsys_jax.data.event_examples import DEFAULT_LABELS, LabelConfig
from recsys_jax.data.marketplace import MarketplaceConfig
from recsys_jax.data.synthetic import SyntheticConfig
from recsys_jax.eval.metrics import TIES
from recsys_jax.models import HSTUConfig, ItemTextConfig, SASRecConfig, TwoTowerConfig
from recsys_jax.train.losses import SampledSoftmaxConfig
from recsys_jax.train.multilabel import MultiLabelLossConfig


GENERATED_FORMATS = ("synthetic", "marketplace")  # built-in generators: no input file
PACKAGED_FORMATS = ("completejourney",)  # read from an installed package unless data.build.input names a folder


@dataclasses.dataclass
class BuildConfig:
    """How to build the dataset when ``data.dir`` is not given (see ``recsys-jax data build``)."""

    format: str = "synthetic"  # movielens | recbole | text | csv | parquet | synthetic | marketplace (events)
    input: str | None = None
    items: str | None = None  # side-info file; null: the usual file beside input; "": none
    columns: str | None = None  # csv/parquet column mapping, e.g. "user=uid,item=iid,time=ts"
    skip_bad_lines: bool = False
    max_seq_len: int | None = 200  # keep each user's most recent N items (null: all)
    min_rating: float | None = None
    min_user_interactions: int = 0
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    # format marketplace: the simulator's event dataset (recsys_jax.data.event_builder)
    marketplace: MarketplaceConfig = dataclasses.field(default_factory=MarketplaceConfig)
    attribution: AttributionConfig = dataclasses.field(default_factory=AttributionConfig)
    drop_actions: list[str] = dataclasses.field(default_factory=lambda: ["impression"])
    # an event dataset (recsys_jax.data.event_builder) from movielens / recbole / text / csv / parquet input;
    # marketplace and completejourney are always event datasets
    events: bool = False
    rating_behaviours: bool = False  # events from ratings: rating >= 4 "like", else "view" (MovieLens)


@dataclasses.dataclass
class DataConfig:
    dir: str | None = None  # a dataset folder built by `recsys-jax data build`; null: build from `build`
    cache_dir: str = "out/recsys_data"  # where `build` writes its dataset (once; reused while the spec is unchanged)
    build: BuildConfig = dataclasses.field(default_factory=BuildConfig)
    max_len: int = 50  # history length the model sees (training windows and evaluation)
    padding: Literal["left", "right"] = "left"
    random_windows: bool = True  # train on a random window of long sequences (else the most recent one)
    worker_count: int = 0  # Grain worker processes for the training data
    # training batches of users of similar length (less padding): sorted within windows of this many batches of
    # the shuffled order, batch order shuffled (0: off; hstu / sasrec); each batch cut to its longest row rounded
    # up to a multiple of length_bucket (0: no cut; a few buckets = a few compiled programs)
    length_grouping: int = 0
    length_bucket: int = 0
    # packed training batches (hstu / sasrec): the batch's users share rows of max_len (no padding between them;
    # attention within a user), the row count rounded up to a multiple of pack_rows (0: off; a few row counts = a
    # few compiled programs; a multiple of the local device count)
    pack_rows: int = 0
    # cold-item evaluation (recsys_jax.eval.coldstart): this fraction of the items (seeded) is held out of training
    # entirely (no training input, target or negative); eval reports cold and warm targets apart. 0: off
    cold_item_fraction: float = 0.0
    cold_item_seed: int = 0


@dataclasses.dataclass
class ModelConfig:
    name: Literal["hstu", "sasrec", "two_tower"] = "hstu"
    hstu: HSTUConfig = dataclasses.field(default_factory=lambda: HSTUConfig(
        embed_dim=64, num_layers=2, num_heads=1, attention_dim=64, linear_dim=64, max_seq_len=50, dropout=0.2))
    sasrec: SASRecConfig = dataclasses.field(default_factory=lambda: SASRecConfig(
        embed_dim=64, num_layers=2, num_heads=1, ffn_dim=64, max_seq_len=50, dropout=0.2))
    two_tower: TwoTowerConfig = dataclasses.field(default_factory=lambda: TwoTowerConfig(
        embed_dim=64, hidden_dims=(128,), max_seq_len=50, dropout=0.2))
    # items represented by id, text, or both (mode id: the id table only, as before; see ItemTextConfig)
    item_text: ItemTextConfig = dataclasses.field(default_factory=ItemTextConfig)

    def selected(self):
        """The config of the model named by ``name``."""
        return getattr(self, self.name)


@dataclasses.dataclass(frozen=True)
class LossConfig(SampledSoftmaxConfig):
    """:class:`SampledSoftmaxConfig` plus which item counts give logQ (in-batch negatives only)."""

    logq_counts: Literal["train", "all"] = "train"  # training part of the splits, or whole sequences


@dataclasses.dataclass
class ScenarioSplitConfig:
    """How a unified run is split for training and per-scenario evaluation (``recsys_jax.eval.scenarios``).

    ``leave_one_out``: train on each user's events but the last two, test on the last (validation: the
    one before). ``time``: train on the events before ``T`` (the ``cutoff`` quantile of the dataset's
    event timestamps), test on the events in ``[T, T + window)`` from the history before ``T``.
    ``backtest``: ``T`` moved back by this many windows: a run with ``backtest: 1`` trains on the events before
    the unshifted run's validation window and is tested on it, e.g. to choose the repeat prior's weights
    (``recsys-jax eval --repeat auto --repeat-model RUN``) with a model that never saw that window.
    """

    protocol: Literal["leave_one_out", "time"] = "leave_one_out"
    cutoff: float = 0.9  # time: T is this quantile of every stored event's timestamp
    window: int | str = "7d"  # time: the test window after T (seconds, or a number with a unit s/m/h/d/w)
    backtest: int = 0  # time: T moved back by this many windows


@dataclasses.dataclass
class UnifiedConfig:
    """Multi-label training on an event dataset (``recsys_jax.train.unified``): off by default.

    ``labels``: what a position learns to predict about the next event (each with its candidate pool
    and weight; see ``recsys_jax.data.event_examples``); ``scenario_tower``: a scenario-conditioned
    tower on the HSTU trunk (``recsys_jax.models.scenario``), else one user embedding for every label;
    ``loss``: negatives, sampler, logQ, normalisation (``recsys_jax.train.multilabel``); the
    temperature and L2 normalisation come from the ``loss`` section. ``label_weights``: label name ->
    weight, over the labels' own (e.g. ``unified.label_weights.engagement=0``: trained on the ad labels
    only, a baseline at the same budget); ``split``: :class:`ScenarioSplitConfig`; ``target_window``:
    None trains each position on the next event, a window (e.g. ``"7d"``) on a later event within it.
    """

    enabled: bool = False
    labels: list[LabelConfig] = dataclasses.field(
        default_factory=lambda: [dataclasses.replace(lab, actions=list(lab.actions)) for lab in DEFAULT_LABELS])
    scenario_tower: bool = True
    loss: MultiLabelLossConfig = dataclasses.field(default_factory=MultiLabelLossConfig)
    split: ScenarioSplitConfig = dataclasses.field(default_factory=ScenarioSplitConfig)
    label_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    # None: each position predicts the next event; a window (seconds or "7d"): a later training event within
    # it, drawn per position and epoch (recsys_jax.data.event_examples.future_targets)
    target_window: int | str | None = None


@dataclasses.dataclass
class EvalConfig:
    ks: list[int] = dataclasses.field(default_factory=lambda: [10, 50, 200])
    batch_size: int = 256  # global users per evaluation batch
    split: Literal["validation", "test"] = "validation"  # evaluated during training
    # True: items the user interacted with before the target (the whole stored history) are removed from
    # the ranking, so a target that repeats one of them is a miss (it can never be recommended); the
    # protocol of SASRec / BERT4Rec-style papers (Klenitskiy & Vasilev 2023: filter_seen) and of the HSTU
    # paper's code. False: every item 1..N is ranked (repeat consumption can be a hit).
    exclude_history: bool = True
    ties: Literal["pessimistic", "optimistic", "average"] = "pessimistic"


@dataclasses.dataclass
class RecsysConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=lambda: LossConfig(num_negatives=128, temperature=0.05))
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    unified: UnifiedConfig = dataclasses.field(default_factory=UnifiedConfig)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        steps=600, batch_size=64, log_every=100, eval_every=200, best_metric="ndcg@10",
        run_dir="runs/recsys/synthetic_tiny"))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        name="adamw", learning_rate=1e-3, weight_decay=0.0))
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


def validate(cfg: RecsysConfig) -> RecsysConfig:
    """Cross-section checks; a :class:`ConfigError` names the key."""
    d, m = cfg.data, cfg.model.selected()
    if d.max_len < 1:
        raise ConfigError(f"config key 'data.max_len': must be >= 1, got {d.max_len}")
    if m.max_seq_len < d.max_len:
        raise ConfigError(f"config key 'model.{cfg.model.name}.max_seq_len': {m.max_seq_len} is shorter than "
                          f"data.max_len={d.max_len}; set it to at least data.max_len")
    if d.length_grouping < 0 or d.length_bucket < 0:
        raise ConfigError(f"config keys 'data.length_grouping' / 'data.length_bucket': must be >= 0, got "
                          f"{d.length_grouping} / {d.length_bucket}")
    if d.length_grouping and (cfg.model.name not in ("hstu", "sasrec") or cfg.unified.enabled):
        raise ConfigError(f"config key 'data.length_grouping': length-grouped, trimmed batches are supported for "
                          f"model.name hstu / sasrec without unified (their outputs at real positions do not depend "
                          f"on the padding); got model.name={cfg.model.name!r}, unified.enabled="
                          f"{cfg.unified.enabled}; set data.length_grouping=0")
    if d.pack_rows < 0 or (d.pack_rows and d.length_bucket):
        raise ConfigError(f"config key 'data.pack_rows': must be >= 0 and packed rows are max_len long (so "
                          f"data.length_bucket must be 0), got pack_rows={d.pack_rows}, "
                          f"length_bucket={d.length_bucket}")
    if d.pack_rows and d.pack_rows % cfg.train.grad_accum_steps:
        raise ConfigError(f"config key 'data.pack_rows': {d.pack_rows} must be a multiple of train.grad_accum_steps "
                          f"({cfg.train.grad_accum_steps}): the packed rows are split into the micro-batches")
    if d.pack_rows and cfg.model.name not in ("hstu", "sasrec"):
        raise ConfigError(f"config key 'data.pack_rows': packed batches are supported for model.name hstu / sasrec "
                          f"(they keep the users of a row apart); got model.name={cfg.model.name!r}; set "
                          "data.pack_rows=0")
    if not 0.0 <= d.cold_item_fraction < 1.0:
        raise ConfigError(f"config key 'data.cold_item_fraction': must be in [0, 1), got {d.cold_item_fraction}")
    if d.cold_item_fraction and cfg.unified.enabled:
        raise ConfigError("config key 'data.cold_item_fraction': cold items are not supported with unified.enabled")
    if not cfg.eval.ks or any(k < 1 for k in cfg.eval.ks):
        raise ConfigError(f"config key 'eval.ks': expected a non-empty list of positive ints, got {cfg.eval.ks}")
    if cfg.eval.batch_size < 1:
        raise ConfigError(f"config key 'eval.batch_size': must be >= 1, got {cfg.eval.batch_size}")
    if cfg.eval.ties not in TIES:
        raise ConfigError(f"config key 'eval.ties': expected one of {TIES}, got {cfg.eval.ties!r}")
    if cfg.train.best_metric and cfg.eval.split == "test":
        raise ConfigError(
            f"config keys 'train.best_metric' and 'eval.split': best_metric={cfg.train.best_metric!r} with "
            "eval.split='test' selects the checkpoint (and early-stops) on the test split, so the test number is "
            "no longer a held-out estimate; set eval.split=validation (then `recsys-jax eval --split test` "
            "reports test) or train.best_metric=null")
    try:
        cfg.loss.validate()
    except ValueError as e:
        raise ConfigError(f"config section 'loss': {e}") from None
    if d.dir is None and d.build.format in GENERATED_FORMATS and d.build.input:
        raise ConfigError(f"config key 'data.build.input': the {d.build.format} format takes no input file")
    if d.dir is None and d.build.format not in GENERATED_FORMATS + PACKAGED_FORMATS and not d.build.input:
        raise ConfigError(f"config key 'data.build.input': format {d.build.format!r} needs an input file "
                          "(or set data.dir to a built dataset)")
    if cfg.unified.enabled:
        validate_unified(cfg)
    return cfg


def validate_unified(cfg: RecsysConfig) -> None:
    u = cfg.unified
    if cfg.model.name != "hstu" and u.scenario_tower:
        raise ConfigError(f"config key 'model.name': the scenario tower of unified (multi-label) training runs on "
                          f"hstu, got {cfg.model.name!r} (set unified.scenario_tower=false for an item-sequence "
                          f"baseline such as two_tower)")
    if cfg.model.item_text.profile_weight:  # the scenario tower's user embedding has no text-profile columns
        raise ConfigError(f"config key 'model.item_text.profile_weight': {cfg.model.item_text.profile_weight}; the "
                          "late-fused text profile is for single-label runs: expected 0 in unified (multi-label) "
                          "training")
    h = cfg.model.hstu
    if cfg.model.name == "hstu" and (h.num_actions < -1 or h.num_surfaces < -1):
        raise ConfigError(f"config keys 'model.hstu.num_actions' / 'num_surfaces': expected >= 0, or -1 for the "
                          f"dataset's vocabulary size, got {h.num_actions} / {h.num_surfaces}")
    if u.target_window is not None:
        try:
            if parse_window(u.target_window) <= 0:
                raise ValueError(f"the window must be > 0, got {u.target_window!r}")
        except ValueError as e:
            raise ConfigError(f"config key 'unified.target_window': {e} (null: the next event)") from None
    if u.split.protocol == "time":
        if not 0.0 < u.split.cutoff < 1.0:
            raise ConfigError(f"config key 'unified.split.cutoff': a quantile in (0, 1), got {u.split.cutoff}")
        try:
            if parse_window(u.split.window) <= 0:
                raise ValueError(f"the window must be > 0, got {u.split.window!r}")
        except ValueError as e:
            raise ConfigError(f"config key 'unified.split.window': {e}") from None
    if not (isinstance(u.split.backtest, int) and u.split.backtest >= 0):
        raise ConfigError(f"config key 'unified.split.backtest': a number of windows >= 0, got {u.split.backtest!r}")
    if u.split.backtest and u.split.protocol != "time":
        raise ConfigError("config key 'unified.split.backtest': moves a time split's T; the protocol is "
                          f"{u.split.protocol!r}")
    if not u.labels:
        raise ConfigError("config key 'unified.labels': at least one label is needed")
    names = [lab.name for lab in u.labels]
    if len(set(names)) != len(names):
        raise ConfigError(f"config key 'unified.labels': label names must be unique, got {names}")
    for i, lab in enumerate(u.labels):
        if lab.weight < 0:
            raise ConfigError(f"config key 'unified.labels[{i}].weight': must be >= 0, got {lab.weight}")
    for name, w in u.label_weights.items():
        if name not in names:
            raise ConfigError(f"config key 'unified.label_weights.{name}': not a label name; the labels are {names}")
        if w < 0:
            raise ConfigError(f"config key 'unified.label_weights.{name}': must be >= 0, got {w}")
    if not any(u.label_weights.get(lab.name, lab.weight) > 0 for lab in u.labels):
        raise ConfigError("config keys 'unified.labels' / 'unified.label_weights': every label weight is 0; at least "
                          "one label must be trained")
    try:
        u.loss.validate()
    except ValueError as e:
        raise ConfigError(f"config section 'unified.loss': {e}") from None
    if cfg.train.best_metric:
        raise ConfigError(f"config key 'train.best_metric': {cfg.train.best_metric!r}, but unified training has no "
                          "evaluation during training yet (per-scenario metrics); set train.best_metric=null")


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> RecsysConfig:
    """The defaults, with the YAML file at ``path`` (optional) and then ``overrides`` over them; validated."""
    return validate(config_lib.load(RecsysConfig, path, overrides))
