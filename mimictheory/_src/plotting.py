"""Plotting: the house style of every figure, and one function per panel (`plot_*(ax, ...)`)
that the figures, the command line and the notebooks all call.

Figures are `matplotlib.figure.Figure` objects made directly, never through `pyplot`, so the
library neither selects nor changes the user's matplotlib backend and keeps no global figure
state: in Jupyter, display a returned figure by leaving it as a cell's last expression (or with
`IPython.display.display(fig)`); elsewhere save it with `save_figure`.

The style is set for where the figures are read: 9–10 pt text on figures at most 8 inches wide
(10.5 for the three-panel phase diagrams), so that a figure shown at the full width of a README
or a notebook (about 900 px) keeps text of about 11–14 px.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mimictheory._src.io import atomic_path, atomic_paths

__all__ = ["STYLE", "NORM_TITLES", "new_figure", "save_figure", "write_figure",
           "plot_phase_diagram", "plot_phase_diagrams", "plot_training", "batch_chi1_curve",
           "plain_log_ticks", "plot_correlation_maps", "plot_batch_chi1", "plot_chi1_map",
           "plot_ntk_spectrum", "plot_layer_correlations", "plot_width_gap", "plot_depth_scale",
           "plot_accuracy"]

STYLE = {
    "font.size": 9.5, "axes.titlesize": 10, "axes.labelsize": 9.5, "legend.fontsize": 8.5,
    "xtick.labelsize": 8.5, "ytick.labelsize": 8.5, "figure.titlesize": 10.5,
    "legend.framealpha": 0.9, "axes.spines.top": False, "axes.spines.right": False,
    "savefig.dpi": 150, "figure.dpi": 100, "lines.linewidth": 1.6,
}

# Plain-language names of the norms, for titles and legends.
NORM_TITLES = {"none": "no normalisation", "weight_mean": "weight mean",
               "batch_norm": "batch norm", "batch_norm_paper": "batch norm (Theorem 2)",
               "mimic": "MimicNorm", "last_bn": "plain + last batch norm"}


def styled(fn):
  """Run a plotting function under the house style (`STYLE`), leaving rcParams as they were."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    import matplotlib
    with matplotlib.rc_context(STYLE):
      return fn(*args, **kwargs)
  return wrapper


def _figure_class():
  from matplotlib.figure import Figure

  class LibraryFigure(Figure):
    """A matplotlib `Figure` that Jupyter shows as a PNG by itself (`_repr_png_`), without
    pyplot or an inline backend having been set up: rendered at 200 dpi and shown at 100 dpi
    (the width and height metadata), sharp on high-resolution screens and as large as
    matplotlib's inline figures."""

    def _repr_png_(self):
      import io
      buffer = io.BytesIO()
      self.savefig(buffer, format="png", dpi=200, bbox_inches="tight")
      png = buffer.getvalue()
      width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
      return png, {"width": width // 2, "height": height // 2}

  return LibraryFigure


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **subplots):
  """A constrained-layout `Figure` (no pyplot, no backend change) and its axes. In Jupyter the
  figure shows itself as a PNG when it is a cell's value.

  >>> fig, axes = new_figure(6, 3, cols=2, sharey=True)
  >>> from matplotlib.figure import Figure
  >>> len(axes), isinstance(fig, Figure)
  (2, True)
  """
  fig = _FIGURE(figsize=(width, height), layout="constrained")
  return fig, fig.subplots(rows, cols, **subplots)


_FIGURE = _figure_class()


def save_figure(fig, path) -> Path:
  """Save `fig` to `path` (format from the suffix) through a temporary file."""
  path = Path(path)
  with atomic_path(path) as tmp:
    _savefig(fig, tmp, path.suffix.lstrip("."))
  return path


def _savefig(fig, path, fmt):
  metadata = {"CreationDate": None} if fmt == "pdf" else None  # same run, same bytes
  fig.savefig(path, format=fmt, bbox_inches="tight", metadata=metadata)


