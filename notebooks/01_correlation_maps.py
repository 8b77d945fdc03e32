# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Correlation maps and their fixed points
#
# The paper's central picture (Figure 4): a plain ReLU network at He initialisation maps every
# input correlation towards 1 (its NNGP kernel freezes, eq 8), while weight mean at the stable
# initialisation of Theorem 3 maps correlations towards 0, like batch norm (Theorem 2).
# Everything below calls the public API only.

# %%
import numpy as np
import matplotlib.pyplot as plt
import mimictheory as mt

rho = np.linspace(-1, 1, 201)
plain = mt.correlation_map(rho, "relu", sw2=2.0, sb2=0.0)                  # T(ρ) = 2 φ̂(ρ)
mean = mt.correlation_map(rho, "relu", sw2=None, norm="weight_mean")      # T̄(ρ)
bn = mt.correlation_map(rho, "relu", norm="batch_norm_paper")  # BN, Theorem 2 (batch → ∞)

# %%
print(
  "Theorem 3 stable sigma_w^2 (n = 300):", mt.stable_sw2("relu", norm="weight_mean", fan_in=300)
)
for name, kw in {"plain": dict(sw2=2.0), "weight mean": dict(sw2=None, norm="weight_mean"),
                 "batch norm": dict(norm="batch_norm_paper")}.items():
    print(f"{name:12s}", mt.fixed_points("relu", **kw))

# %%
fig, ax = plt.subplots(figsize=(5, 4.5))
mt.plot_correlation_maps(ax, rho, {"plain T": plain, "weight mean T̄": mean,
                                   "batch norm (Theorem 2)": bn},
                         linestyles={"batch norm (Theorem 2)": ":"})
ax.set_xticks([-1, -0.5, 0, 0.5, 1])
ax.legend();

# %% [markdown]
# ## Iterating the maps: correlation against depth
# Starting from ρ = 0.5, the plain network's correlation creeps up to 1 (power-law, since
# χ1 = 1), while weight mean drives it to 0 geometrically at rate T̄'(0) = π / (2(π − 1)).

# %%
depth = 50
traj = {"plain": [0.5], "weight mean": [0.5]}
for _ in range(depth):
    traj["plain"].append(float(mt.correlation_map(traj["plain"][-1], "relu", sw2=2.0)))
    traj["weight mean"].append(float(mt.correlation_map(traj["weight mean"][-1], "relu",
                                                        sw2=None, norm="weight_mean")))
print({k: round(v[-1], 4) for k, v in traj.items()})
fig, ax = plt.subplots(figsize=(5, 3.5))
mt.plot_layer_correlations(ax, np.arange(depth + 1), traj)
ax.legend();
