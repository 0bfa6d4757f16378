"""Settings for the whole test session, made before JAX starts (subprocesses inherit them through os.environ).

Most of a test's time on CPU is XLA compiling tiny programs, many of them the same program compiled again by
another test or a subprocess. So, unless the caller set them already:
- XLA compiles without LLVM's optimisations (``--xla_backend_optimization_level=0``): numerics are the same
  ops, run a little slower, compiled several times faster;
- compiled programs go to a persistent cache shared by the session and its subprocesses (a fresh temporary
  folder, removed at the end), so a program compiled once is loaded, not compiled, the next time.
Subprocess tests append their own flags to ``os.environ["XLA_FLAGS"]`` rather than replacing it. Tests that
launch several processes as one cluster drop the cache (a process that loads a program the other compiled
hung a 2-process run at its shutdown barrier).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    _fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    os.environ["XLA_FLAGS"] = f"{_flags} {_fast}".strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="jax-test-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