def write_figure(fig, out, stem, compact: bool = True, **data) -> list[Path]:
  """`fig` as `stem`.png and .pdf, and `data` as `stem`.npz, each written atomically.
  With `compact`, float arrays are stored as float32 (what a plot needs) unless they hold
  values beyond float32's range; without, as computed (float64)."""
  out = Path(out)
  paths = [out / f"{stem}.{suffix}" for suffix in ("png", "pdf", "npz")]
  arrays = {k: _compact(v) if compact else v for k, v in data.items()}
  with atomic_paths(*paths) as (png, pdf, npz):  # the three land together
    _savefig(fig, png, "png")
    _savefig(fig, pdf, "pdf")
    with open(npz, "wb") as fh:
      np.savez_compressed(fh, **arrays)
  return paths


def _compact(value):
  arr = np.asarray(value)
  if arr.dtype == np.float64:
    finite = arr[np.isfinite(arr)]
    if finite.size == 0 or np.abs(finite).max() < 1e38:
      return arr.astype(np.float32)
  return arr


# ------------------------------------------------------------------------------------------
# Phase diagrams.
# ------------------------------------------------------------------------------------------
_ZERO = 3  # REGIMES index of "q* = 0"; then "q* = ∞" and "not converged"
_REGIME_COLOURS = {3: ("0.80", r"$q^* = 0$ (signal dies)"),
                   4: ("0.30", r"$q^* = \infty$ (signal explodes)"),
                   5: ("limegreen", "not converged")}
_XI_INFINITE = "deepskyblue"  # ξ_c = ∞: exactly critical cells, in neither colour map


def _cell_edges(values) -> tuple[np.ndarray, np.ndarray]:
  """(order, edges): the grid values' sorting order and the edges of cells centred on the
  sorted values, midway between neighbours, the outer ones half a neighbour spacing out (a
  single value gets a cell of ±5%, at least ±0.05): a cell is drawn where its value is, on
  unsorted and unevenly spaced grids alike."""
  order = np.argsort(values, kind="stable")
  v = np.asarray(values, dtype=float)[order]
  if v.size == 1:
    half = max(0.05 * abs(v[0]), 0.05)
    return order, np.array([v[0] - half, v[0] + half])
  mid = 0.5 * (v[1:] + v[:-1])
  return order, np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])


class _Cells:
  """Draws (σw², σb²) grid values as cells at their coordinates (`pcolormesh`), sorted."""

  def __init__(self, pd):
    self.rows, self.y = _cell_edges(pd.sw2)
    self.cols, self.x = _cell_edges(pd.sb2)
    self.extent = [self.x[0], self.x[-1], self.y[0], self.y[-1]]

  def __call__(self, ax, values, **kw):
    grid = np.asarray(values)[self.rows][:, self.cols]
    return ax.pcolormesh(self.x, self.y, np.ma.masked_invalid(grid), shading="flat",
                         rasterized=True, **kw)


def _regime_overlay(ax, pd, style):
  """Cells whose regime is q* = 0, q* = ∞ or not converged, each in its own flat colour,
  drawn over a panel; returns legend handles."""
  from matplotlib.colors import ListedColormap
  from matplotlib.patches import Patch
  handles = []
  for code, (colour, label) in _REGIME_COLOURS.items():
    mask = pd.regime == code
    if mask.any():
      style(ax, np.where(mask, 1.0, np.nan), cmap=ListedColormap([colour]), vmin=0, vmax=1)
      handles.append(Patch(color=colour, label=label))
  return handles


