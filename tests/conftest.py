"""Tests see 8 simulated CPU devices; the flag must be set before jax is imported."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# With libtpu installed (TPU compilation tests), it must not become the default backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Caches the package keeps between runs (the WordPiece character classes) start cold in every test session,
# so a test of their contents never passes on a table an earlier version of the code built.
os.environ["BERTGPT_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="bertgpt_jax_test_cache_")
atexit.register(shutil.rmtree, os.environ["BERTGPT_JAX_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def minilm_dir():
    from tests import artifacts

    return artifacts.minilm_dir()


@pytest.fixture(scope="session")
def gpt2_tiktoken():
    from tests import artifacts

    return artifacts.gpt2_tiktoken()
