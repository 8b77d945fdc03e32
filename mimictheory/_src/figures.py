"""Plots of the analytic quantities, written atomically (PNG and PDF)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mimictheory._src.io import atomic_path

__all__ = ["plot_phase_diagram", "plot_phase_diagrams", "save_figure", "regenerate", "FIGURES"]


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, path) -> Path:
  """Save `fig` to `path` (format from the suffix) through a temporary file."""
  path = Path(path)
  fmt = path.suffix.lstrip(".")
  metadata = {"CreationDate": None} if fmt == "pdf" else None  # same run, same bytes
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata=metadata)
  return path


def _phase_row(fig, axes, pd):
  """χ1 with the critical line, q* and ξ_c of one `PhaseDiagram` on three axes."""
  from matplotlib.colors import LogNorm, TwoSlopeNorm
  extent = [pd.sb2[0], pd.sb2[-1], pd.sw2[0], pd.sw2[-1]]
  style = dict(origin="lower", aspect="auto", extent=extent)
  special = pd.regime >= _ZERO  # q* = 0, q* = ∞, not converged: their own colours
  chi = np.where(special, np.nan, pd.chi1)
  lo, hi = (np.nanmin(chi), np.nanmax(chi)) if np.isfinite(chi).any() else (0.5, 1.5)
  norm = TwoSlopeNorm(1.0, min(lo, 0.999), max(hi, 1.001))
  im = axes[0].imshow(chi, cmap="RdBu_r", norm=norm, **style)
  fig.colorbar(im, ax=axes[0], label=r"$\chi_1 = \sigma_w^2 E[\phi'^2]$ (gradient growth)")
  axes[0].set_title(rf"{pd.norm}: $\chi_1$ (blue ordered, red chaotic)", fontsize=10)
  handles = []
  if pd.critical is not None and pd.critical.exists.any():
    ok = pd.critical.exists
    handles += axes[0].plot(pd.critical.sb2[ok], pd.critical.sw2[ok], "k-", lw=2,
                            label=r"$\chi_1 = 1$ (the grid's $q^*$)")
  if pd.critical is not None and pd.critical.branch_reached is not None:
    other = ~pd.critical.branch_reached & np.isfinite(pd.critical.branch_sw2)
    if other.any():
      sb2 = np.broadcast_to(pd.critical.sb2[:, None], other.shape)
      handles += axes[0].plot(sb2[other], pd.critical.branch_sw2[other], "k.", ms=2,
                              label=r"$\chi_1 = 1$ at an unstable $q^*$ (not reached)")
  for ax in axes:
    handles_here = _regime_overlay(ax, pd, style)
  axes[0].legend(handles=handles + handles_here, loc="upper left", fontsize=7)
  finite_q = np.where(np.isfinite(pd.qstar) & (pd.qstar > 0), pd.qstar, np.nan)
  q_lo, q_hi = np.nanpercentile(finite_q, [2, 98]) if np.isfinite(finite_q).any() else (1, 10)
  q_lo = max(q_lo, 1e-4)
  im = axes[1].imshow(finite_q, cmap="viridis", norm=LogNorm(q_lo, max(q_hi, q_lo * 1.01)),
                      **style)
  fig.colorbar(im, ax=axes[1], label=r"$q^*$")
  axes[1].set_title(rf"{pd.norm}: variance fixed point $q^*$", fontsize=10)
  xi = np.where(np.isfinite(pd.xi_c) & (pd.xi_c > 0), pd.xi_c, np.nan)
  im = axes[2].imshow(xi, cmap="magma", norm=LogNorm(1.0, 1e3), **style)
  fig.colorbar(im, ax=axes[2], label=r"$\xi_c$ (layers; white: $\infty$, critical)")
  axes[2].set_title(rf"{pd.norm}: correlation depth scale $\xi_c$", fontsize=10)
  for ax in axes:
    ax.set_xlabel(r"$\sigma_b^2$")
    ax.set_ylabel(r"$\sigma_w^2$")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])


_ZERO = 3  # REGIMES index of "q* = 0"; then "q* = ∞" and "not converged"
_REGIME_COLOURS = {3: ("0.82", r"$q^* = 0$ (variance collapses)"),
                   4: ("0.35", r"$q^* = \infty$ (variance explodes)"),
                   5: ("limegreen", "not converged")}


def _regime_overlay(ax, pd, style):
  """Cells whose regime is q* = 0, q* = ∞ or not converged, each in its own flat colour,
  drawn over a panel; returns legend handles."""
  from matplotlib.colors import ListedColormap
  from matplotlib.patches import Patch
  handles = []
  for code, (colour, label) in _REGIME_COLOURS.items():
    mask = pd.regime == code
    if mask.any():
      ax.imshow(np.where(mask, 1.0, np.nan), cmap=ListedColormap([colour]), vmin=0, vmax=1,
                **style)
      handles.append(Patch(color=colour, label=label))
  return handles


BATCHES = np.unique(np.round(np.geomspace(4, 4096, 40)).astype(int))


def batch_chi1_curve(activation, batches=BATCHES):
  """(batches, χ1(B), Theorem 2's χ1): the exact finite-batch BN χ1 against the batch size."""
  import mimictheory as mt
  batches = np.asarray(batches)
  return (batches, np.asarray(mt.chi1(activation, norm="batch_norm", batch=batches)),
          float(mt.chi1(activation, norm="batch_norm_paper")))


def _batch_norm_row(axes, pd):
  """BN: σw², σb² drop out, so the row shows χ1 against the batch size instead of a grid."""
  batches, chi, limit = batch_chi1_curve(pd.activation)
  ax = axes[0]
  ax.semilogx(batches, chi, "o-", ms=3, color="tab:red", label="exact BN at batch B")
  ax.axhline(limit, color="k", ls="--", lw=1, label=f"Theorem 2 (B → ∞): {limit:.4f}")
  ax.axhline(1.0, color="0.6", ls=":", lw=1, label="critical χ1 = 1")
  ax.set_xlabel("batch size B")
  ax.set_ylabel(r"$\chi_1$ (gradient growth per layer)")
  ax.set_title(f"batch norm: χ1 against the batch size ({pd.activation})", fontsize=10)
  ax.legend(fontsize=8)
  for other in axes[1:]:
    other.axis("off")
  axes[1].text(0.0, 0.5, "With batch norm σw² and σb² drop out: every unit is normalised\n"
               "by its own batch statistics, so χ1 depends only on the batch size B\n"
               "(exact theory, gradient through the batch mean and variance).\n"
               f"χ1 > 1 at every B: BN networks are chaotic; at B = 4, χ1 = {chi[0]:.2f}.",
               fontsize=9, va="center", transform=axes[1].transAxes)


def plot_phase_diagrams(pds, path=None):
  """One row per `PhaseDiagram` (e.g. norm none, weight_mean, batch_norm): χ1 with the critical
  line χ1 = 1, q* and ξ_c side by side."""
  plt = _pyplot()
  pds = list(pds)
  fig, axes = plt.subplots(len(pds), 3, figsize=(15, 3.9 * len(pds)), constrained_layout=True,
                           squeeze=False)
  for row, pd in zip(axes, pds):
    if pd.norm == "batch_norm":
      _batch_norm_row(row, pd)
    else:
      _phase_row(fig, row, pd)
  fig.suptitle(f"Mean-field phase diagrams, activation {pds[0].activation}")
  if path is not None:
    save_figure(fig, path)
  return fig


def plot_phase_diagram(pd, path=None):
  """χ1 with the critical line χ1 = 1, q* and ξ_c of one `PhaseDiagram`, side by side."""
  return plot_phase_diagrams([pd], path)


def _save_npz(path, **arrays):
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as fh:
      np.savez_compressed(fh, **arrays)


def figure4(out) -> list[Path]:
  """Figure 4: T(ρ) = 2φ̂(ρ) (plain ReLU at (σw², σb²) = (2, 0)) and T̄(ρ) (weight mean, stable
  initialisation of Theorem 3), with the identity and their fixed points."""
  import mimictheory as mt
  plt = _pyplot()
  rho = np.linspace(-1.0, 1.0, 401)
  cases = {"T": dict(sw2=2.0, norm="none"), "Tbar": dict(sw2=None, norm="weight_mean")}
  curves = {k: np.asarray(mt.correlation_map(rho, "relu", **kw)) for k, kw in cases.items()}
  fps = {k: mt.fixed_points("relu", **kw) for k, kw in cases.items()}
  fig, ax = plt.subplots(figsize=(5.2, 4.6), constrained_layout=True)
  ax.plot(rho, rho, color="0.6", ls="--", lw=1, label=r"identity $\rho$")
  labels = {"T": r"straight: $T(\rho) = 2\hat\phi(\rho)$",
            "Tbar": r"weight mean: $\bar T(\rho)$"}
  for key, color, size, dy in (("T", "tab:blue", 12, -20), ("Tbar", "tab:orange", 7, -36)):
    ax.plot(rho, curves[key], color=color, lw=2, label=labels[key])
    fp = fps[key]
    for p, stable in zip(fp.points, fp.stable):
      ax.plot([p], [p], "o", ms=size, mec=color, mew=2, mfc=color if stable else "white",
              zorder=20 - size)  # the smaller marker on top
      text = rf"$\rho^*={p:.0f}$ " + ("stable" if stable else "unstable")
      ax.annotate(text, (p, p), textcoords="offset points", color=color, fontsize=9,
                  xytext=(-95, dy) if p > 0.5 else (8, -14))
  ax.set_xlabel(r"input correlation $\rho$")
  ax.set_ylabel(r"output correlation")
  ax.set_xlim(-1.02, 1.02)
  ax.set_ylim(-1.02, 1.02)
  ax.set_title("Figure 4: correlation maps (filled: stable fixed point)")
  ax.legend(loc="lower right", fontsize=9)
  out = Path(out)
  paths = [save_figure(fig, out / "fig4.png"), save_figure(fig, out / "fig4.pdf")]
  plt.close(fig)
  _save_npz(out / "fig4.npz", rho=rho, T=curves["T"], Tbar=curves["Tbar"],
            T_fixed_points=fps["T"].points, T_stable=fps["T"].stable,
            Tbar_fixed_points=fps["Tbar"].points, Tbar_stable=fps["Tbar"].stable)
  return paths + [out / "fig4.npz"]


def _write(fig, out, stem, **data) -> list[Path]:
  """The figure as PNG and PDF and its data as npz, all atomically; closes the figure."""
  plt = _pyplot()
  out = Path(out)
  paths = [save_figure(fig, out / f"{stem}.png"), save_figure(fig, out / f"{stem}.pdf")]
  plt.close(fig)
  _save_npz(out / f"{stem}.npz", **data)
  return paths + [out / f"{stem}.npz"]


# ----------------------------------------------------------------------------------------------
# Figures 2 and 3, supplementary Figures 1 and 2: finite-width networks on data.
# ----------------------------------------------------------------------------------------------
SEED = 20210202  # every random draw of the figures derives from it (recorded in the npz)
WIDTH = 300


def _preactivations(net, x, seed):
  """Pre-activations of every hidden layer of one random network, (L, N, n), in float64."""
  import jax
  with jax.enable_x64(True):
    params = net.init(jax.random.key(seed), x.shape[1])
    return np.asarray(jax.jit(net.propagate)(params, x)[0])


def unit_spread_ratio(h) -> float:
  """How far units drift apart relative to their spread over the batch, for h of shape (N, n):
  std over units of a unit's batch mean / mean over units of its batch std (Figures 2, 3)."""
  h = np.asarray(h)
  return float(np.std(h.mean(axis=0)) / np.mean(h.std(axis=0)))


def _batch(x, size, seed):
  rng = np.random.default_rng(seed)
  return x[rng.permutation(len(x))[:size]]


def unit_boxes(norm: str, x, depth: int = 51, layers=(20, 50), units: int = 30,
               width: int = WIDTH, seed: int = SEED) -> dict:
  """Values over the batch of `units` random units at `layers` of a ReLU network: the data of
  Figures 2 (norm none, (σw², σb²) = (2, 0)) and 3 (batch_norm; weight_mean at Theorem 3's σw²).
  """
  import mimictheory as mt
  net = mt.finite_network("relu", depth=depth, width=width, norm=norm,
                          sw2=None if norm == "weight_mean" else 2.0)
  pre = _preactivations(net, x, seed)
  pick = np.sort(np.random.default_rng(seed + 1).choice(width, units, replace=False))
  data = {"units": pick, "layers": np.asarray(layers), "seed": seed, "width": width,
          "depth": depth, "sw2": net.sw2, "spread_ratio": np.array([unit_spread_ratio(p)
                                                                    for p in pre])}
  for layer in layers:
    data[f"layer{layer}"] = pre[layer - 1][:, pick]
  return data


def _boxplot(ax, values, title):
  ax.boxplot(values, whis=(5, 95), showfliers=False, medianprops=dict(color="tab:red"))
  ax.axhline(0.0, color="0.7", lw=0.8, zorder=0)
  ticks = np.arange(1, values.shape[1] + 1, 5)
  ax.set_xticks(ticks, labels=[str(t) for t in ticks])
  ax.set_xlabel("unit (30 chosen at random)")
  ax.set_ylabel("pre-activation over the batch")
  ax.set_title(title, fontsize=10)


def figure2(out, progress=False, data_source=None) -> list[Path]:
  """Figure 2: a 51-layer plain ReLU network at (σw, σb) = (√2, 0), one batch; box plots of
  30 random units at layers 20 and 50: each unit concentrates, the units drift apart."""
  plt = _pyplot()
  x, name = _images(data_source)
  x = _batch(x, 2000, SEED)
  data = unit_boxes("none", x)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), constrained_layout=True)
  for ax, layer in zip(axes, data["layers"]):
    ratio = data["spread_ratio"][layer - 1]
    _boxplot(ax, data[f"layer{layer}"], f"layer {layer}: units apart / unit spread = {ratio:.1f}")
  fig.suptitle(f"Figure 2: straight ReLU network, width {WIDTH}, (σw², σb²) = (2, 0), "
               f"{len(x)} inputs ({name}); boxes 25-75%, whiskers 5-95%")
  return _write(fig, out, "fig2", **data)