def _colorbar(fig, image, ax, title, extend="neither"):
  """A colour bar titled on top (not beside, where it would read as the next panel's label),
  with plain tick labels (1, 2, 0.5, not 10⁰, 2×10⁰)."""
  from matplotlib.colors import LogNorm
  from matplotlib.ticker import FuncFormatter
  bar = fig.colorbar(image, ax=ax, shrink=0.9, extend=extend)
  bar.ax.set_title(title, fontsize=9)
  if isinstance(image.norm, LogNorm):
    decades = np.log10(image.norm.vmax / image.norm.vmin)
    plain_log_ticks(bar.ax.yaxis, subs=(1.0,) if decades > 2 else (1.0, 2.0, 5.0))
  else:
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
  return bar


def plain_log_ticks(axis, subs=(1.0, 2.0, 5.0)):
  """Log-scale ticks at `subs` × 10^k written as plain numbers (0.5, 1, 2, not 5×10⁻¹),
  minor ticks unlabelled; `axis` is e.g. `ax.yaxis`."""
  from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
  axis.set_major_locator(LogLocator(subs=subs))
  axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
  axis.set_minor_formatter(NullFormatter())


def _phase_row(fig, axes, pd):
  """χ1 with the critical line, q* and ξ_c of one `PhaseDiagram` on three axes."""
  import matplotlib
  from matplotlib.colors import LogNorm
  from matplotlib.patches import Patch
  style = _Cells(pd)
  extent = style.extent
  special = pd.regime >= _ZERO
  name = NORM_TITLES.get(pd.norm, pd.norm)
  im = plot_chi1_map(axes[0], pd, missing=None)
  _colorbar(fig, im, axes[0], r"$\chi_1$")
  axes[0].set_title(f"{name}: " + r"$\chi_1$ (blue ordered, red chaotic)")
  handles = list(axes[0].get_lines())  # the critical line
  if pd.critical is not None and pd.critical.branch_reached is not None:
    other = ~pd.critical.branch_reached & np.isfinite(pd.critical.branch_sw2)
    if other.any():
      sb2 = np.broadcast_to(pd.critical.sb2[:, None], other.shape)
      handles += axes[0].plot(sb2[other], pd.critical.branch_sw2[other], "k.", ms=2,
                              label=r"$\chi_1 = 1$ at an unstable $q^*$ (not reached)")
  for ax in axes:
    regime_handles = _regime_overlay(ax, pd, style)
  finite_q = np.where(np.isfinite(pd.qstar) & (pd.qstar > 0), pd.qstar, np.nan)
  q_lo, q_hi = np.nanpercentile(finite_q, [2, 98]) if np.isfinite(finite_q).any() else (1, 10)
  q_lo = max(q_lo, 1e-4)
  im = style(axes[1], finite_q, cmap="viridis", norm=LogNorm(q_lo, max(q_hi, q_lo * 1.01)))
  _colorbar(fig, im, axes[1], r"$q^*$", extend="both")
  axes[1].set_title(f"{name}: " + r"variance fixed point $q^*$")
  # magma without its near-white top, so that white never reads as a value
  magma = matplotlib.colormaps["magma"].resampled(256)
  xi_map = matplotlib.colors.ListedColormap(magma(np.linspace(0.0, 0.85, 256)))
  xi = np.where(np.isfinite(pd.xi_c) & (pd.xi_c > 0), pd.xi_c, np.nan)
  im = style(axes[2], xi, cmap=xi_map, norm=LogNorm(1.0, 1e3))
  _colorbar(fig, im, axes[2], r"$\xi_c$", extend="max")
  infinite = np.isinf(pd.xi_c) & ~special
  if infinite.any():
    from matplotlib.colors import ListedColormap
    style(axes[2], np.where(infinite, 1.0, np.nan), cmap=ListedColormap([_XI_INFINITE]),
          vmin=0, vmax=1)
    regime_handles = regime_handles + [Patch(color=_XI_INFINITE,
                                             label=r"$\xi_c = \infty$ (exactly critical)")]
  axes[2].set_title(f"{name}: " + r"correlation depth $\xi_c$")
  for ax in axes:
    ax.set_xlabel(r"$\sigma_b^2$")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
  axes[0].set_ylabel(r"$\sigma_w^2$")
  if handles:
    axes[0].legend(handles=handles, loc="upper left", fontsize=7.5)
  return regime_handles


