"""Models buildable at any width ratio, with declared width axes; federation-agnostic."""

from fedconv_jax.models.axes import kept_widths, scaled_width
from fedconv_jax.models.cnn import CNN
from fedconv_jax.models.layers import CONV_IMPLS, resolve_conv_impl
from fedconv_jax.models.zoo import (
    ModelSpec,
    example_model,
    make_model,
    model_names,
    register_model,
    unregister_model,
)

__all__ = [
    "CNN",
    "CONV_IMPLS",
    "ModelSpec",
    "example_model",
    "kept_widths",
    "make_model",
    "model_names",
    "register_model",
    "resolve_conv_impl",
    "scaled_width",
    "unregister_model",
]
