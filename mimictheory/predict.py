"""Training dynamics from the kernels, with neural-tangents' `predict` names (public API; see
`mimictheory._src.predict`).

>>> import numpy as np
>>> from mimictheory import predict
>>> round(predict.max_learning_rate(np.diag([4.0, 1.0])), 9)
1.0
"""
from mimictheory._src.predict import (  # noqa: F401
    KRYLOV_MIN_INPUTS, METHODS, PSD_TOLERANCE, Gaussian, gp_inference, gradient_descent_mse,
    gradient_descent_mse_ensemble, max_learning_rate)

__all__ = ["gradient_descent_mse", "gradient_descent_mse_ensemble", "gp_inference",
           "max_learning_rate", "Gaussian", "PSD_TOLERANCE", "KRYLOV_MIN_INPUTS", "METHODS"]