BATCHES = np.unique(np.round(np.geomspace(4, 4096, 40)).astype(int))


def batch_chi1_curve(activation, batches=BATCHES):
  """(batches, χ1(B), Theorem 2's χ1): the exact finite-batch BN χ1 against the batch size.

  >>> b, chi, limit = batch_chi1_curve("relu", batches=[4, 4096])
  >>> bool(chi[0] > chi[1] > limit > 1)
  True
  """
  from mimictheory._src.maps import chi1
  batches = np.asarray(batches)
  return (batches, np.asarray(chi1(activation, norm="batch_norm", batch=batches)),
          float(chi1(activation, norm="batch_norm_paper")))


def _batch_norm_row(fig, axes, pd):
  """BN: σw², σb² drop out, so the row shows χ1 against the batch size instead of a grid."""
  for ax in axes:
    ax.remove()
  spec = axes[0].get_subplotspec()
  ax = fig.add_subplot(spec.get_gridspec()[spec.rowspan.start, :2])
  chi = plot_batch_chi1(ax, pd.activation)
  ax.set_title(r"batch norm: $\chi_1$ against the batch size (σw², σb² drop out)")
  ax.legend(loc="upper right")
  note = fig.add_subplot(axes[2].get_subplotspec())
  note.axis("off")
  note.text(0.0, 0.5, "With batch norm every unit is\nnormalised by its batch statistics,\n"
            "so σw² and σb² drop out and χ1\ndepends only on the batch size.\n"
            f"χ1 > 1 at every B: batch-norm\nnetworks are chaotic\n(χ1 = {chi[0]:.2f} at B = 4).",
            va="center", transform=note.transAxes)


@styled
def plot_phase_diagrams(pds, path=None):
  """One row per `PhaseDiagram` (e.g. norm none, weight_mean, batch_norm): χ1 with the critical
  line χ1 = 1, q* and ξ_c side by side. Returns the `Figure`; saves it when `path` is given.

  >>> import mimictheory as mt, numpy as np
  >>> pd = mt.phase_diagram("erf", sw2=np.linspace(0.5, 3, 8), sb2=np.linspace(0, 0.2, 6))
  >>> fig = mt.plot_phase_diagrams([pd])
  >>> len(fig.axes)   # three panels and their colour bars
  6
  """
  pds = list(pds)
  if not pds:
    raise ValueError("pds must hold at least one PhaseDiagram")
  fig, axes = new_figure(10.5, 3.0 * len(pds) + 0.5, len(pds), 3, squeeze=False)
  regime_handles = {}
  for row, pd in zip(axes, pds):
    if pd.norm == "batch_norm":
      _batch_norm_row(fig, row, pd)
    else:
      for h in _phase_row(fig, row, pd):
        regime_handles.setdefault(h.get_label(), h)
  fig.suptitle(f"Mean-field phase diagrams, activation {pds[0].activation}, infinite width")
  if regime_handles:
    fig.legend(handles=list(regime_handles.values()), loc="outside lower center",
               ncols=len(regime_handles), frameon=False)
  if path is not None:
    save_figure(fig, path)
  return fig


def plot_phase_diagram(pd, path=None):
  """χ1 with the critical line χ1 = 1, q* and ξ_c of one `PhaseDiagram`, side by side
  (`plot_phase_diagrams` with one row).

  >>> import mimictheory as mt
  >>> pd = mt.phase_diagram("relu", sw2=[1.0, 2.5], sb2=[0.0, 0.1], norm="weight_mean")
  >>> mt.plot_phase_diagram(pd).get_suptitle()
  'Mean-field phase diagrams, activation relu, infinite width'
  """
  return plot_phase_diagrams([pd], path)