def figure3(out, progress=False, data_source=None) -> list[Path]:
  """Figure 3: layer 50 of the same network with BN after every layer, and with weight mean:
  every unit has the same distribution."""
  plt = _pyplot()
  x, name = _images(data_source)
  x = _batch(x, 2000, SEED)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), constrained_layout=True)
  saved = {}
  for ax, norm, label in zip(axes, ("batch_norm", "weight_mean"),
                             ("with BN", "with weight mean (Theorem 3's σw²)")):
    data = unit_boxes(norm, x, layers=(50,))
    ratio = data["spread_ratio"][49]
    _boxplot(ax, data["layer50"], f"layer 50 {label}: units apart / unit spread = {ratio:.2f}")
    saved.update({f"{norm}_{k}": v for k, v in data.items()})
  fig.suptitle(f"Figure 3: the network of Figure 2 at layer 50, {len(x)} inputs ({name})")
  return _write(fig, out, "fig3", **saved)


def pair_correlations(norm: str, x, pairs: int = 200, depth: int = 50, width: int = WIDTH,
                      seed: int = SEED) -> dict:
  """Correlation of `pairs` random input pairs at every layer of one network of width `width`,
  and the infinite-width theory for the same pairs: supplementary Figures 1 and 2."""
  import mimictheory as mt
  pairs = min(pairs, len(x) // 2)
  batch = _batch(x, 2 * pairs, seed)
  net = mt.finite_network("relu", depth=depth, width=width, norm=norm,
                          sw2=None if norm == "weight_mean" else 2.0)
  import jax
  with jax.enable_x64(True):
    params = net.init(jax.random.key(seed), batch.shape[1])
    corr = np.asarray(jax.jit(net.signal)(params, batch).correlation)
  theory = net.theory_correlations(batch)
  first, second = np.arange(0, 2 * pairs, 2), np.arange(1, 2 * pairs, 2)
  inputs = batch[first] @ batch[second].T
  norms = np.linalg.norm(batch[first], axis=1) * np.linalg.norm(batch[second], axis=1)
  data = {"layers": np.arange(1, depth + 1), "finite": corr[:, first, second],
          "theory": theory[:, first, second], "input": np.diagonal(inputs) / norms,
          "seed": seed, "width": width, "sw2": net.sw2}
  if norm == "batch_norm":  # Theorem 2's approximation beside the exact finite-batch theory
    paper = dataclasses.replace(net, norm="batch_norm_paper").theory_correlations(batch)
    data["theory_paper"] = paper[:, first, second]
  return data


def _plot_pairs(ax, data, title):
  layers = np.concatenate([[0], data["layers"]])
  finite = np.concatenate([data["input"][None], data["finite"]])
  theory = np.concatenate([data["input"][None], data["theory"]])
  ax.plot(layers, finite, color="tab:blue", alpha=0.15, lw=0.7)
  ax.plot([], [], color="tab:blue", label=f"width {data['width']} network, 200 pairs")
  lo, mid, hi = np.percentile(theory, [5, 50, 95], axis=1)
  exact = "theory" if "theory_paper" not in data else "exact theory"
  ax.fill_between(layers, lo, hi, color="tab:orange", alpha=0.45, label=f"{exact} 5-95%",
                  zorder=3)
  ax.plot(layers, mid, color="tab:orange", lw=2, label=f"{exact} median", zorder=4)
  if "theory_paper" in data:
    paper = np.concatenate([data["input"][None], data["theory_paper"]])
    lo, mid, hi = np.percentile(paper, [5, 50, 95], axis=1)
    ax.plot(layers, mid, color="k", lw=1.5, ls="--", label="Theorem 2 (paper) median",
            zorder=5)
    ax.plot(layers, lo, color="k", lw=1, ls=":", label="Theorem 2 (paper) 5-95%", zorder=5)
    ax.plot(layers, hi, color="k", lw=1, ls=":", zorder=5)
  ax.set_ylim(-1.0, 1.05)
  ax.set_xlabel("layer")
  ax.set_ylabel("correlation coefficient")
  ax.set_title(title, fontsize=10)
  ax.legend(loc="lower left", fontsize=8)


def supplementary1(out, progress=False, data_source=None) -> list[Path]:
  """Supplementary Figure 1: the plain network drives every pair's correlation to 1."""
  plt = _pyplot()
  x, name = _images(data_source)
  data = pair_correlations("none", x)
  fig, ax = plt.subplots(figsize=(6.5, 4.4), constrained_layout=True)
  _plot_pairs(ax, data, f"Supp. Figure 1: straight ReLU network, (σw², σb²) = (2, 0), {name}")
  return _write(fig, out, "supp1", **data)


def supplementary2(out, progress=False, data_source=None) -> list[Path]:
  """Supplementary Figure 2: with BN or weight mean the correlations stay near 0."""
  plt = _pyplot()
  x, name = _images(data_source)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), constrained_layout=True)
  saved = {}
  for ax, norm, label in zip(axes, ("batch_norm", "weight_mean"),
                             ("BN (exact finite-batch theory; Theorem 2 dashed)", "weight mean")):
    data = pair_correlations(norm, x)
    _plot_pairs(ax, data, f"{label}")
    saved.update({f"{norm}_{k}": v for k, v in data.items()})
  fig.suptitle(f"Supplementary Figure 2: correlations of 200 input pairs ({name}), width "
               f"{WIDTH}, ReLU")
  return _write(fig, out, "supp2", **saved)


