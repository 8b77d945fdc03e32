"""Plots of the analytic quantities, written atomically (PNG and PDF)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mimictheory._src.io import atomic_path

__all__ = ["plot_phase_diagram", "save_figure"]


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


def plot_phase_diagram(pd, path=None):
  """χ1 with the critical line χ1 = 1, q* and ξ_c of a `PhaseDiagram`, side by side."""
  plt = _pyplot()
  from matplotlib.colors import LogNorm, TwoSlopeNorm
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
  extent = [pd.sb2[0], pd.sb2[-1], pd.sw2[0], pd.sw2[-1]]
  style = dict(origin="lower", aspect="auto", extent=extent)
  chi = pd.chi1
  lo, hi = np.nanmin(chi), np.nanmax(chi)
  norm = TwoSlopeNorm(1.0, min(lo, 0.999), max(hi, 1.001))
  im = axes[0].imshow(chi, cmap="RdBu_r", norm=norm, **style)
  fig.colorbar(im, ax=axes[0], label=r"$\chi_1$")
  axes[0].set_title(r"$\chi_1$: ordered (blue) / chaotic (red)")
  if pd.critical is not None and pd.critical.exists.any():
    ok = pd.critical.exists
    axes[0].plot(pd.critical.sb2[ok], pd.critical.sw2[ok], "k-", lw=2, label=r"$\chi_1 = 1$")
    axes[0].legend(loc="upper left")
  finite_q = np.where(np.isfinite(pd.qstar) & (pd.qstar > 0), pd.qstar, np.nan)
  q_lo, q_hi = np.nanpercentile(finite_q, [2, 98]) if np.isfinite(finite_q).any() else (1, 10)
  im = axes[1].imshow(finite_q, cmap="viridis", norm=LogNorm(max(q_lo, 1e-4), max(q_hi, 1e-3)),
                      **style)
  fig.colorbar(im, ax=axes[1], label=r"$q^*$ (white: diverges or 0)")
  axes[1].set_title(r"variance fixed point $q^*$")
  xi = np.where(np.isfinite(pd.xi_c) & (pd.xi_c > 0), pd.xi_c, np.nan)
  im = axes[2].imshow(xi, cmap="magma", norm=LogNorm(1.0, 1e3), **style)
  fig.colorbar(im, ax=axes[2], label=r"$\xi_c$ (layers; clipped at $10^3$, white: $\infty$)")
  axes[2].set_title(r"correlation depth scale $\xi_c$")
  for ax in axes:
    ax.set_xlabel(r"$\sigma_b^2$")
    ax.set_ylabel(r"$\sigma_w^2$")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
  fig.suptitle(f"Mean-field phase diagram: activation={pd.activation}, norm={pd.norm}")
  if path is not None:
    save_figure(fig, path)
  return fig


def _save_npz(path, **arrays):
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as fh:
      np.savez(fh, **arrays)


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


def phase_figure(out, activation: str, norm: str = "none", progress: bool = False) -> list[Path]:
  """Phase diagram of one activation and norm on the default grid, as PNG, PDF and npz."""
  import mimictheory as mt
  plt = _pyplot()
  pd = mt.phase_diagram(activation, norm=norm, progress=progress)
  stem = Path(out) / f"phase_{activation}_{norm}"
  fig = plot_phase_diagram(pd)
  paths = [save_figure(fig, stem.with_suffix(".png")), save_figure(fig, stem.with_suffix(".pdf"))]
  plt.close(fig)
  _save_npz(stem.with_suffix(".npz"), **pd.arrays())
  return paths + [stem.with_suffix(".npz")]


FIGURES = {
    "fig4": figure4,
    "phase_relu": lambda out, progress=False: phase_figure(out, "relu", progress=progress),
    "phase_tanh": lambda out, progress=False: phase_figure(out, "tanh", progress=progress),
}


def figure_names(only=None) -> list[str]:
  """The figures to make: all of `FIGURES`, or the validated names in `only`."""
  names = list(FIGURES) if not only else list(only)
  unknown = [n for n in names if n not in FIGURES]
  if unknown:
    raise ValueError(f"--only must name figures among {', '.join(FIGURES)}; unknown: "
                     f"{', '.join(unknown)}")
  return names


def regenerate(out, only=None, progress: bool = False) -> list[Path]:
  """Regenerate the figures named in `only` (default: all of `FIGURES`) into `out`."""
  names = figure_names(only)
  paths = []
  for name in names:
    fn = FIGURES[name]
    paths += fn(out) if name == "fig4" else fn(out, progress=progress)
  return paths
