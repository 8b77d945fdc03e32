# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # MimicNorm training
#
# The practice half: a deep ReLU MLP on the bundled digits, plain, with BN and with MimicNorm
# (weight mean + last BN), trained with the paper's optimiser; the initial scale of the
# weight-mean kernels is Theorem 3's, and at initialisation the model's layer-by-layer
# correlations are the analytic T̄. Public API only; `MIMICTHEORY_NOTEBOOK_SMALL=1` shrinks the
# runs (the tests use it).

# %%
import os
import tempfile

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import mimictheory as mt
from mimictheory.nn import MLP
from mimictheory.train import TrainConfig, digits_split, train

SMALL = os.environ.get("MIMICTHEORY_NOTEBOOK_SMALL") == "1"
data = digits_split()
DEPTH, WIDTH, EPOCHS = (8, 128, 2) if SMALL else (16, 256, 10)

# %% [markdown]
# ## At initialisation: practice matches theory

# %%
x = data[0][0][:6]
model = MLP(64, 10, depth=DEPTH, width=1024, norm="mimic", rngs=nnx.Rngs(0))
measured = np.asarray(model.signals(jnp.asarray(x)).correlation)
theory = mt.layer_kernels(x, depth=DEPTH, activation="relu", sw2=None, norm="weight_mean",
                          fan_in=1024)
d = np.sqrt(np.diagonal(theory, axis1=1, axis2=2))
theory = theory / (d[:, :, None] * d[:, None, :])
off = ~np.eye(len(x), dtype=bool)
rms = float(np.sqrt(np.mean((measured - theory)[:, off] ** 2)))
print(f"one network of width 1024: RMS |measured - T̄| over pairs and layers = {rms:.3f} "
      "(fluctuations O(n^-1/2); tests/test_nn.py checks the mean over networks in SEs)")

# %% [markdown]
# ## Training: plain, BN and MimicNorm at the paper's learning rate 0.1

# %%
histories = {}
with tempfile.TemporaryDirectory() as tmp:
    for norm in ("none", "bn", "mimic"):
        config = TrainConfig(norm=norm, depth=DEPTH, width=WIDTH, epochs=EPOCHS, lr=0.1,
                             warmup_epochs=1, milestones=())
        histories[norm] = train(config, data, os.path.join(tmp, norm)).history
fig, ax = plt.subplots(figsize=(6, 4))
mt.plot_accuracy(ax, histories)
ax.legend();
final = {norm: h[-1]["test_accuracy"] for norm, h in histories.items()}
print(final)
