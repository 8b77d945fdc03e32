"""The paper's figures (2-5, supplementary 1-3) and the project's phase-diagram and NTK
figures: their data from the public API, drawn in the house style of `plotting` and written
atomically as PNG, PDF and npz by `regenerate` (the `mimictheory figures` command)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mimictheory._src.dynamics import mean_and_se
from mimictheory._src.figure_data import (
    CONV_NORMS, DYNAMICS_NORMS, SEED, WIDTH, conv_signals, dynamics_curves, figure_inputs,
    last_bn_dynamics, last_bn_variance, learning_rate_depths, ntk_condition_points,
    pair_correlations, residual_theory, sample_rows, unit_boxes)
from mimictheory._src.io import progress_bar
from mimictheory._src.plotting import (
    batch_chi1_curve, new_figure, plain_log_ticks, plot_correlation_maps, plot_phase_diagrams,
    styled, write_figure)

__all__ = ["regenerate", "FIGURES", "figure_names"]


@styled
def figure4(out) -> list[Path]:
  """Figure 4: T(ρ) = 2φ̂(ρ) (plain ReLU at (σw², σb²) = (2, 0)) and T̄(ρ) (weight mean, stable
  initialisation of Theorem 3), with the identity and their fixed points."""
  from mimictheory._src.maps import correlation_map, fixed_points
  rho = np.linspace(-1.0, 1.0, 401)
  cases = {"T": dict(sw2=2.0, norm="none"), "Tbar": dict(sw2=None, norm="weight_mean")}
  curves = {k: np.asarray(correlation_map(rho, "relu", **kw)) for k, kw in cases.items()}
  fps = {k: fixed_points("relu", **kw) for k, kw in cases.items()}
  fig, ax = new_figure(5.0, 4.4)
  labels = {"T": r"no normalisation: $T(\rho)$, $(\sigma_w^2, \sigma_b^2) = (2, 0)$",
            "Tbar": r"weight mean: $\bar T(\rho)$, Theorem 3's $\sigma_w^2$"}
  lines = plot_correlation_maps(ax, rho, {labels[k]: curves[k] for k in curves},
                                {labels[k]: fps[k] for k in fps})
  colors = {key: line.get_color() for key, line in zip(curves, lines)}
  # labels in the empty upper-left triangle, with arrows to the points
  notes = {"T": (r"$T$: $\rho^* = 1$, stable (marginally)", (-0.95, 0.92)),
           "Tbar": (r"$\bar T$: $\rho^* = 1$, unstable", (-0.95, 0.78))}
  for key, (text, xy) in notes.items():
    ax.annotate(text, (1.0, 1.0), xytext=xy, color=colors[key], va="center",
                arrowprops=dict(arrowstyle="->", color=colors[key], lw=0.8,
                                shrinkA=2, shrinkB=7))
  for p, stable in zip(fps["Tbar"].points, fps["Tbar"].stable):
    if p < 0.99:
      ax.annotate(rf"$\bar T$: $\rho^* = {p:.2f}$, " + ("stable" if stable else "unstable"),
                  (p, p), xytext=(0.1, -0.45), color=colors["Tbar"],
                  arrowprops=dict(arrowstyle="->", color=colors["Tbar"], lw=0.8, shrinkB=5))
  ax.set_xlim(-1.02, 1.04)
  ax.set_ylim(-1.02, 1.04)
  ax.set_aspect("equal")
  ax.set_title("Figure 4: correlation maps of a ReLU layer\n(filled marker: stable fixed point)")
  ax.legend(loc="lower right", fontsize=7.5)
  return write_figure(fig, out, "fig4", rho=rho, T=curves["T"], Tbar=curves["Tbar"],
                      T_fixed_points=fps["T"].points, T_stable=fps["T"].stable,
                      Tbar_fixed_points=fps["Tbar"].points, Tbar_stable=fps["Tbar"].stable)


def _boxplot(ax, values, title):
  """Box plots of each unit's values over the batch: boxes 25-75%, whiskers 5-95%, and every
  value beyond the whiskers as a small point (the outliers are the figures' point)."""
  ax.boxplot(values, whis=(5, 95), widths=0.6, medianprops=dict(color="tab:red"),
             flierprops=dict(marker=".", ms=2.5, mfc="0.25", mec="none", alpha=0.5))
  ax.axhline(0.0, color="0.7", lw=0.8, zorder=0)
  ticks = np.arange(1, values.shape[1] + 1, 5)
  ax.set_xticks(ticks, labels=[str(t) for t in ticks])
  ax.set_xlabel(f"unit ({values.shape[1]} chosen at random)")
  ax.set_title(title)


@styled
def figure2(out, progress=False, data_source=None) -> list[Path]:
  """Figure 2: a 51-layer plain ReLU network at (σw, σb) = (√2, 0), one batch; box plots of
  30 random units at layers 20 and 50: each unit concentrates, the units drift apart."""
  x, name = figure_inputs(data_source)
  x = sample_rows(x, 2000, SEED)
  data = unit_boxes("none", x)
  fig, axes = new_figure(8.0, 3.4, cols=2, sharey=True)
  for ax, layer in zip(axes, data["layers"]):
    ratio = data["spread_ratio"][layer - 1]
    _boxplot(ax, data[f"layer{layer}"], f"layer {layer}: spread of unit means / "
             f"unit spread = {ratio:.1f}")
  axes[0].set_ylabel("pre-activation over the batch")
  fig.suptitle(f"Figure 2: ReLU network without normalisation, width {WIDTH}, "
               f"(σw², σb²) = (2, 0), {len(x)} inputs ({name})\n"
               "boxes 25–75%, whiskers 5–95%, points beyond them")
  return write_figure(fig, out, "fig2", **data)


@styled
def figure3(out, progress=False, data_source=None) -> list[Path]:
  """Figure 3: layer 50 of the same network with BN after every layer, and with weight mean:
  every unit has the same distribution, with heavy tails."""
  x, name = figure_inputs(data_source)
  x = sample_rows(x, 2000, SEED)
  fig, axes = new_figure(8.0, 3.4, cols=2, sharey=True)
  saved = {}
  for ax, norm, label in zip(axes, ("batch_norm", "weight_mean"),
                             ("batch norm", "weight mean (Theorem 3's σw²)")):
    data = unit_boxes(norm, x, layers=(50,))
    ratio = data["spread_ratio"][49]
    _boxplot(ax, data["layer50"], f"layer 50, {label}:\nspread of unit means / unit spread "
             f"= {ratio:.2f}")
    saved.update({f"{norm}_{k}": v for k, v in data.items()})
  axes[0].set_ylabel("pre-activation over the batch")
  fig.suptitle(f"Figure 3: the network of Figure 2 at layer 50, {len(x)} inputs ({name}); "
               "boxes 25–75%, whiskers 5–95%")
  return write_figure(fig, out, "fig3", **saved)


@functools.lru_cache(maxsize=None)
def _conv_data(norm: str) -> dict:
  """`conv_signals` of a 51-layer conv stack (64 channels) on 512 digits as 8 × 8 images: the
  measurement and its theory, shared by the convolutional Figures 2, 3 and the conv phase
  picture. Always the bundled digits: the theory's cost grows as (HW)² per pair of images."""
  x, _ = figure_inputs(None)
  x = sample_rows(x, CONV_INPUTS, SEED).reshape(-1, 8, 8, 1)
  return conv_signals(norm, x)


CONV_INPUTS = 512
CONV_LABELS = {"none": "plain", "batch_norm": "batch norm (exact theory at the batch)",
               "weight_mean": "weight mean (Theorem 3's σw²)"}


def _channel_boxes(ax, data, layer, label):
  """Box plots of channels (values over the batch and the positions) with the theory's band:
  95% of the channels' means fall within ±1.96 √S of 0 (S, the NNGP's mean over every pair of
  input and position)."""
  spread = data["theory_spread"][layer - 1]
  ax.axhspan(-1.96 * spread, 1.96 * spread, color="tab:orange", alpha=0.25, lw=0, zorder=0,
             label="theory: 95% of channel means")
  _boxplot(ax, data[f"layer{layer}"], f"layer {layer}, {label}:\nspread ratio measured "
           f"{data['measured_ratio'][layer - 1]:.2f}, theory "
           f"{data['theory_ratio'][layer - 1]:.2f}")
  ax.set_xlabel(f"channel ({data['layer%d' % layer].shape[1]} chosen at random)")


def _conv_saved(data, norm):
  return {f"{norm}_{k}": v for k, v in data.items()}


@styled
def figure2_conv(out, progress=False, data_source=None) -> list[Path]:
  """Figure 2 on convolutions: a 51-layer plain ReLU conv stack (3 × 3 SAME, 64 channels, He's
  σw² = 2, σb = 0) on 512 digits as 8 × 8 images; box plots of 30 random channels (values over
  the batch and the positions) at layers 20 and 50 and the convolutional NNGP's prediction of
  how far the channels' means spread."""
  data = _conv_data("none")
  fig, axes = new_figure(8.0, 3.6, cols=2, sharey=True)
  for ax, layer in zip(axes, data["layers"]):
    _channel_boxes(ax, data, int(layer), "plain")
  axes[0].set_ylabel("pre-activation over batch × positions")
  axes[0].legend(loc="lower left", fontsize=7)
  fig.suptitle(f"Figure 2 on convolutions: ReLU conv stack without normalisation, "
               f"{data['width']} channels, 3×3 SAME, (σw², σb²) = (2, 0),\n{data['inputs']} "
               "digits as 8×8 images; boxes 25–75%, whiskers 5–95%; spread ratio = std of "
               "channel means / mean channel std")
  return write_figure(fig, out, "fig2_conv", **_conv_saved(data, "none"))


@styled
def figure3_conv(out, progress=False, data_source=None) -> list[Path]:
  """Figure 3 on convolutions: layer 50 of the same conv stack with BN before every ReLU
  (each channel over the batch and the positions), and with weight mean on every
  convolution, against the theory's prediction."""
  fig, axes = new_figure(8.0, 3.6, cols=2)  # each its own scale: BN's tails are long
  saved = {}
  for ax, norm in zip(axes, ("batch_norm", "weight_mean")):
    data = _conv_data(norm)
    _channel_boxes(ax, data, 50, CONV_LABELS[norm])
    saved.update(_conv_saved(data, norm))
  axes[0].set_ylabel("pre-activation over batch × positions")
  axes[0].legend(loc="lower left", fontsize=7)
  fig.suptitle("Figure 3 on convolutions: the conv stack of Figure 2 (conv) at layer 50, "
               f"{CONV_INPUTS} digits as 8×8 images;\nboxes 25–75%, whiskers 5–95%")
  return write_figure(fig, out, "fig3_conv", **saved)


@styled
def conv_phase(out, progress=False, data_source=None) -> list[Path]:
  """The conv phase picture: layer by layer, for the plain, BN and weight-mean conv stacks of
  Figures 2-3 (conv), the spread ratio of the channels, the correlation between inputs at the
  same position, and the correlation between positions of one input (neighbours and
  positions ≥ 4 apart): the finite network against the convolutional NNGP."""
  fig, axes = new_figure(12.0, 3.8, cols=3)
  saved = {}
  colors = {"none": "tab:red", "batch_norm": "tab:blue", "weight_mean": "tab:green"}
  for norm in CONV_NORMS:
    data = _conv_data(norm)
    saved.update(_conv_saved(data, norm))
    layers = np.arange(1, len(data["theory_ratio"]) + 1)
    c, label = colors[norm], CONV_LABELS[norm].split(" (")[0]
    # from layer 2: standardised inputs have channel means 0 at layer 1 (a ratio of 0)
    axes[0].plot(layers[1:], data["theory_ratio"][1:], color=c, lw=1.8,
                 label=f"{label}, theory")
    axes[0].plot(layers[1:], data["measured_ratio"][1:], "o", color=c, ms=2.5,
                 label=f"{label}, {data['width']} channels")
    axes[1].plot(layers, data["theory_rho_inputs"], color=c, lw=1.8)
    axes[1].plot(layers, data["measured_rho_inputs"], "o", color=c, ms=2.5)
    if "theory_paper_ratio" in data:  # BN: Theorem 2's full-batch limit
      for ax, key in ((axes[0], "ratio"), (axes[1], "rho_inputs"), (axes[2], "rho_far")):
        start = 1 if key == "ratio" else 0
        ax.plot(layers[start:], data[f"theory_paper_{key}"][start:], color=c, lw=1.0, ls=":",
                label="batch norm, Theorem 2's limit" if key == "ratio" else None)
    for key, ls in (("near", "-"), ("far", "--")):
      axes[2].plot(layers, data[f"theory_rho_{key}"], color=c, lw=1.8, ls=ls)
      axes[2].plot(layers, data[f"measured_rho_{key}"], "o" if key == "near" else "s", color=c,
                   ms=2.5, mfc="none" if key == "far" else c)
  axes[0].set_yscale("log")
  axes[0].set_ylim(0.003, 3.0)  # room below the data for the legend
  axes[0].set_ylabel("std of channel means / channel std")
  axes[0].legend(fontsize=6.5, ncol=1)
  axes[1].set_ylabel("correlation of inputs (same position)")
  axes[2].set_ylabel("correlation of positions (one input)")
  axes[2].plot([], [], color="0.3", ls="-", label="neighbours (distance 1)")
  axes[2].plot([], [], color="0.3", ls="--", label="distance ≥ 4")
  axes[2].legend(fontsize=7)
  for ax in axes:
    ax.set_xlabel("layer (convolution)")
  fig.suptitle(f"Conv stacks layer by layer (3×3 SAME, ReLU, {CONV_INPUTS} digits as 8×8 "
               "images)\nlines: the convolutional NNGP (BN exact at the batch; dotted: "
               "Theorem 2's limit); points: one finite network")
  return write_figure(fig, out, "conv_phase", **saved)


def _plot_pairs(ax, data, title):
  layers = np.concatenate([[0], data["layers"]])
  finite = np.concatenate([data["input"][None], data["finite"]])
  theory = np.concatenate([data["input"][None], data["theory"]])
  ax.plot(layers, finite, color="tab:blue", alpha=0.15, lw=0.7)
  ax.plot([], [], color="tab:blue", label=f"width-{data['width']} network, "
          f"{finite.shape[1]} pairs")
  lo, mid, hi = np.percentile(theory, [5, 50, 95], axis=1)
  exact = "theory" if "theory_paper" not in data else "exact theory"
  ax.fill_between(layers, lo, hi, color="tab:orange", alpha=0.45, label=f"{exact}, 5–95%",
                  zorder=3)
  ax.plot(layers, mid, color="tab:orange", lw=2, label=f"{exact}, median", zorder=4)
  if "theory_paper" in data:
    paper = np.concatenate([data["input"][None], data["theory_paper"]])
    lo, mid, hi = np.percentile(paper, [5, 50, 95], axis=1)
    ax.plot(layers, mid, color="k", lw=1.5, ls="--", label="Theorem 2 (paper), median",
            zorder=5)
    ax.plot(layers, lo, color="k", lw=1, ls=":", label="Theorem 2 (paper), 5–95%", zorder=5)
    ax.plot(layers, hi, color="k", lw=1, ls=":", zorder=5)
  ax.set_xlabel("layer")
  ax.set_title(title)


@styled
def supplementary1(out, progress=False, data_source=None) -> list[Path]:
  """Supplementary Figure 1: the plain network drives every pair's correlation to 1."""
  x, name = figure_inputs(data_source)
  data = pair_correlations("none", x)
  fig, ax = new_figure(5.5, 3.8)
  _plot_pairs(ax, data, f"Supplementary Figure 1: ReLU network without normalisation,\n"
              f"(σw², σb²) = (2, 0), input pairs from {name}")
  low = min(data["finite"].min(), data["theory"].min(), data["input"].min())
  ax.set_ylim(np.floor(10 * low) / 10 - 0.05, 1.03)
  ax.set_ylabel("correlation of a pair")
  ax.legend(loc="lower right")
  return write_figure(fig, out, "supp1", **data)


@styled
def supplementary2(out, progress=False, data_source=None) -> list[Path]:
  """Supplementary Figure 2: with BN or weight mean the correlations stay near 0."""
  x, name = figure_inputs(data_source)
  fig, axes = new_figure(8.0, 3.6, cols=2, sharey=True)
  saved = {}
  for ax, norm, label in zip(axes, ("batch_norm", "weight_mean"),
                             ("batch norm (exact finite-batch theory)", "weight mean")):
    data = pair_correlations(norm, x)
    _plot_pairs(ax, data, label)
    ax.legend(loc="upper right", fontsize=7.5)
    saved.update({f"{norm}_{k}": v for k, v in data.items()})
  axes[0].set_ylabel("correlation of a pair")
  axes[0].set_ylim(-1.0, 1.05)
  fig.suptitle(f"Supplementary Figure 2: correlations of {data['finite'].shape[1]} input pairs "
               f"({name}), ReLU, width {WIDTH}")
  return write_figure(fig, out, "supp2", **saved)


@styled
def figure5(out, progress=False, data_source=None) -> list[Path]:
  """Figure 5: in a BN residual network the stream entering block l has variance ≈ l and each
  branch ≈ 1, a 1/l suppression; MimicNorm's residual scalar suppresses the branch explicitly.
  Measured finite networks (markers) against the infinite-width theory (lines)."""
  from mimictheory._src.experiments import residual_variances
  depth, width, batch = 50, 256, 256
  kw = dict(depth=depth, width=width, batch=batch, draws=8, seed=SEED)
  cases = (("batch_norm", "batch_norm", "one", "tab:blue",
            "batch norm (pre-activation block), α = 1"),
           ("mimic", "mimic", "official", "tab:orange", "MimicNorm, α = 1.2/l (official code)"),
           ("mimic_sqrt", "mimic", "sqrt", "tab:green", "MimicNorm, α = 1/√l (paper's text)"))
  measured, theory = {}, {}
  for key, norm, alpha, _, _ in progress_bar(cases, progress, "Figure 5 networks"):
    measured[key] = residual_variances(norm, alpha=alpha, **kw)
    theory[key] = residual_theory(norm, alpha, depth, width)
  l = np.arange(1, depth + 1)
  fig, axes = new_figure(8.0, 4.6, cols=2)
  ax = axes[0]
  for key, _, _, color, label in cases[:2]:
    rv, th = measured[key], theory[key]
    name = label.split(",")[0]
    ax.plot(l, rv.stream.mean, "o", ms=3.5, color=color, label=f"{name}: stream")
    ax.plot(l, rv.branch.mean, "s", ms=3.5, mfc="white", color=color, label=f"{name}: branch")
    ax.plot(l, th.stream, "-", lw=1.2, color=color)
    ax.plot(l, th.branch, "--", lw=1.2, color=color)
  ax.plot([], [], "k-", lw=1.2, label="infinite-width theory")
  ax.set_xlabel("block l")
  ax.set_ylabel("variance")
  ax.set_yscale("log")
  ax.set_title("variances at initialisation")
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=2, fontsize=7.5,
            frameon=False)
  ax = axes[1]
  # batch norm and α = 1/√l give the same ratio (≈ 1/l): big open circles behind small
  # filled triangles keep both visible
  for (key, _, _, color, label), marker, size, fill in zip(cases, "osv", (7, 3.5, 3.5),
                                                          ("none", None, None)):
    ax.loglog(l, measured[key].ratio, marker, ms=size, color=color, label=label,
              **({"mfc": fill} if fill else {}))
    ax.loglog(l, theory[key].ratio, "-", lw=1, color=color)
  ax.loglog(l, 1.0 / l, "k--", lw=1, label="1/l")
  ax.loglog(l, 1.0 / l**2, "k:", lw=1, label="1/l²")
  ax.set_xlabel("block l")
  ax.set_ylabel("Var(branch) / Var(stream)")
  ax.set_title("the branch's share (lines: theory)")
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=1, fontsize=7.5,
            frameon=False)
  fig.suptitle(f"Figure 5: residual ReLU MLP, width {width}, batch {batch}, He initialisation;"
               " markers: mean of 8 networks")
  data = {"blocks": l, "seed": SEED}
  for key, *_ in cases:
    rv, th = measured[key], theory[key]
    data.update({f"{key}_stream": rv.stream.mean, f"{key}_stream_se": rv.stream.se,
                 f"{key}_branch": rv.branch.mean, f"{key}_branch_se": rv.branch.se,
                 f"{key}_alpha": rv.alpha, f"{key}_theory_stream": th.stream,
                 f"{key}_theory_branch": th.branch})
  return write_figure(fig, out, "fig5", **data)