def _images(source):
  from mimictheory._src.data import load_images
  x, _, name = load_images(source)
  return x, name


# ----------------------------------------------------------------------------------------------
# Figure 5: residual branches at initialisation.
# ----------------------------------------------------------------------------------------------
def residual_theory(norm: str, alpha, depth: int = 50, width: int = 256, inputs: int = 8,
                    seed: int = SEED):
  """Infinite-width stream and branch variances per block of Figure 5's networks
  (`residual_kernels`, σw² = 2, σb² = 0, stream variance 1 entering block 1)."""
  import mimictheory as mt
  x = np.random.default_rng(seed).normal(size=(inputs, width))
  x -= x.mean(axis=1, keepdims=True)  # mean-free rows: weight mean leaves the input layer alone
  x *= np.sqrt(width) / np.linalg.norm(x, axis=1, keepdims=True)
  theory_norm = {"batch_norm": "batch_norm", "mimic": "weight_mean", "none": "none"}[norm]
  return mt.residual_kernels(x, depth=depth, activation="relu", sw2=2.0, sb2=0.0,
                             norm=theory_norm, alpha=alpha, input_gain=0.5,
                             fan_in=None if norm == "batch_norm" else width)


def figure5(out, progress=False, data_source=None) -> list[Path]:
  """Figure 5: in a BN residual network the stream entering block l has variance ≈ l and each
  branch ≈ 1, a 1/l suppression; MimicNorm's residual scalar suppresses the branch explicitly.
  Measured finite networks (markers) against the infinite-width theory (lines)."""
  import mimictheory as mt
  plt = _pyplot()
  depth, width, batch = 50, 256, 256
  kw = dict(depth=depth, width=width, batch=batch, draws=8, seed=SEED)
  cases = (("bn", "batch_norm", "one", "tab:blue", "BN (pre-activation block), α = 1"),
           ("mimic", "mimic", "official", "tab:orange", "MimicNorm, α = 1.2/l (official code)"),
           ("mimic_sqrt", "mimic", "sqrt", "tab:green", "MimicNorm, α = 1/√l (paper's text)"))
  measured, theory = {}, {}
  for key, norm, alpha, _, _ in cases:
    scalars = mt.residual_scalars(alpha, depth)
    measured[key] = mt.residual_variances(norm, scalars=scalars, **kw)
    theory[key] = residual_theory(norm, alpha, depth, width)
  l = np.arange(1, depth + 1)
  fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6), constrained_layout=True)
  ax = axes[0]
  for key, _, _, color, label in cases[:2]:
    rv, th = measured[key], theory[key]
    ax.plot(l, rv.stream.mean, "o", ms=3.5, color=color, label=f"{label}: stream")
    ax.plot(l, rv.branch.mean, "s", ms=3.5, mfc="white", color=color, label=f"{label}: branch")
    ax.plot(l, th.stream, "-", lw=1.2, color=color)
    ax.plot(l, th.branch, "--", lw=1.2, color=color)
  ax.plot([], [], "k-", lw=1.2, label="infinite-width theory (lines)")
  ax.set_xlabel("block l")
  ax.set_ylabel("variance")
  ax.set_yscale("log")
  ax.set_title("variances at initialisation: 8 networks (markers), theory (lines)", fontsize=10)
  ax.legend(fontsize=7.5, loc="lower left")
  ax = axes[1]
  for (key, _, _, color, label), marker, size in zip(cases, "o^s", (6, 4, 3)):
    ax.loglog(l, measured[key].ratio, marker, ms=size, mfc="none", color=color, label=label)
    ax.loglog(l, theory[key].ratio, "-", lw=1.2, color=color)
  ax.loglog(l, 1.0 / l, "k--", lw=1, label="1/l")
  ax.loglog(l, 1.0 / l**2, "k:", lw=1, label="1/l²")
  ax.set_xlabel("block l")
  ax.set_ylabel("Var(branch) / Var(stream)")
  ax.set_title("the branch's share: markers measured, lines theory", fontsize=10)
  ax.legend(fontsize=8, loc="lower left")
  fig.suptitle(f"Figure 5: residual ReLU MLP, width {width}, batch {batch}, He init")
  data = {"blocks": l, "seed": SEED}
  for key, *_ in cases:
    rv, th = measured[key], theory[key]
    data.update({f"{key}_stream": rv.stream.mean, f"{key}_stream_se": rv.stream.se,
                 f"{key}_branch": rv.branch.mean, f"{key}_branch_se": rv.branch.se,
                 f"{key}_scalars": rv.scalars, f"{key}_theory_stream": th.stream,
                 f"{key}_theory_branch": th.branch})
  return _write(fig, out, "fig5", **data)


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
                 progress: bool = False, stem: str | None = None) -> list[Path]:
  """Phase diagrams of one activation, one row per norm, as PNG, PDF and npz (keys prefixed
  with the norm, e.g. `weight_mean_chi1`)."""
  import mimictheory as mt
  if sw2 is None or sb2 is None:
    sw2, sb2 = phase_grid(activation)
  pds = [mt.phase_diagram(activation, sw2=sw2, sb2=sb2, norm=norm, fan_in=fan_in,
                          progress=progress) for norm in norms]
  fig = plot_phase_diagrams(pds)
  data = {f"{pd.norm}_{k}": v for pd in pds for k, v in pd.arrays().items()
          if pd.norm != "batch_norm"}
  if "batch_norm" in norms:
    data["batch_norm_batch"], data["batch_norm_chi1"], data["batch_norm_chi1_limit"] = (
        batch_chi1_curve(activation))
  return _write(fig, out, stem or f"phase_{activation}", **data)


