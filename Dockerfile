# The project in a container, for launch/k8s/jobset.yaml or any other cluster.
#   docker build -t canvas-recsys-jax .                          # CPU (jax from PyPI)
#   docker build --build-arg EXTRAS=gpu -t canvas-recsys-jax:gpu .   # NVIDIA GPUs (jax[cuda12] wheels)
#   docker run --rm canvas-recsys-jax python -m core_jax.toy --config configs/toy.yaml train.steps=20
# EXTRAS names extras of pyproject.toml, comma-separated (e.g. gpu,test). The CUDA libraries come
# with the jax[cuda12] wheels, so the host needs only the NVIDIA driver and container toolkit.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY core_jax ./core_jax
COPY canvas_jax ./canvas_jax
COPY recsys_jax ./recsys_jax
RUN pip install ".${EXTRAS:+[$EXTRAS]}"
# configs and launchers stay in the working directory: commands name configs/... relative to it
COPY configs ./configs
COPY launch ./launch

# SIGTERM reaches the Python process directly (exec form, no shell in between): a stopped run saves a
# checkpoint and exits 143.
CMD ["python", "-m", "core_jax.toy", "--help"]