# ----------------------------------------------------------------------------------------------
# Phase diagrams and the NTK condition number.
# ----------------------------------------------------------------------------------------------
PHASE_ACTIVATIONS = ("relu", "tanh", "erf", "gelu")
PHASE_NORMS = ("none", "weight_mean", "batch_norm")


def phase_grid(activation: str):
  """The figures' (σw², σb²) grid, the same for every activation (numerical ones run on
  one-dimensional tables, as fast as the closed forms)."""
  return np.linspace(0.5, 4.0, 200), np.linspace(0.0, 0.3, 150)


def phase_figure(out, activation: str, norms=PHASE_NORMS, sw2=None, sb2=None, fan_in=None,
                 progress: bool = False, stem: str | None = None,
                 compact: bool = True) -> list[Path]:
  """Phase diagrams of one activation, one row per norm, as PNG, PDF and npz (the axes `sw2`,
  `sb2`, then keys prefixed with the norm, e.g. `weight_mean_chi1`; float32 with `compact`,
  float64 without)."""
  from mimictheory._src.phase import phase_diagram
  if sw2 is None or sb2 is None:
    sw2, sb2 = phase_grid(activation)
  pds = [phase_diagram(activation, sw2=sw2, sb2=sb2, norm=norm, fan_in=fan_in,
                          progress=progress) for norm in norms]
  fig = plot_phase_diagrams(pds)
  data = {f"{pd.norm}_{k}": v for pd in pds for k, v in pd.arrays().items()
          if pd.norm != "batch_norm" and k not in ("sw2", "sb2")}
  data["sw2"], data["sb2"] = np.asarray(sw2), np.asarray(sb2)
  if "batch_norm" in norms:
    data["batch_norm_batch"], data["batch_norm_chi1"], data["batch_norm_chi1_limit"] = (
        batch_chi1_curve(activation))
  return write_figure(fig, out, stem or f"phase_{activation}", compact=compact, **data)


