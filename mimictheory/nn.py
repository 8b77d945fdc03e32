"""MimicNorm layers and models in Flax NNX (public API; see `mimictheory._src.nn`)."""
from mimictheory._src.nn import (  # noqa: F401
  MIN_FAN_IN,
  MLP,
  NORM_OPTIONS,
  RESIDUAL_BASELINES,
  CentredKernel,
  Dense,
  LastBatchNorm,
  ResidualScalar,
  centre_kernel,
  init_sw2,
  per_channel_fan_in,
  project_weight_mean,
  pytorch_init,
)
from mimictheory._src.stax_flax import StaxModel, from_stax  # noqa: F401
from mimictheory._src.models import (  # noqa: F401
    MODELS, VGG, Conv, ResNet, ShuffleNetV2, SqueezeNet, make_model, signals)

__all__ = [
  "MIN_FAN_IN",
  "MLP",
  "NORM_OPTIONS",
  "RESIDUAL_BASELINES",
  "CentredKernel",
  "Dense",
  "LastBatchNorm",
  "ResidualScalar",
  "centre_kernel",
  "init_sw2",
  "per_channel_fan_in",
  "project_weight_mean",
  "pytorch_init",
  "MODELS",
  "VGG",
  "Conv",
  "ResNet",
  "ShuffleNetV2",
  "SqueezeNet",
  "make_model",
  "signals",
  "StaxModel",
  "from_stax",
]
