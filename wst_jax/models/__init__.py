"""Flax NNX decoders (GPT-2 and Llama families; the latter covers Llama, Qwen2, Mistral and
Gemma 3 text) that load Hugging Face checkpoint folders."""
from wst_jax.models.config import DecoderConfig
from wst_jax.models.decoder import Decoder, LayerCache, init_cache, positions_from_mask
from wst_jax.models.heads import ScalarHeadLM
