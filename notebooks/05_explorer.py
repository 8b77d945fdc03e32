# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Explorer: drag σw², σb², depth and see the theory move
#
# Pick an activation and a normalisation and drag σw², σb² and the depth. Three panels redraw:
#
# 1. the correlation map of one layer, T(ρ) of the plain network against T̄(ρ) with weight
#    mean (and the batch-norm map), at the chosen (σw², σb²);
# 2. where (σw², σb²) sits on the χ1 phase diagram (blue ordered, red chaotic, black line
#    χ1 = 1); with batch norm, σw² and σb² drop out and χ1 depends on the batch size instead;
# 3. the NTK's eigenvalues on 32 inputs at the chosen depth, and its condition number against
#    depth (Theorem 1: it blows up in the ordered phase).
#
# The sliders act on release. The three static pictures above the controls are the same
# function called at three settings, so the notebook also reads without a running kernel;
# the controls themselves appear only when the notebook runs in a live kernel (a saved
# notebook shows no widget). In the phase panel, grey cells have no finite positive q* (the
# variance collapses or explodes); blue is ordered, red chaotic, near-white near-critical.
# `MIMICTHEORY_NOTEBOOK_SMALL=1` shrinks the phase grid (the tests use it).

# %%
import os

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

import mimictheory as mt

SMALL = os.environ.get("MIMICTHEORY_NOTEBOOK_SMALL") == "1"
SW2 = np.linspace(0.5, 4.0, 36 if SMALL else 140)
SB2 = np.linspace(0.0, 0.3, 24 if SMALL else 90)
x = np.random.default_rng(0).normal(size=(32, 64))  # 32 inputs for the NTK panel
_phases = {}  # (activation, norm) -> PhaseDiagram, computed once per pair


def phase(activation, norm):
    if (activation, norm) not in _phases:
        _phases[activation, norm] = mt.phase_diagram(activation, sw2=SW2, sb2=SB2, norm=norm)
    return _phases[activation, norm]


state = {}  # the last drawn values (the tests read them)


def draw(activation="relu", norm="none", sw2=2.0, sb2=0.0, depth=20):
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained", dpi=110)
    rho = np.linspace(-1, 1, 201)
    ax = axes[0]
    ax.plot(rho, rho, color="0.6", ls="--", lw=1, label="identity")
    for kind, colour, style in (("none", "tab:blue", "-"), ("weight_mean", "tab:orange", "-"),
                                ("batch_norm_paper", "tab:green", "--")):
        t = mt.correlation_map(rho, activation, sw2=sw2, sb2=sb2, norm=kind)
        ax.plot(rho, t, style, color=colour, lw=3 if kind == norm else 1.3,
                label={"none": "T (plain)", "weight_mean": "T̄ (weight mean)",
                       "batch_norm_paper": "batch norm (Thm 2)"}[kind])
    ax.set(xlabel="input correlation ρ", ylabel="output correlation",
           title=f"{activation}: one layer's correlation map")
    ax.legend(fontsize=8)
    ax = axes[1]
    if norm == "batch_norm":
        batches, chi_b, limit = mt.batch_chi1_curve(activation)
        chi = float(mt.chi1(activation, norm="batch_norm", batch=len(x)))
        ax.semilogx(batches, chi_b, "-", color="tab:red")
        ax.axhline(limit, color="k", ls="--", lw=1)
        ax.plot([len(x)], [chi], "k*", ms=14)
        ax.set(xlabel="batch size B", ylabel="χ1",
               title=f"batch norm: χ1 = {chi:.3f} at B = {len(x)}")
    else:
        pd = phase(activation, norm)
        chi = float(mt.chi1(activation, sw2=sw2, sb2=sb2, norm=norm))
        chi_map = np.ma.masked_invalid(np.where(pd.regime >= 3, np.nan, pd.chi1))
        ax.set_facecolor("0.75")  # q* = 0 or ∞: no colour of the χ1 scale
        ax.pcolormesh(SB2, SW2, chi_map, cmap="RdBu_r", vmin=0, vmax=2, shading="nearest")
        ax.set_xlim(SB2[0] - 0.01, SB2[-1] + 0.01)
        ax.set_ylim(SW2[0] - 0.05, SW2[-1] + 0.05)
        line = pd.critical
        if line is not None and line.exists.any():
            ax.plot(line.sb2[line.exists], line.sw2[line.exists], "k-", lw=1.5)
        ax.plot([sb2], [sw2], "k*", ms=14, mfc="yellow", clip_on=False)
        ax.set(xlabel="σb²", ylabel="σw²", title=f"phase point: χ1 = {chi:.3f}")
    ax = axes[2]
    spec = mt.ntk_spectrum(x, depth=depth, activation=activation, sw2=sw2, sb2=sb2, norm=norm)
    ax.semilogy(np.arange(1, len(x) + 1), spec.eigenvalues[-1][::-1], "o-", ms=3,
                label=f"eigenvalues at depth {depth}")
    inset = ax.inset_axes([0.55, 0.5, 0.42, 0.36])
    inset.plot(spec.depths, spec.condition, color="tab:purple")
    if np.nanmax(spec.condition) / np.nanmin(spec.condition) > 30:
        inset.set_yscale("log")
    inset.set_title("κ against depth", fontsize=8, pad=2)
    inset.tick_params(labelsize=7)
    ax.set(xlabel="index", ylabel="NTK eigenvalue",
           title=f"NTK on {len(x)} inputs: κ = {spec.condition[-1]:.3g}")
    plt.show()
    state.update(activation=activation, norm=norm, sw2=sw2, sb2=sb2, depth=depth, chi1=chi,
                 condition=float(spec.condition[-1]), images=state.get("images", 0) + 1)


# %% [markdown]
# The picture at the defaults (ReLU without normalisation at the critical point (2, 0)), then
# with weight mean at Theorem 3's σw² and with batch norm:

# %%
draw()
draw(norm="weight_mean", sw2=float(mt.stable_sw2("relu")))
draw(norm="batch_norm")

# %% [markdown]
# ## The controls
# In a running Jupyter kernel (`make lab`), run the cell below and drag the sliders; its first
# drawing is at the defaults again. A saved notebook cannot show a live widget.

# %%
slider = dict(continuous_update=False, readout_format=".2f")
controls = widgets.interactive(
    draw,
    activation=widgets.Dropdown(options=["relu", "erf", "tanh", "gelu"], value="relu"),
    norm=widgets.Dropdown(options=[("none", "none"), ("weight mean", "weight_mean"),
                                   ("batch norm", "batch_norm")], value="none"),
    sw2=widgets.FloatSlider(value=2.0, min=0.5, max=4.0, step=0.05, description="σw²", **slider),
    sb2=widgets.FloatSlider(value=0.0, min=0.0, max=0.3, step=0.01, description="σb²", **slider),
    depth=widgets.IntSlider(value=20, min=1, max=100, continuous_update=False, description="depth"),
)
controls
