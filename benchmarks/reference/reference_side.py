"""The reference side of ``hstu_train_step.py``: generative-recommenders' research HSTU training step.

Runs in a python that has torch, fbgemm-gpu-cpu and gin-config (the ``reference`` extra) and imports
nothing from this project. The model, negatives sampler, loss and optimizer are built as
``generative_recommenders/research/trainer/train.py``'s ``train_fn`` builds them for
``configs/ml-1m/hstu-sampled-softmax-n128-final.gin`` (``local`` sampling, l2-normalised items,
DotProduct, l2-normalised user embeddings, learnable positions, AdamW with betas (0.9, 0.98)), and each
step is that loop's body (features from the row, target scattered in, forward, loss, backward, step).

    python reference_side.py --gr-path CHECKOUT --batches batches.npz --count 23 --warmup 3 --spec '{...}'

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def rows_from_batch(b: dict, max_len: int) -> dict:
    """Our autoregressive batch (inputs, next-item targets, mask) as their training rows: the user's
    items (inputs + the last target) split into a history of up to ``max_len`` items, right-padded, and
    the next item as target."""
    import torch

    n = b["item_ids"].shape[0]
    hist = np.zeros((n, max_len), np.int64)
    hist_ts = np.zeros((n, max_len), np.int64)
    lengths, targets, target_ts = (np.zeros(n, np.int64) for _ in range(3))
    for r in range(n):
        real = b["mask"][r].astype(bool)
        items = np.concatenate([b["item_ids"][r][real], b["target_ids"][r][real][-1:]])
        ts = np.concatenate([b["timestamps"][r][real], b["target_timestamps"][r][real][-1:]])
        m = len(items) - 1
        hist[r, :m], hist_ts[r, :m], lengths[r] = items[:m], ts[:m], m
        targets[r], target_ts[r] = items[m], ts[m]
    t = torch.from_numpy
    return {"historical_ids": t(hist), "historical_timestamps": t(hist_ts),
            "historical_ratings": torch.zeros((n, max_len), dtype=torch.int64), "history_lengths": t(lengths),
            "target_ids": t(targets), "target_ratings": torch.zeros(n, dtype=torch.int64),
            "target_timestamps": t(target_ts)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gr-path", required=True)
    p.add_argument("--batches", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--spec", required=True, help="JSON: sizes (see hstu_train_step.reference_spec)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    spec = json.loads(args.spec)
    sys.path.insert(0, args.gr_path)

    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
    import gin
    import torch
    from generative_recommenders.research.modeling.sequential.autoregressive_losses import LocalNegativesSampler
    from generative_recommenders.research.modeling.sequential.embedding_modules import LocalEmbeddingModule
    from generative_recommenders.research.modeling.sequential.encoder_utils import get_sequential_encoder
    from generative_recommenders.research.modeling.sequential.features import movielens_seq_features_from_row
    from generative_recommenders.research.modeling.sequential.input_features_preprocessors import (
        LearnablePositionalEmbeddingInputFeaturesPreprocessor)
    from generative_recommenders.research.modeling.sequential.losses.sampled_softmax import SampledSoftmaxLoss
    from generative_recommenders.research.modeling.sequential.output_postprocessors import (
        L2NormEmbeddingPostprocessor)
    from generative_recommenders.research.modeling.similarity_utils import get_similarity_function

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load = os.getloadavg()[0]
    d, max_len, gr_output_length = spec["embed_dim"], spec["max_len"], 10
    for key, value in {"num_blocks": spec["num_blocks"], "num_heads": spec["num_heads"], "dqk": d, "dv": d,
                       "linear_dropout_rate": spec["dropout"]}.items():
        gin.bind_parameter(f"hstu_encoder.{key}", value)
    embedding = LocalEmbeddingModule(num_items=spec["num_items"], item_embedding_dim=d)
    interaction, _ = get_similarity_function(module_type="DotProduct", query_embedding_dim=d, item_embedding_dim=d)
    model = get_sequential_encoder(
        module_type="HSTU", max_sequence_length=max_len, max_output_length=gr_output_length + 1,
        embedding_module=embedding, interaction_module=interaction,
        input_preproc_module=LearnablePositionalEmbeddingInputFeaturesPreprocessor(
            max_sequence_len=max_len + gr_output_length + 1, embedding_dim=d, dropout_rate=spec["dropout"]),
        output_postproc_module=L2NormEmbeddingPostprocessor(embedding_dim=d, eps=1e-6), verbose=False)
    ar_loss = SampledSoftmaxLoss(num_to_sample=spec["num_negatives"], softmax_temperature=spec["temperature"],
                                 model=model)
    sampler = LocalNegativesSampler(num_items=spec["num_items"], item_emb=model._embedding_module._item_emb,
                                    all_item_ids=list(range(1, spec["num_items"] + 1)), l2_norm=True,
                                    l2_norm_eps=1e-6)
    opt = torch.optim.AdamW(model.parameters(), lr=spec["learning_rate"], betas=(0.9, 0.98),
                            weight_decay=spec["weight_decay"])
    model.train()

    data = np.load(args.batches)
    keys = ("item_ids", "timestamps", "target_ids", "target_timestamps", "mask")
    rows = [rows_from_batch({k: data[f"{k}_{i}"] for k in keys}, max_len) for i in range(args.count)]

    def step(row) -> float:
        seq_features, target_ids, _ = movielens_seq_features_from_row(
            row, device="cpu", max_output_length=gr_output_length + 1)
        seq_features.past_ids.scatter_(dim=1, index=seq_features.past_lengths.view(-1, 1), src=target_ids.view(-1, 1))
        opt.zero_grad()
        input_embeddings = model.get_item_embeddings(seq_features.past_ids)
        seq_embeddings = model(past_lengths=seq_features.past_lengths, past_ids=seq_features.past_ids,
                               past_embeddings=input_embeddings, past_payloads=seq_features.past_payloads)
        supervision_ids = seq_features.past_ids
        sampler._item_emb = model._embedding_module._item_emb
        ar_mask = supervision_ids[:, 1:] != 0
        loss, _ = ar_loss(lengths=seq_features.past_lengths, output_embeddings=seq_embeddings[:, :-1, :],
                          supervision_ids=supervision_ids[:, 1:], supervision_embeddings=input_embeddings[:, 1:, :],
                          supervision_weights=ar_mask.float(), negatives_sampler=sampler,
                          **seq_features.past_payloads)
        loss.backward()
        opt.step()
        return float(loss.detach())

    times, losses = [], []
    for i, row in enumerate(rows):
        t0 = time.perf_counter()
        losses.append(step(row))
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    total = sum(times)
    batch = spec["batch_size"]
    print(json.dumps({
        "side": "reference", "measured_steps": len(times), "seconds_per_step": round(total / len(times), 4),
        "median_step_s": round(statistics.median(times), 4),
        "train_sequences_per_s": round(batch * len(times) / total, 2),
        "framework": f"torch {torch.__version__}, fbgemm-gpu-cpu {getattr(fbgemm_gpu, '__version__', '?')}",
        "device": "cpu", "threads": torch.get_num_threads(), "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4), "load_avg_before": round(load, 2), "cpu_count": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
