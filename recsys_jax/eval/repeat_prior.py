"""A repeat prior fused with a unified run's scores: people re-buy, re-watch and convert on what they already did.

The fused score of item ``i`` for a user is ``<user, i> + w * log1p(c)``, ``c`` the number of times ``i`` occurs
in the user's history (every stored event before the target, any action), with one weight ``w`` per scenario
(:func:`recsys_jax.eval.scenarios.pool_top_k`; served by :meth:`recsys_jax.retriever.Retriever.recommend`'s
``repeat_weight``). ``w = 0`` is the model alone; a large ``w`` ranks the user's own items first (the most
frequent first), then the rest by the model, as the repeat baseline ranks them by popularity. The history must
stay in the ranking (``eval.exclude_history: false``).

:func:`choose_repeat_weights` picks ``w`` per scenario from :data:`REPEAT_GRID` on the run's **validation**
examples, never the test ones: under the time protocol the window before the test window, ``[T - window, T)``,
from the history before ``T - window``; under leave-one-out each user's second-to-last event. The run's model
was trained on that window's events (a time split trains on everything before ``T``), so it scores them better
than it will score the test window and the weights chosen with it lean towards the model (a smaller ``w``).
Without that bias: choose them with a **backtest run** (the same config with ``unified.split.backtest: 1``,
trained on the events before the validation window and tested on it; ``recsys-jax eval --repeat auto
--repeat-model RUN``, :func:`backtest_examples`), then apply them to the run's test window.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from recsys_jax.data.attribution import parse_window
from recsys_jax.eval.scenarios import rank_scenario, run_examples, scenario_name, scenario_user_rows

# in units of the model's score (a cosine with l2-normalised embeddings); 100 puts the history first
REPEAT_GRID = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 100.0)


def validation_examples(task):
    """The examples the weights are chosen on (see the module doc)."""
    sp = task.cfg.unified.split
    if sp.protocol == "time":
        return run_examples(task, cutoff=task.cutoff - parse_window(sp.window))
    return run_examples(task, split="validation")


def backtest_examples(task, backtest_task):
    """The examples of ``backtest_task``'s test window, checked to be ``task``'s validation window: the same
    dataset, labels, window and ``T`` one window earlier (``unified.split.backtest`` one more than ``task``'s)."""
    sp, bp = task.cfg.unified.split, backtest_task.cfg.unified.split
    if sp.protocol != "time" or bp.protocol != "time":
        raise ValueError("a backtest run needs the time protocol (unified.split.protocol: time) in both runs")
    problems = []
    if parse_window(bp.window) != parse_window(sp.window):
        problems.append(f"window {bp.window!r} is not the run's {sp.window!r}")
    if backtest_task.cutoff != task.cutoff - parse_window(sp.window):
        problems.append(f"T {backtest_task.cutoff} is not the run's T - window {task.cutoff - parse_window(sp.window)} "
                        f"(unified.split.backtest {bp.backtest}: expected {sp.backtest + 1})")
    if backtest_task.labels.names != task.labels.names or backtest_task.num_items != task.num_items:
        problems.append("its labels or items differ from the run's")
    if problems:
        raise ValueError("the backtest run does not test the run's validation window: " + "; ".join(problems))
    return run_examples(backtest_task)


def choose_repeat_weights(task, model: nnx.Module, *, grid: Sequence[float] = REPEAT_GRID,
                          ks: Sequence[int] | None = None, batch_size: int | None = None,
                          examples=None) -> dict[str, dict]:
    """``{scenario: {"weight": w, "validation": {w: mean recall@ks}, "count": examples}}``: per scenario of the
    validation examples (default :func:`validation_examples`), the grid weight with the best mean of recall@k
    over ``ks`` (ties: the smaller weight)."""
    grid = sorted({float(w) for w in grid})
    if not grid or grid[0] < 0:
        raise ValueError(f"repeat weights must be >= 0, got {list(grid)}")
    e = task.cfg.eval
    ks = tuple(int(k) for k in (ks or e.ks))
    batch_size = batch_size or e.batch_size
    examples = validation_examples(task) if examples is None else examples
    table = model.item_embeddings()
    surfaces = task.dataset.events["surfaces"]
    out = {}
    for (l, s), users in scenario_user_rows(model, examples, batch_size).items():
        rows, relevant = examples.targets[l, s]
        allowed = jnp.asarray(task.labels.pool[l])
        metrics = rank_scenario(users, table, allowed, None, relevant, ks, batch_size, examples.history[rows], grid)
        scores = {w: round(float(np.mean([m[f"recall@{k}"] for k in ks])), 6) for w, m in zip(grid, metrics)}
        best = max(grid, key=lambda w: (scores[w], -w))
        out[scenario_name(task.labels.names[l], surfaces[s])] = {
            "weight": best, "validation": {str(w): v for w, v in scores.items()}, "count": len(rows)}
    return out
