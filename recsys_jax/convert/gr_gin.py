"""The model sizes of a generative-recommenders research run, from its gin file, as an :class:`HSTUConfig`.

Reads the ``train_fn.*`` and ``hstu_encoder.*`` bindings with gin's own parser (``gin-config``; no
generative-recommenders code is needed) and checks that the run is one our HSTU reproduces: ``HSTU``
main module, local item embeddings, DotProduct similarity, l2-normalised users and items, ``uvqk``
projections with SiLU, ``rel_bias`` normalisation, no ``concat_ua``. Anything else is an error that
names the gin key and what is supported. Defaults are those of ``train_fn`` / ``hstu_encoder``.
"""

from __future__ import annotations

import dataclasses
import os

from recsys_jax.models.hstu import HSTUConfig

# the defaults of research/trainer/train.py:train_fn and encoder_utils.py:hstu_encoder
TRAIN_FN = {"main_module": "SASRec", "max_sequence_length": 200, "gr_output_length": 10, "item_embedding_dim": 240,
            "dropout_rate": 0.2, "user_embedding_norm": "l2_norm", "interaction_module_type": "",
            "item_l2_norm": False, "l2_norm_eps": 1e-6, "embedding_module_type": "local"}
HSTU_ENCODER = {"num_blocks": 2, "num_heads": 1, "dqk": 64, "dv": 64, "linear_dropout_rate": 0.0,
                "attn_dropout_rate": 0.0, "normalization": "rel_bias", "linear_config": "uvqk",
                "linear_activation": "silu", "concat_ua": False, "enable_relative_attention_bias": True}
NUM_TIME_BUCKETS = 128  # fixed in research/modeling/sequential/hstu.py
REQUIRED = {  # (selector, arg): (allowed values, what we support)
    ("train_fn", "main_module"): (("HSTU",), "the HSTU encoder"),
    ("train_fn", "embedding_module_type"): (("local",), "local item embeddings"),
    ("train_fn", "interaction_module_type"): (("DotProduct",), "dot-product similarity"),
    ("train_fn", "user_embedding_norm"): (("l2_norm",), "l2-normalised user embeddings"),
    ("train_fn", "item_l2_norm"): ((True,), "l2-normalised item embeddings (as the users)"),
    ("hstu_encoder", "normalization"): (("rel_bias", "hstu_rel_bias"), "pointwise SiLU attention with relative bias"),
    ("hstu_encoder", "linear_config"): (("uvqk",), "the uvqk projection"),
    ("hstu_encoder", "linear_activation"): (("silu",), "SiLU on the uvqk projection"),
    ("hstu_encoder", "concat_ua"): ((False,), "o(u * norm(a)) without concat_ua"),
}


