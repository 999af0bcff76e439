"""Compression: what it is (``compression``), the pipeline of steps (``steps``), and the methods: pruning
(``pruning``) and quantization-aware training (``quantize``)."""

from search.compress.compression import ACTIVATION_BITS, WEIGHT_BITS, Compression
from search.compress.pruning import (
    channel_fraction,
    make_permanent,
    prune_structured,
    prune_unstructured,
    weight_sparsity,
)
from search.compress.quantize import (
    QuantAct,
    QuantConv2d,
    QuantLinear,
    bake_weights,
    fake_quantize_activation,
    fake_quantize_weight,
    quantization_of,
    quantize_model,
)

__all__ = [
    "ACTIVATION_BITS",
    "WEIGHT_BITS",
    "Compression",
    "QuantAct",
    "QuantConv2d",
    "QuantLinear",
    "bake_weights",
    "channel_fraction",
    "fake_quantize_activation",
    "fake_quantize_weight",
    "make_permanent",
    "prune_structured",
    "prune_unstructured",
    "quantization_of",
    "quantize_model",
    "weight_sparsity",
]