def _power_of_ten(value) -> str:
  """3e+15 as mathtext 3×10¹⁵ (∞ as ∞)."""
  if not np.isfinite(value):
    return "∞"
  mantissa, exponent = f"{value:.0e}".split("e")
  return rf"${mantissa}\times 10^{{{int(exponent)}}}$"


@styled
def ntk_condition(out, progress=False, data_source=None, depth: int = 200,
                  n_inputs: int = 64) -> list[Path]:
  """The NTK condition number against depth (Theorem 1): it diverges in the ordered phase,
  grows on the critical line and stays bounded in the chaotic phase (weight mean, BN)."""
  from mimictheory._src.kernels import ntk_spectrum
  x, name = figure_inputs(data_source)
  x = sample_rows(x, n_inputs, SEED)
  fig, ax = new_figure(6.5, 4.2)
  data = {"depths": np.arange(1, depth + 1), "seed": SEED}
  points = ntk_condition_points(n_inputs)
  top = 1e4  # the ordered phase diverges (to ∞); clipping it keeps the other curves readable
  styles = [("tab:purple", "-", None), ("tab:red", "-", None), ("tab:green", "-", None),
            ("tab:blue", "--", None), ("tab:orange", "--", None), ("k", "-", "o"),
            ("0.45", ":", "^")]
  for i, (label, act, sw2, sb2, norm) in enumerate(progress_bar(points, progress, "NTK spectra")):
    spec = ntk_spectrum(x, depth=depth, activation=act, sw2=sw2, sb2=sb2, norm=norm)
    color, ls, marker = styles[i % len(styles)]
    cond = np.asarray(spec.condition)
    ax.semilogy(spec.depths, np.where(cond <= top, cond, np.nan), ls=ls, color=color, lw=1.8,
                marker=marker, markevery=20, ms=4, label=label)
    beyond = np.flatnonzero(~(cond <= top))
    if beyond.size:
      where = spec.depths[beyond[0]]
      # Past ~1e12 κ is rounding (λmin at float64's noise floor): its value, and whether it is
      # finite, differ between machines; only the depth where it gets there is robust.
      singular = np.flatnonzero(~(cond <= 1e12))
      tail = (f"\n(numerically singular, κ > {_power_of_ten(1e12)}, from L ≈ "
              f"{spec.depths[singular[0]]})" if singular.size else "")
      ax.annotate(f"{label.split(' (')[0]}: off the scale from L = {where}{tail}",
                  (where, top), xytext=(where + 12, top / 4), color=color, fontsize=8,
                  arrowprops=dict(arrowstyle="->", color=color, lw=0.8))
    data[f"condition{i}"] = cond
    data[f"label{i}"] = label
  ax.axhline(n_inputs, color="0.6", lw=0.8, ls=":")
  ax.text(depth, n_inputs * 1.1, f"κ = N = {n_inputs}", ha="right", va="bottom", color="0.4",
          fontsize=8)
  ax.set_ylim(1, top)
  ax.set_xlim(0, depth)
  ax.set_xlabel("depth L")
  ax.set_ylabel(r"NTK condition number $\lambda_{max}/\lambda_{min}$")
  ax.set_title(f"Theorem 1: NTK conditioning against depth, {n_inputs} inputs ({name});\n"
               "erf at σb² = 0.05, ReLU at σb² = 0")
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, fontsize=7.5,
            frameon=False)
  return write_figure(fig, out, "ntk_condition", **data)


