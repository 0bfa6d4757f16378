"""Training for recsys_jax: the sampled-softmax loss, the run-config schema, the task on the shared loop,
dataset caching and restoring runs (``recsys-jax train``)."""
