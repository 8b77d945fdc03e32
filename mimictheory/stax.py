"""Networks as data, with neural-tangents' `stax` names (public API; see `mimictheory._src.stax`).

>>> from mimictheory import stax
>>> init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
"""
from mimictheory._src.stax import (  # noqa: F401
    AvgPool, BatchNorm, Conv, Dense, Elementwise, ElementwiseNumerical, Erf, FanInSum, FanOut,
    Flatten, Gelu, GlobalAvgPool, Identity,
    Kernel, LayerNorm, LeakyRelu, MeanField, Network, Relu, Scale, Tanh, mlp, norm_layers,
    parallel, serial)

__all__ = ["AvgPool", "BatchNorm", "Conv", "Flatten", "GlobalAvgPool",
           "Dense", "Elementwise", "ElementwiseNumerical", "Erf", "FanInSum",
           "FanOut", "Gelu", "Identity", "Kernel", "LayerNorm", "LeakyRelu", "MeanField",
           "Network", "Relu", "Scale", "Tanh", "mlp", "norm_layers", "parallel", "serial"]
