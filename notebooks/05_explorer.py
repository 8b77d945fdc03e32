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
    names = {"none": "T (plain)", "weight_mean": "T̄ (weight mean)",
             "batch_norm_paper": "batch norm (Thm 2)"}
    curves = {names[kind]: mt.correlation_map(rho, activation, sw2=sw2, sb2=sb2, norm=kind)
              for kind in names}
    mt.plot_correlation_maps(axes[0], rho, curves, emphasis=names.get(norm),
                             linestyles={names["batch_norm_paper"]: "--"})
    axes[0].set_title(f"{activation}: one layer's correlation map")
    axes[0].legend(fontsize=8)
    if norm == "batch_norm":
        chi = float(mt.chi1(activation, norm="batch_norm", batch=len(x)))
        mt.plot_batch_chi1(axes[1], activation, batch=len(x))
        axes[1].set_title(f"batch norm: χ1 = {chi:.3f} at B = {len(x)}")
    else:
        chi = float(mt.chi1(activation, sw2=sw2, sb2=sb2, norm=norm))
        mt.plot_chi1_map(axes[1], phase(activation, norm), point=(sw2, sb2))
        axes[1].set_title(f"phase point: χ1 = {chi:.3f}")
    spec = mt.ntk_spectrum(x, depth=depth, activation=activation, sw2=sw2, sb2=sb2, norm=norm)
    mt.plot_ntk_spectrum(axes[2], spec)
    axes[2].set_title(f"NTK on {len(x)} inputs: κ = {spec.condition[-1]:.3g}")
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