@styled
def supplementary3(out, progress=False, data_source=None) -> list[Path]:
  """Supplementary Figure 3: the last BN's running variance surges early in training at a
  large learning rate; compare a plain network with a last BN and MimicNorm at the same rate."""
  lr = 0.1
  fig, axes = new_figure(8.0, 3.5, cols=2)
  saved = {}
  for norm, color, label in (("last_bn", "tab:blue", "plain + last batch norm"),
                             ("mimic", "tab:orange", "MimicNorm (weight mean + last BN)")):
    data = last_bn_variance(norm, lr, workdir=out)
    axes[0].semilogy(data["steps"], data["variance"], color=color, lw=0.6, alpha=0.6)
    accuracy = data["test_accuracy"]
    verdict = "at chance" if accuracy < 0.2 else "trains"
    axes[1].semilogy(data["steps"], data["loss"], color=color,
                     label=f"{label}: test accuracy {accuracy:.2f} ({verdict})")
    saved.update({f"{norm}_{k}": v for k, v in data.items()})
  axes[0].set_ylabel("last BN running variance\n(one line per class)")
  axes[1].set_ylabel("training loss")
  for ax in axes:
    ax.set_xlabel("optimiser step")
  plain_log_ticks(axes[1].yaxis)
  fig.legend(handles=axes[1].get_lines(), loc="outside lower center", ncols=2, frameon=False)
  fig.suptitle(f"Supplementary Figure 3: the first two epochs, ReLU MLP of depth 16 on the "
               f"digits, lr {lr} (chance: 0.10)")
  return write_figure(fig, out, "supp3", **saved)