# ------------------------------------------------------------------------------------------
# Training curves.
# ------------------------------------------------------------------------------------------
@styled
def plot_training(history, path=None, title: str = ""):
  """Train/test loss and test accuracy per epoch, and the last BN's running variance per class
  when the model has one (the paper's supplementary Figure 3). Returns the `Figure`.

  >>> fig = plot_training([{"epoch": 1, "train_loss": 2.0, "test_loss": 2.1,
  ...                       "test_accuracy": 0.3}])
  >>> len(fig.axes)
  2
  """
  history = list(history)
  epochs = [r["epoch"] for r in history]
  variance = [r.get("last_bn_variance") for r in history]
  has_bn = bool(history) and all(v is not None for v in variance)
  fig, axes = new_figure(10.5 if has_bn else 7.5, 3.2, cols=3 if has_bn else 2)
  axes[0].plot(epochs, [r["train_loss"] for r in history], "o-", ms=3, label="train")
  axes[0].plot(epochs, [r["test_loss"] for r in history], "s--", ms=3, label="test")
  axes[0].set_yscale("log")
  axes[0].set_ylabel("cross-entropy")
  axes[0].legend()
  plot_accuracy(axes[1], {"": history})
  if has_bn:
    axes[2].plot(epochs, np.asarray(variance), lw=1)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("last BN running variance\n(one line per class)")
  for ax in axes:
    ax.set_xlabel("epoch")
  if title:
    fig.suptitle(title)
  if path is not None:
    save_figure(fig, path)
  return fig


# ------------------------------------------------------------------------------------------
# Panels: one function per panel, drawn on a given axes, that the figures and the notebooks
# both call (so a notebook never redraws a library panel by hand).
# ------------------------------------------------------------------------------------------
_MARKERS = (("o", 13), ("s", 7), ("D", 5), ("^", 4))  # the first fixed points drawn largest


def plot_correlation_maps(ax, rho, curves: dict, fixed_points: dict | None = None,
                          emphasis: str | None = None, linestyles: dict | None = None):
  """Correlation maps ρ -> T(ρ) against the identity: `curves` {label: values on `rho`},
  `fixed_points` {label: `FixedPoints`} marked on the diagonal (filled: stable; the markers
  shrink from curve to curve so that coinciding points stay visible), `emphasis` the label
  drawn thick, `linestyles` {label: style} (e.g. "--" for a curve that lies on another).
  Figure 4's panel.

  >>> import numpy as np, mimictheory as mt
  >>> fig, ax = new_figure(4, 4)
  >>> rho = np.linspace(-1, 1, 5)
  >>> lines = mt.plot_correlation_maps(ax, rho, {"T": mt.correlation_map(rho, "relu")})
  >>> [line.get_label() for line in ax.get_lines()][1:]   # after the identity
  ['T']
  """
  import matplotlib
  palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  ax.plot(rho, rho, color="0.6", ls="--", lw=1, label=r"identity $\rho$")
  lines = []
  for i, (label, values) in enumerate(curves.items()):
    color = palette[i % len(palette)]
    width = 3 if label == emphasis else 2 if emphasis is None else 1.3
    (line,) = ax.plot(rho, np.asarray(values), color=color, lw=width, label=label,
                      ls=(linestyles or {}).get(label, "-"))
    lines.append(line)
    fps = (fixed_points or {}).get(label)
    if fps is not None:
      marker, size = _MARKERS[i % len(_MARKERS)]
      for p, stable in zip(fps.points, fps.stable):
        ax.plot([p], [p], marker, color=color, ms=size, mec=color, mew=2,
                mfc=color if stable else "white", zorder=20 - size, ls="none")
  ax.set_xlabel(r"input correlation $\rho$")
  ax.set_ylabel("output correlation")
  return lines


