"""benchmarks/gpu_suite.sh --dry-run: every row's code path on CPU at tiny sizes prints a valid JSON row."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {
    "sampling_sd15": ["ours_s_per_image", "diffusers_s_per_image", "ratio_diffusers_over_ours", "size", "steps"],
    "train_sd15_b8": ["images_per_s", "step_s", "xla_flops_per_step", "mfu", "batch", "latent_side"],
    "train_sd15_b32": ["images_per_s", "step_s", "xla_flops_per_step", "mfu", "batch", "latent_side"],
    "train_sdxl_b1": ["step_s", "xla_flops_per_step", "batch", "latent_side"],
    "hstu_ml20m": ["train_sequences_per_s", "train_tokens_per_s", "embed_dim", "seq_len", "batch", "reference"],
    "topk_10m": ["qps", "items", "dim", "queries", "k"],
}


def test_gpu_suite_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["row"] for r in rows] == list(FIELDS), proc.stdout + proc.stderr[-3000:]
    assert [json.loads(line) for line in (tmp_path / "gpu_suite.jsonl").read_text().splitlines()] == rows
    for r in rows:
        assert "error" not in r, r
        assert r["dry_run"] is True and r["device"] and r["dtype"], r
        for field in FIELDS[r["row"]]:
            assert field in r, (r["row"], field)
        for field in ("ours_s_per_image", "images_per_s", "train_sequences_per_s", "qps"):
            if field in r:
                assert r[field] > 0, r
