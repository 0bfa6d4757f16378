"""Import and export of facebookresearch/generative-recommenders research HSTU checkpoints.

    recsys-jax convert from-generative-recommenders --checkpoint CKPT --gin CONFIG.gin --out RUN
    recsys-jax convert to-generative-recommenders --checkpoint RUN --out CKPT [--gin OUT.gin]

GR saves ``torch.save({"epoch", "model_state_dict", "optimizer_state_dict"})``; only
``model_state_dict`` is read, with ``torch.load(weights_only=True)`` (no pickle code runs). Its keys
map onto our :class:`~recsys_jax.models.hstu.HSTU` one to one::

    _embedding_module._item_emb.weight                      [N + 1, D]  items.embedding (rows 0..N)
    _input_features_preproc._pos_emb.weight                 [P, D]      positions.embedding
    _hstu._attention_layers.{i}._uvqk                       [D, 2h(dv+dqk)]  layers.{i}.uvqk
    _hstu._attention_layers.{i}._o.weight / .bias           [D, h dv]   layers.{i}.out.kernel (transposed) / bias
    _hstu._attention_layers.{i}._rel_attn_bias._pos_w       [2P - 1]    layers.{i}.pos_bias
    _hstu._attention_layers.{i}._rel_attn_bias._ts_w        [129]       layers.{i}.time_bias
    _attn_mask                                              [P, P]      (a constant: the causal mask)

with ``P = max_sequence_length + gr_output_length + 1`` (our ``max_seq_len``). The one modelling
difference, which timestamp the time bias measures gaps from, is the model option
``time_bias_from="next"`` that the import sets. GR's item ids are dense ``1..N`` already: the run's
id map is the identity (original id ``"7"`` is row 7), or, with ``dataset=``, the table is reordered
into that dataset's id map (its original ids must be GR's item ids) so that ``recsys-jax eval`` runs
on it.
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from recsys_jax.convert.gr_gin import GRConfig, check_exportable, read_gin
from recsys_jax.data.sequences import IdMap
from recsys_jax.models.hstu import HSTU, HSTUConfig

ITEMS = "_embedding_module._item_emb.weight"
POSITIONS = "_input_features_preproc._pos_emb.weight"
ATTN_MASK = "_attn_mask"
LAYER = "_hstu._attention_layers.{i}."


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("reading and writing generative-recommenders checkpoints needs torch: "
                          "pip install 'canvas-recsys-jax[convert]'") from None
    return torch


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``model_state_dict`` of a GR checkpoint (or a bare state dict) as float32 numpy arrays."""
    torch = _torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' not found")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises UnpicklingError, RuntimeError, ...)
        raise ValueError(f"'{path}' is not a torch checkpoint that loads with weights_only=True: "
                         f"{str(e).splitlines()[0]}") from None
    sd = saved.get("model_state_dict", saved) if isinstance(saved, dict) else None
    if not isinstance(sd, dict) or ITEMS not in sd:
        keys = sorted(saved)[:8] if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(f"'{path}' has no generative-recommenders HSTU state dict: expected a dict with "
                         f"'model_state_dict' holding '{ITEMS}', got {keys}")
    return {k: v.detach().cpu().numpy() for k, v in sd.items() if hasattr(v, "detach")}


def expected_shapes(cfg: HSTUConfig, num_items: int) -> dict[str, tuple[int, ...]]:
    """The state dict keys and shapes GR's HSTU has for ``cfg`` (see the module doc)."""
    d, h, p = cfg.embed_dim, cfg.num_heads, cfg.max_seq_len
    shapes = {ATTN_MASK: (p, p), ITEMS: (num_items + 1, d), POSITIONS: (p, d)}
    for i in range(cfg.num_layers):
        pre = LAYER.format(i=i)
        shapes[pre + "_uvqk"] = (d, 2 * h * (cfg.linear_dim + cfg.attention_dim))
        if cfg.use_position_bias or cfg.use_time_bias:
            shapes[pre + "_rel_attn_bias._ts_w"] = (cfg.num_time_buckets + 1,)
            shapes[pre + "_rel_attn_bias._pos_w"] = (2 * p - 1,)
        shapes[pre + "_o.weight"] = (d, h * cfg.linear_dim)
        shapes[pre + "_o.bias"] = (d,)
    return shapes


def _check(sd: dict[str, np.ndarray], cfg: HSTUConfig, num_items: int, where: str) -> None:
    want = expected_shapes(cfg, num_items)
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if missing or extra:
        raise ValueError(f"{where}: state dict keys do not match the gin config's HSTU "
                         f"(missing {missing[:6]}, unexpected {extra[:6]})")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise ValueError(f"{where}: '{k}' has shape {tuple(sd[k].shape)}, the gin config gives {shape}")


def model_from_state_dict(sd: dict[str, np.ndarray], cfg: HSTUConfig, *, item_rows: np.ndarray | None = None,
                          where: str = "checkpoint") -> HSTU:
    """Our HSTU holding GR's weights. ``item_rows[d]``: the GR item row of our dense id ``d`` (default the
    identity; ``item_rows[0]`` is 0, the padding row, stored as it is so that the export gives it back)."""
    num_gr_items = sd[ITEMS].shape[0] - 1 if ITEMS in sd else 0
    _check(sd, cfg, num_gr_items, where)
    items = sd[ITEMS] if item_rows is None else sd[ITEMS][item_rows]
    model = HSTU(cfg, items.shape[0] - 1, rngs=nnx.Rngs(0))
    table = np.zeros(model.items.embedding.shape, np.float32)
    table[: items.shape[0]] = items  # row 0 (GR's padding row, random from its init) is kept, never read
    model.items.embedding[...] = table
    model.positions.embedding[...] = sd[POSITIONS]
    for i, layer in enumerate(model.layers):
        pre = LAYER.format(i=i)
        layer.uvqk[...] = sd[pre + "_uvqk"]
        layer.out.kernel[...] = sd[pre + "_o.weight"].T
        layer.out.bias[...] = sd[pre + "_o.bias"]
        if cfg.use_position_bias:
            layer.pos_bias[...] = sd[pre + "_rel_attn_bias._pos_w"]
        if cfg.use_time_bias:
            layer.time_bias[...] = sd[pre + "_rel_attn_bias._ts_w"]
    return model