def ntk_condition_points():
  """(label, activation, sw2, sb2, norm): erf (closed form, the phase structure of tanh) in the
  ordered phase, on the critical line and in the chaotic phase at σb² = 0.05; ReLU at (2, 0),
  with weight mean (Theorem 3) and with BN (exact at the batch, and Theorem 2)."""
  import mimictheory as mt
  critical = float(mt.critical_line("erf", sb2=[0.05]).sw2[0])
  return [("erf ordered (σw² = 0.5)", "erf", 0.5, 0.05, "none"),
          (f"erf critical (σw² = {critical:.3f})", "erf", critical, 0.05, "none"),
          ("erf chaotic (σw² = 3)", "erf", 3.0, 0.05, "none"),
          ("ReLU critical (2, 0)", "relu", 2.0, 0.0, "none"),
          ("ReLU weight mean (Theorem 3)", "relu", None, 0.0, "weight_mean"),
          ("ReLU batch norm (exact, batch = the 64 inputs)", "relu", 2.0, 0.0, "batch_norm"),
          ("ReLU batch norm (Theorem 2, paper)", "relu", 2.0, 0.0, "batch_norm_paper")]


def ntk_condition(out, progress=False, data_source=None, depth: int = 200,
                  n_inputs: int = 64) -> list[Path]:
  """The NTK condition number against depth (Theorem 1): it diverges in the ordered phase,
  grows on the critical line and stays bounded in the chaotic phase (weight mean, BN)."""
  import mimictheory as mt
  plt = _pyplot()
  x, name = _images(data_source)
  x = _batch(x, n_inputs, SEED)
  fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
  data = {"depths": np.arange(1, depth + 1), "seed": SEED}
  points = ntk_condition_points()
  from mimictheory._src.io import progress_bar
  for i, (label, act, sw2, sb2, norm) in enumerate(progress_bar(points, progress, "NTK spectra")):
    spec = mt.ntk_spectrum(x, depth=depth, activation=act, sw2=sw2, sb2=sb2, norm=norm)
    ax.semilogy(spec.depths, spec.condition, lw=2,
                ls={"erf": "-", "batch_norm_paper": ":"}.get(act if norm == "none" else norm,
                                                             "--"),
                label=label)
    data[f"condition{i}"] = spec.condition
    data[f"label{i}"] = label
  ax.axhline(n_inputs, color="0.6", lw=0.8, ls=":", label=f"N = {n_inputs} inputs")
  ax.set_xlabel("depth L")
  ax.set_ylabel(r"NTK condition number $\kappa = \lambda_{max}/\lambda_{min}$")
  ax.set_title(f"Theorem 1: NTK conditioning with depth ({n_inputs} inputs, {name})",
               fontsize=10)
  ax.legend(fontsize=8)
  return _write(fig, out, "ntk_condition", **data)


