"""Models buildable at any width ratio; federation-agnostic."""

from fedconv_jax.models.cnn import CNN, scaled_width
from fedconv_jax.models.layers import CONV_IMPLS, resolve_conv_impl
from fedconv_jax.models.zoo import MODELS, ModelSpec, make_model

__all__ = [
    "CNN",
    "CONV_IMPLS",
    "MODELS",
    "ModelSpec",
    "make_model",
    "resolve_conv_impl",
    "scaled_width",
]
