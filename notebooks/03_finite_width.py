# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Finite-width networks against the theory
#
# The same quantities measured on real random networks, with Monte Carlo error bars: the
# NNGP kernel, the empirical NTK (computed layer by layer), the per-layer correlation of input
# pairs (the empirical T and T̄ maps) and χ1 from one layer's Jacobian. Then how batch norm's
# finite batch departs from the paper's full-batch theory. Public API only;
# `MIMICTHEORY_NOTEBOOK_SMALL=1` shrinks the sizes (the tests use it).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import mimictheory as mt

SMALL = os.environ.get("MIMICTHEORY_NOTEBOOK_SMALL") == "1"
WIDTH, DRAWS = (128, 16) if SMALL else (512, 64)
x = np.random.default_rng(0).normal(size=(6, 16))

# %% [markdown]
# ## Kernels: Monte Carlo within a few standard errors

# %%
for norm, sw2 in (("none", 2.0), ("weight_mean", None)):
    net = mt.finite_network("relu", depth=3, width=WIDTH, sw2=sw2, norm=norm)
    mc = mt.monte_carlo_kernels(net, x, draws=DRAWS)
    theory = net.theory_kernels(x)
    z_nngp = np.abs(mc.nngp.z_scores(theory.nngp)).max()
    z_ntk = np.abs(mc.ntk.z_scores(theory.ntk)).max()
    print(f"{norm:12s} max |z|: NNGP {z_nngp:.2f}, NTK {z_ntk:.2f}  ({DRAWS} networks)")

# %% [markdown]
# ## The empirical correlation maps T and T̄
# Two inputs with correlation 0.6 (mean-free features, so weight mean keeps it): layer by layer
# in random networks (error bars: 2 SE over networks) and the iterated maps.

# %%
e1, e2 = np.array([1.0, -1.0, 1.0, -1.0]) / 2, np.array([1.0, 1.0, -1.0, -1.0]) / 2
pair = np.stack([e1, 0.6 * e1 + 0.8 * e2])
depth = 8 if SMALL else 15
corr, measured = {}, {}
for norm, sw2 in (("none", 2.0), ("weight_mean", None)):
    net = mt.finite_network("relu", depth=depth, width=WIDTH, sw2=sw2, norm=norm, input_gain=4.0)
    est = mt.monte_carlo_correlations(net, pair, draws=DRAWS // 2)
    corr[norm] = (est.mean[:, 0, 1], net.theory_correlations(pair)[:, 0, 1])
    measured[norm] = mt.Estimate(est.mean[:, 0, 1], est.se[:, 0, 1], est.draws)
fig, ax = plt.subplots(figsize=(6, 4))
mt.plot_layer_correlations(ax, np.arange(1, depth + 1), {k: v[1] for k, v in corr.items()},
                           measured)
ax.legend();

# %% [markdown]
# ## χ1 from the Jacobian of one layer

# %%
for norm, sw2 in (("none", 2.0), ("weight_mean", None)):
    net = mt.finite_network("relu", width=WIDTH, sw2=sw2, norm=norm)
    est = mt.monte_carlo_chi1(net, draws=DRAWS // 2)
    print(f"{norm:12s} chi1: network {float(est.mean):.4f} ± {float(est.se):.4f}, "
          f"theory {float(mt.chi1('relu', sw2=net.sw2, norm=norm, fan_in=WIDTH)):.4f}")

# %% [markdown]
# ## Width: a single network's kernel deviates from the limit like n^(-1/2)

# %%
widths = np.array([32, 64, 128, 256] if SMALL else [32, 64, 128, 256, 512, 1024])
gaps = []
for n in widths:
    net = mt.finite_network("relu", depth=2, width=int(n), sb2=0.1)
    samples = mt.sample_kernels(net, x, draws=16)
    theory = net.theory_kernels(x).ntk
    gaps.append(np.sqrt(np.mean((samples.ntk - theory) ** 2)) / np.sqrt(np.mean(theory**2)))
slope = np.polyfit(np.log(widths), np.log(gaps), 1)[0]
print(f"fitted exponent {slope:.3f} (theory: -0.5)")
fig, ax = plt.subplots(figsize=(5, 3.5))
mt.plot_width_gap(ax, widths, gaps)
ax.set_ylabel("relative RMS gap of the NTK")
ax.legend();

# %% [markdown]
# ## Batch norm: exact finite-batch theory against Theorem 2
# `norm="batch_norm"` is exact at the batch given by the rows of x (every unit normalised by
# its own batch statistics, the NTK through the batch mean and variance); Theorem 2
# (`norm="batch_norm_paper"`) is its infinite-batch limit. Finite BN networks agree with the
# exact theory at every batch (RMS z ≈ 1) and not with Theorem 2 at small batches.

# %%
gap = mt.batch_norm_gap("relu", batches=(8,) if SMALL else (4, 8, 32, 128),
                        width=WIDTH // 4 if SMALL else WIDTH, depth=2, draws=8 if SMALL else 16,
                        dim=16 if SMALL else 32)
print(f"Theorem 2: chi1 = pi/(pi-1) = {gap.chi1_paper:.4f}")
print(gap.markdown())
