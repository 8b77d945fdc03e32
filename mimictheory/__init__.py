"""mimictheory: mean-field and NTK theory of MimicNorm (Fei et al., AAAI 2021), on JAX.

The public API re-exports the private implementation in `mimictheory._src`:

>>> import mimictheory as mt
>>> float(mt.chi1("relu", sw2=2.0, sb2=0.0))          # Proposition 1: critical
1.0
>>> round(float(mt.chi1("relu", sw2=None, norm="weight_mean")), 6)   # Theorem 3: chaotic
1.466942

All theory runs in float64 (thread-locally; the global JAX setting is left alone).
"""
from mimictheory._src.activations import (
    ACTIVATIONS, Activation, Erf, GaussLegendre, Identity, LeakyReLU, Numerical, ReLU, find_kinks,
    get_activation, relu_dual, relu_dual_derivative)
from mimictheory._src.distributed import initialize as initialize_distributed
from mimictheory._src.dynamics import (
    LastBatchNormRate, LearningRateLimit, TrainingCurves, last_bn_rate, learning_rate_limit,
    training_curves)
from mimictheory._src.experiments import (
    BatchNormGap, ResidualVariances, batch_norm_gap, residual_variances)
from mimictheory._src.finite import (
    Estimate, FiniteNetwork, MonteCarloKernels, Params, finite_network, monte_carlo_chi1,
    monte_carlo_correlations, monte_carlo_kernels, sample_kernels)
from mimictheory._src.signals import Signal
from mimictheory._src.plotting import (
    batch_chi1_curve, plot_accuracy, plot_batch_chi1, plot_chi1_map, plot_correlation_maps,
    plot_depth_scale, plot_layer_correlations, plot_ntk_spectrum, plot_phase_diagram,
    plot_phase_diagrams, plot_training, plot_width_gap)
from mimictheory._src.kernels import (
  BatchNormKernels,
  KernelOverflowError,
  Kernels,
  NTKSpectrum,
  batch_norm_kernels,
  kernels,
  layer_kernels,
  ntk_spectrum,
  row_mesh,
)
from mimictheory._src.maps import (
  BATCH_NORMS,
  NORMS,
  QSTAR_STATUS,
  DepthScales,
  FixedPoints,
  Layer,
  chi1,
  correlation_map,
  correlation_slope,
  covariance_map,
  depth_scale,
  depth_scales,
  fixed_points,
  make_layer,
  qstar,
  stable_correlation,
  stable_sw2,
  variance_map,
)
from mimictheory._src.phase import (
    REGIMES, CriticalLine, PhaseDiagram, critical_line, phase_diagram)
from mimictheory._src.residual import (
    ALPHAS, ResidualKernels, official_residual_scalar, residual_kernels, residual_scalars)

__version__ = "0.1.0"

__all__ = [
  "ACTIVATIONS",
  "Activation",
  "Erf",
  "Identity",
  "LeakyReLU",
  "Numerical",
  "GaussLegendre",
  "ReLU",
  "get_activation",
  "find_kinks",
  "BatchNormKernels", "KernelOverflowError",
  "batch_norm_kernels",
  "BATCH_NORMS",
  "relu_dual",
  "relu_dual_derivative",
  "Kernels",
  "NTKSpectrum",
  "kernels",
  "layer_kernels",
  "ntk_spectrum",
  "row_mesh",
  "initialize_distributed",
  "NORMS",
  "DepthScales",
  "FixedPoints",
  "Layer",
  "chi1",
  "correlation_map",
  "correlation_slope",
  "covariance_map",
  "depth_scale",
  "depth_scales",
  "fixed_points",
  "make_layer",
  "qstar",
  "stable_correlation",
  "stable_sw2",
  "variance_map",
  "PhaseDiagram",
  "critical_line",
  "phase_diagram",
  "REGIMES",
  "CriticalLine",
  "QSTAR_STATUS",
  "Estimate",
  "FiniteNetwork",
  "MonteCarloKernels",
  "Params",
  "Signal",
  "finite_network",
  "monte_carlo_chi1",
  "monte_carlo_correlations",
  "monte_carlo_kernels",
  "sample_kernels",
  "BatchNormGap",
  "batch_norm_gap",
  "ResidualVariances",
  "residual_variances",
  "TrainingCurves",
  "training_curves",
  "LearningRateLimit",
  "learning_rate_limit",
  "LastBatchNormRate",
  "last_bn_rate",
  "official_residual_scalar",
  "plot_phase_diagram",
  "plot_phase_diagrams",
  "plot_training",
  "plot_accuracy",
  "plot_batch_chi1",
  "plot_chi1_map",
  "plot_correlation_maps",
  "plot_depth_scale",
  "plot_layer_correlations",
  "plot_ntk_spectrum",
  "plot_width_gap",
  "batch_chi1_curve",
  "ALPHAS",
  "ResidualKernels",
  "residual_kernels",
  "residual_scalars",
]
