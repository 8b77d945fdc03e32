"""One vocabulary for the normalisations, shared by the theory, the layers, the CLI and figures.

The theory's maps and kernels (module `maps`) take `THEORY_NORMS`; the trainable models (modules
`nn`, `models`, `train`) take `MODEL_NORMS`. The names mean the same thing wherever both
appear: "none" (plain), "weight_mean" (every weight centred, Lemma 1), "batch_norm" (BN after
every hidden layer). "batch_norm_paper" is the theory's full-batch approximation of BN
(Theorem 2); "last_bn" (a plain network with the last BN only) and "mimic" (MimicNorm: weight
mean, the last BN and, in residual models, the residual scalars) exist only as models.
"bn" is accepted as another spelling of "batch_norm".

What a theory norm does to one layer's mean-field maps is a `Norm` (`rule(name)`): whether it
centres φ (weight mean and BN remove (E φ)²), whether it normalises by the unit variance (BN:
σw², σb² drop out), whether it is exact at a finite batch, and Lemma 1's fan-in factor. The
maps, phase diagrams and descriptions ask the rule; none compares names.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mimictheory._src import checks

__all__ = ["THEORY_NORMS", "MODEL_NORMS", "RESIDUAL_BASELINES", "ALIASES", "ABLATION_METHODS",
           "check_norm", "centre_kernel", "Norm", "rule"]

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


@dataclasses.dataclass(frozen=True)
class Norm:
  """What a normalisation does to a layer's mean-field maps, with φ the activation, f Lemma 1's
  factor and K = E[φ(u)φ(v)], D = E[φ'(u)φ'(v)]:

      plain         q12' = σw² f K + σb²,                 ∂q12'/∂q12 = σw² f D
      centred       q12' = σw² f (K − m1 m2) + σb²         (weight mean, eq 10)
      normalised    q12' = (K − m1 m2) / √(Var1 Var2),    ∂q12'/∂q12 = D / √(Var1 Var2)   (BN)

  `exact_batch`: BN exact at a finite batch where the batch is known (kernels, χ1(B)); these
  maps are then its full-batch limit (Theorem 2).

  >>> from mimictheory._src.norms import rule
  >>> [(r.name, r.centred, r.normalised) for r in map(rule, THEORY_NORMS[:3])]
  [('none', False, False), ('weight_mean', True, False), ('batch_norm', True, True)]
  >>> rule("weight_mean").fan_in_factor(300) == 299 / 300, rule("none").fan_in_factor(300)
  (True, 1.0)
  """
  name: str
  centred: bool
  normalised: bool
  exact_batch: bool = False

  def fan_in_factor(self, n: float) -> float:
    """Lemma 1's (n − 1)/n for a centred dense layer of fan-in n (1 for n = ∞ or otherwise)."""
    if self.centred and not self.normalised and n != float("inf"):
      return (n - 1.0) / n
    return 1.0

  def moment(self, act, q):
    """The moment that σw² f multiplies in the variance map: E[φ²], or Var φ when centred."""
    return act.variance(q) if self.centred else act.second_moment(q)

  def variance_map(self, act, sw2, sb2, factor, q):
    if self.normalised:
      return jnp.ones(jnp.broadcast_shapes(jnp.shape(q), jnp.shape(sw2)))
    return sw2 * factor * self.moment(act, q) + sb2

  def covariance_and_slope(self, act, sw2, sb2, factor, q1, q2, q12):
    k, d = act.kernel_pair(q1, q2, q12)
    if self.centred:
      k = k - act.mean(q1) * act.mean(q2)
    if self.normalised:
      scale = 1.0 / jnp.sqrt(act.variance(q1) * act.variance(q2))
      return k * scale, d * scale
    gain = sw2 * factor
    return gain * k + sb2, gain * d

  def diagonal_slope(self, act, sw2, factor, q):
    d = act.derivative_second_moment(q)
    if self.normalised:
      return d / act.variance(q)
    return sw2 * factor * d


_RULES = {r.name: r for r in (Norm("none", False, False), Norm("weight_mean", True, False),
                              Norm("batch_norm", True, True, exact_batch=True),
                              Norm("batch_norm_paper", True, True))}


def rule(name: str) -> Norm:
  """The `Norm` of a theory norm's name (ValueError naming the allowed ones otherwise)."""
  return _RULES[check_norm(name, THEORY_NORMS)]
