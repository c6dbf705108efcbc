"""wst-jax: Weak-to-Strong Transfer (arXiv 2508.16741) in JAX / Flax NNX."""