def plot_batch_chi1(ax, activation, batch: int | None = None):
  """χ1 of exact batch norm against the batch size, with Theorem 2's limit and the critical
  χ1 = 1; a star at `batch` if given.

  >>> fig, ax = new_figure(4, 3)
  >>> _ = plot_batch_chi1(ax, "relu", batch=32)
  >>> ax.get_xlabel()
  'batch size B'
  """
  batches, chi, limit = batch_chi1_curve(activation)
  ax.semilogx(batches, chi, "o-", ms=3, color="tab:red", label="exact batch norm at batch B")
  ax.axhline(limit, color="k", ls="--", lw=1, label=f"Theorem 2 (B → ∞): {limit:.4f}")
  ax.axhline(1.0, color="0.5", ls=":", lw=1, label=r"critical $\chi_1 = 1$")
  if batch is not None:
    from mimictheory._src.maps import chi1
    ax.plot([batch], [float(chi1(activation, norm="batch_norm", batch=batch))], "k*", ms=14,
            label=f"batch {batch}")
  ax.set_xlabel("batch size B")
  ax.set_ylabel(r"$\chi_1$")
  return chi


def plot_chi1_map(ax, pd, point=None, missing="0.75"):
  """χ1 over a `PhaseDiagram`'s (σb², σw²) grid (blue ordered, red chaotic; cells where q* = 0
  or ∞ in the colour `missing`, None to leave them for an overlay) with its critical line,
  and a star at `point` = (σw², σb²) if given. Returns the image (for a colour bar).

  >>> import numpy as np, mimictheory as mt
  >>> fig, ax = new_figure(4, 3)
  >>> pd = mt.phase_diagram("erf", sw2=np.linspace(0.5, 3, 6), sb2=np.linspace(0, 0.2, 4))
  >>> image = mt.plot_chi1_map(ax, pd, point=(2.0, 0.1))
  >>> print(ax.get_ylabel())
  $\\sigma_w^2$
  """
  from matplotlib.colors import TwoSlopeNorm
  style = _Cells(pd)
  chi = np.where(pd.regime >= _ZERO, np.nan, pd.chi1)
  lo, hi = (np.nanmin(chi), np.nanmax(chi)) if np.isfinite(chi).any() else (0.5, 1.5)
  if missing is not None:
    ax.set_facecolor(missing)  # q* = 0 or ∞: no colour of the χ1 scale
  image = style(ax, chi, cmap="RdBu_r",
                norm=TwoSlopeNorm(1.0, min(lo, 0.999), max(hi, 1.001)))
  if pd.critical is not None and pd.critical.exists.any():
    ok = pd.critical.exists
    ax.plot(pd.critical.sb2[ok], pd.critical.sw2[ok], "k-", lw=2,
            label=r"critical line $\chi_1 = 1$")
  if point is not None:
    ax.plot([point[1]], [point[0]], "k*", ms=14, mfc="yellow", clip_on=False)
  ax.set_xlim(style.extent[0], style.extent[1])
  ax.set_ylim(style.extent[2], style.extent[3])
  ax.set_xlabel(r"$\sigma_b^2$")
  ax.set_ylabel(r"$\sigma_w^2$")
  return image