@dataclasses.dataclass(frozen=True)
class GRConfig:
    """The values of a research run that shape its checkpoint."""

    train_fn: dict
    hstu_encoder: dict

    @property
    def positions(self) -> int:
        """GR's padded length ``N`` = ``max_sequence_length + gr_output_length + 1``: the positional table's
        rows, the relative-bias span and the attention's ``1 / N``."""
        t = self.train_fn
        return int(t["max_sequence_length"]) + int(t["gr_output_length"]) + 1

    def hstu_config(self) -> HSTUConfig:
        """Our :class:`HSTUConfig` that computes what GR's encoder computes (``time_bias_from="next"``)."""
        t, h = self.train_fn, self.hstu_encoder
        bias = bool(h["enable_relative_attention_bias"])
        return HSTUConfig(embed_dim=int(t["item_embedding_dim"]), num_layers=int(h["num_blocks"]),
                          num_heads=int(h["num_heads"]), attention_dim=int(h["dqk"]), linear_dim=int(h["dv"]),
                          max_seq_len=self.positions, dropout=float(t["dropout_rate"]),
                          num_time_buckets=NUM_TIME_BUCKETS, use_position_bias=bias, use_time_bias=bias,
                          l2_normalize=True, layer_norm_eps=1e-6, time_bias_from="next")

    def to_gin(self) -> str:
        lines = [f"train_fn.{k} = {_gin_value(v)}" for k, v in self.train_fn.items()]
        lines += [f"hstu_encoder.{k} = {_gin_value(v)}" for k, v in self.hstu_encoder.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_hstu_config(cls, cfg: HSTUConfig, max_sequence_length: int) -> "GRConfig":
        """The gin values of a GR run that loads the export of a model with config ``cfg`` (see
        :func:`check_exportable`); ``gr_output_length`` fills the rest of ``cfg.max_seq_len``."""
        out_len = cfg.max_seq_len - max_sequence_length - 1
        if out_len < 0:
            raise ValueError(f"max_sequence_length {max_sequence_length} + 1 exceeds the model's max_seq_len "
                             f"{cfg.max_seq_len} (GR pads to max_sequence_length + gr_output_length + 1)")
        t = {**TRAIN_FN, "main_module": "HSTU", "max_sequence_length": max_sequence_length,
             "gr_output_length": out_len, "item_embedding_dim": cfg.embed_dim, "dropout_rate": cfg.dropout,
             "interaction_module_type": "DotProduct", "item_l2_norm": True}
        h = {**HSTU_ENCODER, "num_blocks": cfg.num_layers, "num_heads": cfg.num_heads, "dqk": cfg.attention_dim,
             "dv": cfg.linear_dim, "linear_dropout_rate": cfg.dropout,
             "enable_relative_attention_bias": cfg.use_position_bias}
        return cls(t, h)


def _gin_value(v) -> str:
    return f'"{v}"' if isinstance(v, str) else repr(v)


def check_exportable(cfg: HSTUConfig) -> None:
    """Raise ``ValueError`` naming each setting of ``cfg`` that GR's research HSTU cannot express."""
    bad = []
    if cfg.use_position_bias != cfg.use_time_bias:
        bad.append(f"use_position_bias={cfg.use_position_bias} with use_time_bias={cfg.use_time_bias} "
                   "(GR has both relative biases or neither)")
    if cfg.use_time_bias and cfg.time_bias_from != "next":
        bad.append(f"time_bias_from={cfg.time_bias_from!r} (GR measures time gaps from the next item: 'next')")
    if cfg.use_time_bias and cfg.num_time_buckets != NUM_TIME_BUCKETS:
        bad.append(f"num_time_buckets={cfg.num_time_buckets} (GR has {NUM_TIME_BUCKETS})")
    if not cfg.l2_normalize:
        bad.append("l2_normalize=False (the gin configs we import use l2_norm users and items)")
    if cfg.layer_norm_eps != 1e-6:
        bad.append(f"layer_norm_eps={cfg.layer_norm_eps} (GR uses 1e-6)")
    if cfg.event_features or cfg.num_scenario_labels:
        bad.append(f"event features / scenario tower (num_actions={cfg.num_actions}, num_surfaces={cfg.num_surfaces}, "
                   f"use_is_ad={cfg.use_is_ad}, num_scenario_labels={cfg.num_scenario_labels}): GR's HSTU reads items "
                   "only")
    if bad:
        raise ValueError("this HSTU cannot be written as a generative-recommenders checkpoint: " + "; ".join(bad))


def read_gin(path: str | os.PathLike) -> GRConfig:
    """Parse a generative-recommenders gin file into a :class:`GRConfig` (checked; see module doc)."""
    try:
        from gin import config_parser
    except ImportError:
        raise ImportError("reading gin files needs gin-config: pip install 'canvas-recsys-jax[convert]'") from None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gin file '{path}' not found")
    with open(path) as f:
        text = f.read()

    class _Macro(str):
        pass

    class _Delegate(config_parser.ParserDelegate):
        def configurable_reference(self, scoped_name, evaluate):
            return f"@{scoped_name}{'()' if evaluate else ''}"

        def macro(self, name):
            return _Macro(name)

    bindings: dict[tuple[str, str], object] = {}
    try:
        for stmt in config_parser.ConfigParser(text, _Delegate()):
            if isinstance(stmt, config_parser.BindingStatement) and not stmt.scope:
                bindings[(stmt.selector, stmt.arg_name)] = stmt.value
    except SyntaxError as e:
        raise ValueError(f"gin file '{path}' does not parse: {e}") from None
    for key, value in list(bindings.items()):
        if isinstance(value, _Macro):
            if (str(value), "") not in bindings and (str(value), None) not in bindings:
                raise ValueError(f"gin file '{path}': {key[0]}.{key[1]} uses macro %{value}, which it does not define")
            bindings[key] = bindings.get((str(value), ""), bindings.get((str(value), None)))
    values = {sel: {**defaults, **{a: v for (s, a), v in bindings.items() if s == sel}}
              for sel, defaults in (("train_fn", TRAIN_FN), ("hstu_encoder", HSTU_ENCODER))}
    for (sel, arg), (allowed, what) in REQUIRED.items():
        if values[sel][arg] not in allowed:
            raise ValueError(f"gin file '{path}': {sel}.{arg} = {values[sel][arg]!r} is not supported: the import "
                             f"reproduces {what} ({sel}.{arg} in {list(allowed)})")
    for sel, arg in (("train_fn", "max_sequence_length"), ("train_fn", "item_embedding_dim"),
                     ("hstu_encoder", "num_blocks"), ("hstu_encoder", "num_heads"), ("hstu_encoder", "dqk"),
                     ("hstu_encoder", "dv")):
        v = values[sel][arg]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"gin file '{path}': {sel}.{arg} must be a positive integer, got {v!r}")
    if not isinstance(values["train_fn"]["gr_output_length"], int) or values["train_fn"]["gr_output_length"] < 0:
        raise ValueError(f"gin file '{path}': train_fn.gr_output_length must be an integer >= 0, "
                         f"got {values['train_fn']['gr_output_length']!r}")
    return GRConfig(values["train_fn"], values["hstu_encoder"])