_DYNAMICS_COLORS = ("tab:purple", "tab:red", "tab:green", "tab:blue", "tab:orange", "k")
_NORM_STYLE = {"none": ("tab:blue", "plain (2, 0)"), "weight_mean": ("tab:orange", "weight mean"),
               "batch_norm": ("k", "BN (exact at the batch)")}


def _steps_to(steps, loss, fraction: float = 0.01) -> float:
  """The first step at which `loss` is at most `fraction` of its initial value, interpolated in
  log between the recorded steps; NaN if it never gets there."""
  target = fraction * loss[0]
  below = np.flatnonzero(loss <= target)
  if not below.size:
    return np.nan
  j = below[0]
  if j == 0:
    return 0.0
  a, b = np.log(loss[j - 1]), np.log(loss[j])
  w = (a - np.log(target)) / (a - b)
  return float(np.exp((1 - w) * np.log(max(steps[j - 1], 1)) + w * np.log(steps[j])))


@styled
def dynamics(out, progress=False, data_source=None) -> list[Path]:
  """Theorem 1 on training (issue 24): finite networks trained by gradient descent against the
  kernels' prediction in the ordered, critical and chaotic phases and with weight mean and BN;
  the steps to 1% of the initial loss against the NTK condition number; the largest learning
  rate against depth; the last BN's effective rate η/ν over training."""
  curves = dynamics_curves(progress=progress)
  rates = learning_rate_depths(progress=progress)
  last = last_bn_dynamics()
  fig, axes = new_figure(11.0, 8.8, rows=2, cols=2)
  (a, b), (c, d) = axes
  n = sum(1 for k in curves if k.startswith("label"))
  last_step = int(curves["steps0"][-1])
  for i in range(n):
    color = _DYNAMICS_COLORS[i % len(_DYNAMICS_COLORS)]
    steps = curves[f"steps{i}"]
    mean, se = mean_and_se(curves[f"train_loss{i}"])
    predicted = curves[f"predicted_train{i}"]
    label = f"{curves[f'label{i}']}, κ = {curves[f'kappa{i}']:.3g}"
    a.loglog(steps[1:], predicted[1:], color=color, lw=1.5, label=label)
    a.errorbar(steps[1:], mean[1:], yerr=se[1:], color=color, ls="none", marker="o", ms=3,
               lw=0.8)
    kappa = curves[f"kappa{i}"]
    for loss, marker, fill in ((predicted, "_", color), (mean, "o", color)):
      reached = _steps_to(steps, loss)
      y = reached if np.isfinite(reached) else last_step * 1.4
      b.plot(kappa, y, color=color, marker=marker if np.isfinite(reached) else "^", ms=14 if
             marker == "_" else 7, mew=2, mfc=fill if marker == "o" else "none", ls="none")
  a.set_ylim(1e-12, None)
  a.set_xlabel("gradient-descent step")
  a.set_ylabel("training loss")
  a.set_title(f"(a) depth {curves['depth']}, width {curves['width']}, η = "
              f"{curves['lr_fraction']:g} × predicted limit\nlines: infinite-width prediction; "
              "dots: networks (mean ± s.e. of 3)", fontsize=9)
  a.legend(fontsize=6.5, loc="lower left", frameon=False)
  b.set_xscale("log")
  b.set_yscale("log")
  b.axhline(last_step, color="0.6", lw=0.8, ls=":")
  b.text(1.5, last_step * 1.6, f"not reached in {last_step} steps", fontsize=7, color="0.4")
  b.set_ylim(0.7, last_step * 3)
  b.set_xlabel(r"NTK condition number $\kappa$ on the training inputs")
  b.set_ylabel("steps to 1% of the initial training loss")
  b.set_title("(b) Theorem 1: the better conditioned, the faster\n"
              "bar: prediction; dot: networks", fontsize=9)
  for norm, _ in DYNAMICS_NORMS:
    color, label = _NORM_STYLE[norm]
    c.semilogy(rates["depths"], rates[f"{norm}_predicted"], color=color, lw=1.5,
               label=f"{label}: predicted 2 n_y / λmax(Θ)")
    m = rates[f"{norm}_measured"]
    depths = rates["measured_depths"]
    trains = m[:, 0] * np.sqrt(m[:, 1] * m[:, 2])
    c.errorbar(depths, trains, yerr=[trains - m[:, 0] * m[:, 1], m[:, 0] * m[:, 2] - trains],
               color=color, ls="none", marker="v", ms=6, capsize=3)
    mono = m[:, 0] * np.sqrt(m[:, 3] * m[:, 4])
    c.plot(depths * 1.06, mono, color=color, ls="none", marker="o", mfc="none", ms=6)
    c.plot(depths * 0.94, rates[f"{norm}_readout"], color=color, ls="none", marker="x", ms=6)
  c.plot([], [], "v", color="0.4", label="networks: loss ends below its start")
  c.plot([], [], "o", color="0.4", mfc="none", label="networks: loss never rises")
  c.plot([], [], "x", color="0.4", label="readout alone: 2 n_y / λmax(K)")
  c.set_xscale("log")
  c.set_xlabel("depth L")
  c.set_ylabel("largest learning rate η")
  c.set_title(f"(c) learning-rate limit, ReLU, width {rates['width']}, {rates['steps']} steps",
              fontsize=9)
  c.legend(fontsize=6.5, frameon=False, loc="lower left")
  steps = last["steps"] + 1
  for r, eta in enumerate(last["learning_rates"]):
    color = ("tab:green", "tab:orange", "tab:red", "tab:purple")[r % 4]
    eff, se = mean_and_se(eta / last["variance"][r])
    body = last["body_loss"][r][:, -1]
    verdict = "diverges" if not np.all(np.isfinite(body) & (body < 1e3)) else "trains"
    d.loglog(steps, eff / last["limit"], color=color, lw=1.5,
             label=f"η = {last['multiples'][r]:g} × limit (without the last BN: {verdict})")
    d.fill_between(steps, (eff - se) / last["limit"], (eff + se) / last["limit"], color=color,
                   alpha=0.2, lw=0)
  d.axhline(1.0, color="0.4", lw=0.8, ls="--")
  d.text(steps[-1], 1.08, "predicted limit of η/ν at initialisation", fontsize=7, color="0.3",
         va="bottom", ha="right")
  d.set_xlabel("gradient-descent step + 1")
  d.set_ylabel(r"effective rate $(\eta/\nu)$ / limit")
  d.set_title(f"(d) MimicNorm's last BN, weight mean depth {last['depth']}: ν (the logits' "
              "batch variance)\njumps in the first step and brings η/ν below the limit",
              fontsize=9)
  d.legend(fontsize=6.5, frameon=False)
  fig.suptitle("Training dynamics: erf and ReLU MLPs on 128 digits (MSE, full-batch gradient "
               "descent)", fontsize=10)
  data = {**{f"curves_{k}": v for k, v in curves.items()},
          **{f"rates_{k}": v for k, v in rates.items()},
          **{f"last_bn_{k}": v for k, v in last.items()}}
  return write_figure(fig, out, "dynamics", **data)