def state_dict_from_model(model: HSTU) -> dict[str, np.ndarray]:
    """GR's ``model_state_dict`` (numpy) of our HSTU: the inverse of :func:`model_from_state_dict`."""
    cfg = model.cfg
    check_exportable(cfg)
    p = cfg.max_seq_len
    sd = {ATTN_MASK: np.triu(np.ones((p, p), bool), k=1),
          ITEMS: np.asarray(model.items.embedding[...][: model.num_items + 1]),
          POSITIONS: np.asarray(model.positions.embedding[...])}
    for i, layer in enumerate(model.layers):
        pre = LAYER.format(i=i)
        sd[pre + "_uvqk"] = np.asarray(layer.uvqk[...])
        if cfg.use_time_bias:
            sd[pre + "_rel_attn_bias._ts_w"] = np.asarray(layer.time_bias[...])
            sd[pre + "_rel_attn_bias._pos_w"] = np.asarray(layer.pos_bias[...])
        sd[pre + "_o.weight"] = np.asarray(layer.out.kernel[...]).T.copy()
        sd[pre + "_o.bias"] = np.asarray(layer.out.bias[...])
    return sd


def _dataset_rows(dataset_dir: str, num_gr_items: int) -> tuple[IdMap, np.ndarray]:
    """The dataset's item id map and, per dense id, the GR row of its original id."""
    from recsys_jax.data.loader import load_dataset

    item_map = load_dataset(dataset_dir).item_map
    rows = np.zeros(len(item_map) + 1, np.int64)
    for dense in range(1, len(item_map) + 1):
        key = item_map.to_original(dense)
        try:
            row = int(key)
        except ValueError:
            row = -1
        if not 1 <= row <= num_gr_items:
            raise ValueError(f"dataset '{dataset_dir}': item {key!r} (dense id {dense}) is not a GR item id: "
                             f"expected integers 1..{num_gr_items}, the rows of the checkpoint's item table")
        rows[dense] = row
    return item_map, rows


def from_generative_recommenders(checkpoint: str | os.PathLike, gin: str | os.PathLike, out: str | os.PathLike, *,
                                 dataset: str | os.PathLike | None = None, overwrite: bool = False) -> str:
    """Write run folder ``out`` (config.yaml, checkpoints/0, dataset/) from a GR checkpoint + gin file;
    ``Retriever.from_checkpoint(out)`` and ``recsys-jax eval --checkpoint out`` load it."""
    from recsys_jax.convert.run_folder import write_run

    gr = read_gin(gin)
    cfg = gr.hstu_config()
    sd = load_state_dict(checkpoint)
    num_gr_items = sd[ITEMS].shape[0] - 1
    if dataset is None:
        item_map, rows = IdMap([None] + [str(i) for i in range(1, num_gr_items + 1)], offset=1), None
    else:
        item_map, rows = _dataset_rows(os.fspath(dataset), num_gr_items)
    model = model_from_state_dict(sd, cfg, item_rows=rows, where=f"checkpoint '{os.fspath(checkpoint)}'")
    source = {"converted_from": "generative-recommenders", "checkpoint": os.path.abspath(checkpoint),
              "gin": os.path.abspath(gin), "gin_values": {"train_fn": gr.train_fn, "hstu_encoder": gr.hstu_encoder}}
    return write_run(model, "hstu", item_map, out, max_len=int(gr.train_fn["max_sequence_length"]),
                     dataset=dataset, source=source, overwrite=overwrite)


def to_generative_recommenders(run: str | os.PathLike, out: str | os.PathLike, *, gin: str | os.PathLike | None = None,
                               which: str = "auto") -> dict[str, tuple[int, ...]]:
    """Write the HSTU of run folder ``run`` as a GR checkpoint ``out`` (``{"model_state_dict": ...}``,
    item row ``d`` = our dense id ``d``), and its gin values to ``gin`` when given; returns the shapes."""
    from recsys_jax.train.restore import restore_run

    torch = _torch()
    restored = restore_run(run, which=which)
    if restored.cfg.model.name != "hstu":
        raise ValueError(f"run '{os.fspath(run)}' holds a {restored.cfg.model.name!r} model; only HSTU converts "
                         "to generative-recommenders")
    model = restored.model()
    sd = state_dict_from_model(model)
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    torch.save({"epoch": restored.step, "model_state_dict": {k: torch.from_numpy(np.array(v))
                                                             for k, v in sd.items()}}, os.fspath(out))
    if gin is not None:
        text = GRConfig.from_hstu_config(model.cfg, restored.cfg.data.max_len).to_gin()
        with open(gin, "w") as f:
            f.write(f"# written by recsys-jax convert to-generative-recommenders from {os.fspath(run)}\n" + text)
    return {k: tuple(v.shape) for k, v in sd.items()}

