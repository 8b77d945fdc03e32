# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Phase diagrams over (σw², σb²)
#
# Where is a deep network ordered (χ1 < 1, inputs collapse together), critical (χ1 = 1) or
# chaotic (χ1 > 1, inputs decorrelate)? The mean-field theory answers on a whole grid at once,
# and the critical line is solved exactly. Weight mean moves ReLU's variance boundary from
# σw² = 2 to 2/(1 − 1/π) (Theorem 3); batch norm makes σw², σb² irrelevant (Theorem 2).
# Public API only. `MIMICTHEORY_NOTEBOOK_SMALL=1` shrinks the grids (the tests use it).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import mimictheory as mt

SMALL = os.environ.get("MIMICTHEORY_NOTEBOOK_SMALL") == "1"
sw2 = np.linspace(0.5, 4.0, 40 if SMALL else 300)
sb2 = np.linspace(0.0, 0.3, 30 if SMALL else 200)

# %%
pds = {norm: mt.phase_diagram("erf", sw2=sw2, sb2=sb2, norm=norm)
       for norm in ("none", "weight_mean", "batch_norm")}
for norm, pd in pds.items():
    print(f"{norm:12s} chaotic fraction {np.mean(pd.chi1 > 1):.2f}   "
          f"chi1 range [{pd.chi1.min():.3f}, {pd.chi1.max():.3f}]")

# %%
mt.plot_phase_diagrams(pds.values())  # a Figure: shown as the cell's value

# %% [markdown]
# The plain and weight-mean rows of erf are the same: erf is odd, so E[φ] = 0 and centring the
# weights removes nothing after the first layer (Lemma 1 subtracts E[φ]²). Weight mean moves
# the phase boundary only for activations with a mean, such as ReLU:

# %%
relu = {norm: mt.phase_diagram("relu", sw2=sw2, sb2=sb2, norm=norm)
        for norm in ("none", "weight_mean")}
mt.plot_phase_diagrams(relu.values())

# %% [markdown]
# ## What each cell is
# Every cell has a regime (`mt.REGIMES`): ordered, critical, chaotic, or one where the variance
# itself has no finite positive fixed point (q* = 0: it collapses; q* = ∞: it explodes, as for
# ReLU with σw² > 2, where χ1 > 1 but the correlation map is marginal). On this grid GELU has
# ordered, chaotic, q* = 0 and q* = ∞ cells (exactly critical cells are a set of measure 0).

# %%
gelu = mt.phase_diagram("gelu", sw2=sw2, sb2=sb2)
counts = np.bincount(gelu.regime.ravel(), minlength=len(mt.REGIMES))
for name, count in zip(mt.REGIMES, counts):
    print(f"{name:14s} {count:6d} cells")

# %% [markdown]
# ## The critical line, exactly
# On the line, χ1 = 1 and V(q*) = q* give σw² and σb² as functions of q*; the line is found by
# scanning q* for every σb² and refining each sign change, without a grid. A branch counts only
# if the variance map reaches its q* from q = 1 (`branch_reached`). For tanh it starts at
# σw² = 1 (tanh'(0) = 1).

# %%
line = mt.critical_line("tanh", sb2=np.linspace(0, 0.3, 7))
for b, w in zip(line.sb2, line.sw2):
    print(f"sb2 = {b:.2f}  ->  critical sw2 = {w:.6f}  chi1 there = "
          f"{float(mt.chi1('tanh', sw2=w, sb2=b)):.12f}")

# %% [markdown]
# ## Depth scales
# ξ_c = −1/ln χ_c is how many layers a difference between two inputs survives; it diverges on
# the critical line.

# %%
tanh = mt.phase_diagram("tanh", sw2=sw2[::4] if not SMALL else sw2, sb2=[0.05])
xi = tanh.xi_c[:, 0]
critical = float(mt.critical_line("tanh", sb2=[0.05]).sw2[0])
fig, ax = plt.subplots(figsize=(6, 4))
mt.plot_depth_scale(ax, tanh.sw2, xi, critical)
ax.set_title("tanh, σb² = 0.05")
ax.legend();