FIGURES = {
    "fig2": figure2,
    "fig3": figure3,
    "fig2_conv": figure2_conv,
    "fig3_conv": figure3_conv,
    "conv_phase": conv_phase,
    "fig4": lambda out, progress=False, data_source=None: figure4(out),
    "fig5": figure5,
    "supp1": supplementary1,
    "supp2": supplementary2,
    "supp3": supplementary3,
    "ntk_condition": ntk_condition,
    "dynamics": dynamics,
    **{f"phase_{a}": (lambda a: lambda out, progress=False, data_source=None:
                      phase_figure(out, a, progress=progress))(a) for a in PHASE_ACTIVATIONS},
}


def figure_names(only=None) -> list[str]:
  """The figures to make: all of `FIGURES`, or the validated names in `only`."""
  names = list(FIGURES) if not only else list(only)
  unknown = [n for n in names if n not in FIGURES]
  if unknown:
    raise ValueError(f"--only must name figures among {', '.join(FIGURES)}; unknown: "
                     f"{', '.join(unknown)}")
  return names


def regenerate(out, only=None, progress: bool = False, mnist=None,
               on_figure=None) -> list[Path]:
  """Regenerate the figures named in `only` (default: all of `FIGURES`) into `out`.

  `mnist`: a local MNIST copy (see `mimictheory._src.data.mnist`) for the data-driven figures;
  the bundled scikit-learn digits otherwise. `on_figure(paths)` is called as each figure is
  written.
  """
  names = figure_names(only)
  if mnist is not None:
    from mimictheory._src.data import mnist as load_mnist
    load_mnist(mnist)  # fail on a bad path before anything is written
  paths = []
  for name in progress_bar(names, progress, "figures"):
    written = FIGURES[name](out, progress=progress, data_source=mnist)
    if on_figure is not None:
      on_figure(written)
    paths += written
  return paths


# ----------------------------------------------------------------------------------------------
# Training curves.
