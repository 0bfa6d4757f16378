"""A no-training content baseline for the cold-item evaluation: rank items by their text alone.

    python benchmarks/coldstart_text_knn.py --run runs/recsys/text_coldstart_ml1m --split validation
    python benchmarks/coldstart_text_knn.py --run runs/recsys/text_coldstart_ml1m --last 5 --fuse 0 0.75

For the run's dataset and held-out items (``data.cold_item_fraction`` / ``cold_item_seed`` of its config),
each user is the sum of the L2-normalised item text embeddings (``item_text.npy``, MiniLM) of its last ``n``
history items, every item is scored by cosine with it, and the target's rank is taken over the full corpus
exactly as ``recsys-jax eval`` does (history excluded, pessimistic ties). Prints JSON: hr@k (= recall@k, one
target per user) of cold and warm targets per ``--last n``. Nothing is learned, so it says how far titles and
genres alone place a cold item, beside the trained fused model and most-popular (which ranks every cold item
last: no training interactions). ``--fuse w ...``: also the run's model with the profile added at score level
(late fusion: ``cos(user, item) + w cos(profile, text)``; w = 0 is the model alone, as ``recsys-jax eval``):
a diagnostic, choose w on the validation split.
"""

from __future__ import annotations

import argparse
import json
import os

import jax.numpy as jnp
import numpy as np
import yaml

from recsys_jax.data.cold_items import cold_item_mask
from recsys_jax.data.loader import load_dataset
from recsys_jax.eval.coldstart import keep_last
from recsys_jax.eval.evaluate import eval_iterator, history_length, user_embeddings
from recsys_jax.eval.metrics import compute_ranks, metrics_from_ranks


def text_knn(dataset, text: np.ndarray, cold: np.ndarray, split: str, last: int, ks=(10, 50), max_len: int = 200,
             model=None, weight: float = 1.0):
    """``{"cold": {...}, "warm": {...}}`` hr@k of the text-profile ranking (see the module docstring); with
    ``model``: of ``model``'s score + ``weight`` x the profile's (normalised profile)."""
    if text.shape[0] != dataset.num_items + 1:
        raise ValueError(f"item text table has {text.shape[0]} rows; expected num_items + 1 = {dataset.num_items + 1}")
    table = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    table[0] = 0.0
    table = jnp.asarray(table, jnp.float32)
    ranks, targets = [], []
    for b in eval_iterator(dataset, split, batch_size=256, max_len=max_len, history_len=history_length(dataset),
                           shard_index=0, shard_count=1):
        user = jnp.take(table, keep_last(b["item_ids"], last), axis=0).sum(axis=1)
        items = table
        if model is not None:  # [u; w p] . [item; text] = cos(u, item) + w cos(p, text)
            user = user / jnp.maximum(jnp.linalg.norm(user, axis=1, keepdims=True), 1e-12)
            user = jnp.concatenate([user_embeddings(model, b["item_ids"], b.get("timestamps")), weight * user], 1)
            items = jnp.concatenate([model.item_embeddings(), table], 1)
        r = compute_ranks(user, b["target_id"], items, b["history_ids"], ties="pessimistic")
        valid = np.asarray(b["valid"])
        ranks.append(np.asarray(r)[valid])
        targets.append(np.asarray(b["target_id"])[valid])
    r, t = np.concatenate(ranks), np.concatenate(targets)
    out = {}
    for name, where in (("cold", cold[t]), ("warm", ~cold[t])):
        m = metrics_from_ranks(r[where], ks) if where.any() else {}
        out[name] = {**{k: round(float(v), 6) for k, v in m.items() if k.startswith("hr@")}, "count": int(where.sum())}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder trained with data.cold_item_fraction > 0")
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--last", type=int, nargs="+", default=[5, 20, 200], help="history items in the text profile")
    p.add_argument("--ks", type=int, nargs="+", default=[10, 50])
    p.add_argument("--fuse", type=float, nargs="*", default=[], help="late-fusion weights with the run's model")
    a = p.parse_args(argv)
    cfg = yaml.safe_load(open(os.path.join(a.run, "config.yaml")))
    source = json.load(open(os.path.join(a.run, "dataset", "source.json")))
    frac = float(cfg["data"].get("cold_item_fraction") or 0.0)
    if not frac:
        raise ValueError(f"--run {a.run}: its config has no data.cold_item_fraction (no held-out items to rank)")
    dataset = load_dataset(source["path"])
    text_path = os.path.join(source["path"], "item_text.npy")
    if not os.path.isfile(text_path):
        raise FileNotFoundError(f"{text_path}: no item text embeddings (build with `recsys-jax data build --item-text`)")
    cold = cold_item_mask(dataset.num_items, frac, int(cfg["data"].get("cold_item_seed") or 0))
    text = np.load(text_path)
    res = {"run": a.run, "split": a.split, "cold_items": int(cold.sum()),
           "text_knn": {str(n): text_knn(dataset, text, cold, a.split, n, tuple(a.ks), int(cfg["data"]["max_len"]))
                        for n in a.last}}
    if a.fuse:
        from recsys_jax.train.restore import restore_run

        model = restore_run(a.run, eval_split=a.split).model()
        res["fused"] = {f"{n}:{w}": text_knn(dataset, text, cold, a.split, n, tuple(a.ks), int(cfg["data"]["max_len"]),
                                             model=model, weight=w) for n in a.last for w in a.fuse}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