def plot_ntk_spectrum(ax, spectrum):
  """The NTK's eigenvalues at the deepest depth of an `NTKSpectrum` (descending), with its
  condition number κ against depth in an inset (Theorem 1).

  >>> import numpy as np, mimictheory as mt
  >>> fig, ax = new_figure(4, 3)
  >>> spec = mt.ntk_spectrum(np.random.default_rng(0).normal(size=(6, 3)), depth=4)
  >>> inset = mt.plot_ntk_spectrum(ax, spec)
  >>> inset.get_title()
  'κ against depth'
  """
  eig = np.asarray(spectrum.eigenvalues[-1])[::-1]
  ax.semilogy(np.arange(1, len(eig) + 1), eig, "o-", ms=3,
              label=f"eigenvalues at depth {int(spectrum.depths[-1])}")
  # the inset where the eigenvalues are not: top right when most lie low on the log scale,
  # bottom left when most lie high (a well-conditioned NTK)
  logs = np.log(eig[eig > 0]) if np.any(eig > 0) else np.zeros(1)
  high = np.median(logs) > 0.5 * (logs.min() + logs.max())
  inset = ax.inset_axes([0.12, 0.1, 0.42, 0.36] if high else [0.55, 0.5, 0.42, 0.36])
  condition = np.asarray(spectrum.condition)
  inset.plot(spectrum.depths, condition, color="tab:purple")
  if np.nanmax(condition) / np.nanmin(condition) > 30:
    inset.set_yscale("log")
  inset.set_title("κ against depth", fontsize=8, pad=2)
  inset.tick_params(labelsize=7)
  ax.set_xlabel("index")
  ax.set_ylabel("NTK eigenvalue")
  return inset


def plot_layer_correlations(ax, layers, theory: dict, measured: dict | None = None):
  """The correlation of an input pair layer by layer: `theory` {label: values} as lines,
  `measured` {label: `Estimate`} (finite networks) as points with 2-SE error bars in the same
  colour.

  >>> import numpy as np
  >>> fig, ax = new_figure(4, 3)
  >>> plot_layer_correlations(ax, [1, 2, 3], {"plain": [0.5, 0.6, 0.7]})
  >>> ax.get_ylabel()
  'correlation of the pair'
  """
  for label, values in theory.items():
    (line,) = ax.plot(layers, np.asarray(values), "-", label=f"{label}: theory")
    if measured is not None and label in measured:
      est = measured[label]
      ax.errorbar(layers, est.mean, 2 * np.asarray(est.se), fmt="o", color=line.get_color(),
                  label=f"{label}: networks (± 2 SE)")
  ax.set_xlabel("layer")
  ax.set_ylabel("correlation of the pair")


def plot_width_gap(ax, widths, gaps):
  """A relative gap between finite networks and the infinite-width theory against the width,
  with the n^(-1/2) of the first point for reference (log-log).

  >>> fig, ax = new_figure(4, 3)
  >>> plot_width_gap(ax, [32, 128], [0.2, 0.1])
  >>> ax.get_xlabel()
  'width n'
  """
  widths, gaps = np.asarray(widths, float), np.asarray(gaps, float)
  ax.loglog(widths, gaps, "o-", label="relative RMS gap")
  ax.loglog(widths, gaps[0] * np.sqrt(widths[0] / widths), "k--", label=r"$n^{-1/2}$")
  ax.set_xlabel("width n")


def plot_depth_scale(ax, sw2, xi, critical: float | None = None):
  """The correlation depth ξ_c against σw² (log scale), with the critical σw² if given.

  >>> fig, ax = new_figure(4, 3)
  >>> plot_depth_scale(ax, [1.0, 2.0], [3.0, 10.0], critical=1.5)
  >>> print(ax.get_ylabel())
  $\\xi_c$ (layers)
  """
  ax.semilogy(sw2, xi)
  if critical is not None:
    ax.axvline(critical, color="k", ls="--", label=f"critical σw² = {critical:.3f}")
  ax.set_xlabel("σw²")
  ax.set_ylabel(r"$\xi_c$ (layers)")


def plot_accuracy(ax, histories: dict):
  """Test accuracy per epoch of training runs, {label: history} (`TrainResult.history`).

  >>> fig, ax = new_figure(4, 3)
  >>> plot_accuracy(ax, {"mimic": [{"epoch": 1, "test_accuracy": 0.5}]})
  >>> ax.get_ylabel()
  'test accuracy'
  """
  for label, history in histories.items():
    ax.plot([r["epoch"] for r in history], [r["test_accuracy"] for r in history], "o-", ms=3,
            label=label)
  ax.set_xlabel("epoch")
  ax.set_ylabel("test accuracy")