def last_bn_variance(norm: str, lr: float, epochs: int = 2, depth: int = 16, width: int = 256,
                     seed: int = SEED, workdir=None) -> dict:
  """Per-step running variance of the last BN (per class) and training loss of a deep ReLU MLP
  on the digits: the data of supplementary Figure 3."""
  import tempfile
  from mimictheory._src.train import TrainConfig, digits_split, train
  steps, variance, loss = [], [], []

  def record(step, model, step_loss):
    steps.append(step)
    variance.append(np.asarray(model.last_bn.var[...]))
    loss.append(float(step_loss))

  config = TrainConfig(norm=norm, depth=depth, width=width, epochs=epochs, lr=lr,
                       warmup_epochs=0.0, milestones=(), seed=seed % 2**31)
  with tempfile.TemporaryDirectory(dir=workdir) as tmp:
    result = train(config, digits_split(), tmp, on_step=record)
  return {"steps": np.asarray(steps), "variance": np.asarray(variance), "loss": np.asarray(loss),
          "status": result.status, "lr": lr, "seed": seed}


def supplementary3(out, progress=False, data_source=None) -> list[Path]:
  """Supplementary Figure 3: the last BN's running variance surges early in training at a
  large learning rate; compare a plain network with a last BN and MimicNorm at the same rate."""
  plt = _pyplot()
  lr = 0.1
  fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2), constrained_layout=True)
  saved = {}
  for norm, color, label in (("last_bn", "tab:blue", "plain + last BN"),
                             ("mimic", "tab:orange", "MimicNorm (weight mean + last BN)")):
    data = last_bn_variance(norm, lr, workdir=out)
    axes[0].semilogy(data["steps"], data["variance"], color=color, lw=0.6, alpha=0.6)
    axes[0].semilogy([], [], color=color, label=label)
    axes[1].semilogy(data["steps"], data["loss"], color=color, label=f"{label}: {data['status']}")
    saved.update({f"{norm}_{k}": v for k, v in data.items()})
  axes[0].set_ylabel("last BN running variance (one line per class)")
  axes[1].set_ylabel("training loss")
  for ax in axes:
    ax.set_xlabel("optimiser step")
    ax.legend(fontsize=8)
  fig.suptitle(f"Supplementary Figure 3: first two epochs, ReLU MLP depth 16, digits, lr {lr}")
  return _write(fig, out, "supp3", **saved)


