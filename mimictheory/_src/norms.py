"""One vocabulary for the normalisations, shared by the theory, the layers, the CLI and figures.

The theory's maps and kernels (module `maps`) take `THEORY_NORMS`; the trainable models (modules
`nn`, `models`, `train`) take `MODEL_NORMS`. The names mean the same thing wherever both
appear: "none" (plain), "weight_mean" (every weight centred, Lemma 1), "batch_norm" (BN after
every hidden layer). "batch_norm_paper" is the theory's full-batch approximation of BN
(Theorem 2); "last_bn" (a plain network with the last BN only) and "mimic" (MimicNorm: weight
mean, the last BN and, in residual models, the residual scalars) exist only as models.
"bn" is accepted as another spelling of "batch_norm".
"""
from __future__ import annotations

import jax.numpy as jnp

from mimictheory._src import checks

__all__ = ["THEORY_NORMS", "MODEL_NORMS", "RESIDUAL_BASELINES", "ALIASES", "ABLATION_METHODS",
           "check_norm", "centre_kernel"]

THEORY_NORMS = ("none", "weight_mean", "batch_norm", "batch_norm_paper")
MODEL_NORMS = ("batch_norm", "none", "weight_mean", "last_bn", "mimic")
#: Normalisation-free baselines of the residual models (ResNet18/50), as the paper compares them:
#: Fixup (Zhang et al. 2019) and SkipInit (De & Smith 2020).
RESIDUAL_BASELINES = ("fixup", "skipinit")
ALIASES = {"bn": "batch_norm"}
#: The methods of the paper's Table 2 (learning-rate ablation), in its order.
ABLATION_METHODS = ("none", "weight_mean", "mimic", "batch_norm")


def check_norm(value, allowed, name: str = "norm") -> str:
  """`value` in its one spelling (an alias resolved), checked against `allowed`.

  >>> check_norm("bn", MODEL_NORMS)
  'batch_norm'
  """
  value = ALIASES.get(value, value) if isinstance(value, str) else value
  return checks.check_choice(name, value, allowed)


def centre_kernel(kernel):
  """W̄ = W − mean over every axis but the last (the output units or channels): each output's
  weights have zero mean (eq 10). Dense (in, out) and conv (kh, kw, in, out) kernels alike.

  >>> import numpy as np
  >>> from mimictheory.nn import centre_kernel
  >>> w = centre_kernel(np.arange(6.0).reshape(3, 2))
  >>> np.asarray(w).mean(axis=0).tolist()   # every output unit's incoming weights: mean 0
  [0.0, 0.0]
  """
  return kernel - jnp.mean(kernel, axis=tuple(range(kernel.ndim - 1)), keepdims=True)
