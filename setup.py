"""bertgpt_jax: BERT and GPT-2 pretraining in JAX/Flax. The one source of truth for dependencies."""

from setuptools import find_packages, setup

RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "array-record>=0.8",
    "tokenizers>=0.21",
    # Byte-level BPE (GPT-2) runs on tiktoken's Rust core.
    "tiktoken>=0.7",
    "sentencepiece>=0.2",
    "absl-py>=2.1",
    "safetensors>=0.4",
    "numpy>=1.26",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
]

TEST = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    # The CPU wheel lies on disk; an unpinned torch pulls a multi-GB CUDA build.
    "torch==2.13.0",
    "transformers>=5.0",
    # Train steps compiled for TPU slices on the CPU (tests/test_tpu.py).
    "libtpu==0.0.42.*",
    # Executing the notebooks in colab/.
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    # The reference for entity-level tagging scores.
    "seqeval==1.2.2",
]

# The TPU runtime, matching jax 0.10.2 (jax[tpu]==0.10.2 pins it): TPU VMs, and --compile_only on any host.
TPU = ["libtpu==0.0.42.*"]

setup(
    name="bertgpt_jax",
    version="0.1.0",
    description="Pretrain, fine-tune and serve BERT and GPT-2 with JAX/Flax on TPU, GPU and CPU.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["bertgpt_jax", "bertgpt_jax.*"]),
    package_data={"bertgpt_jax": ["tokenization/default_corpus/*"]},
    install_requires=RUNTIME,
    extras_require={"test": TEST, "tpu": TPU, "tfds": ["tensorflow-datasets>=4.9", "h5py"]},
)