FIGURES = {
    "fig2": figure2,
    "fig3": figure3,
    "fig4": lambda out, progress=False, data_source=None: figure4(out),
    "fig5": figure5,
    "supp1": supplementary1,
    "supp2": supplementary2,
    "supp3": supplementary3,
    "ntk_condition": ntk_condition,
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


def regenerate(out, only=None, progress: bool = False, mnist=None) -> list[Path]:
  """Regenerate the figures named in `only` (default: all of `FIGURES`) into `out`.

  `mnist`: a local MNIST copy (see `mimictheory._src.data.mnist`) for the data-driven figures;
  the bundled scikit-learn digits otherwise.
  """
  from mimictheory._src.io import progress_bar
  names = figure_names(only)
  if mnist is not None:
    from mimictheory._src.data import mnist as load_mnist
    load_mnist(mnist)  # fail on a bad path before anything is written
  paths = []
  for name in progress_bar(names, progress, "figures"):
    paths += FIGURES[name](out, progress=progress, data_source=mnist)
  return paths


# ----------------------------------------------------------------------------------------------
# Training curves.
# ----------------------------------------------------------------------------------------------
def plot_training(history, path=None, title: str = ""):
  """Train/test loss and test accuracy per epoch, and the last BN's running variance per class
  when the model has one (the paper's supplementary Figure 3)."""
  plt = _pyplot()
  epochs = [r["epoch"] for r in history]
  variance = [r.get("last_bn_variance") for r in history]
  has_bn = all(v is not None for v in variance) and history
  fig, axes = plt.subplots(1, 3 if has_bn else 2, figsize=(15 if has_bn else 10, 3.8),
                           constrained_layout=True)
  axes[0].plot(epochs, [r["train_loss"] for r in history], label="train")
  axes[0].plot(epochs, [r["test_loss"] for r in history], label="test")
  axes[0].set_yscale("log")
  axes[0].set_ylabel("cross-entropy")
  axes[0].legend()
  axes[1].plot(epochs, [r["test_accuracy"] for r in history])
  axes[1].set_ylabel("test accuracy")
  if has_bn:
    axes[2].plot(epochs, np.asarray(variance), lw=1)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("last BN running variance (one line per class)")
  for ax in axes:
    ax.set_xlabel("epoch")
  fig.suptitle(title)
  if path is not None:
    save_figure(fig, path)
    plt.close(fig)
  return fig
