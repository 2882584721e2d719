"""Sparse autoencoders on the residual stream: collect activations, train a top-k SAE, find
the latents aligned with the reward direction, decompose rewards over latents."""

from ._native import sae_collect as collect
from ._native import sae_decompose as decompose
from ._native import sae_features as features
from ._native import sae_train as train

__all__ = ["collect", "decompose", "features", "train"]
