# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Training dynamics: the kernels' prediction against trained networks
#
# A wide network trained by gradient descent on the mean squared error moves like its
# linearisation: its outputs follow `mimictheory.predict` with the NTK Θ (Jacot et al. 2018;
# Lee et al. 2019). Theorem 1 of the paper argues through Θ's condition number κ: at the
# largest stable learning rate 2 n_y / λ_max the slowest mode of the error shrinks by about
# 1 − 2/κ per step, so a well-conditioned (chaotic) network trains in few steps.
#
# Change the three settings in the next cell (depth, normalisation, learning rate as a
# fraction of the predicted limit) and run the notebook: it trains finite networks of the
# same `stax` description whose kernels give the prediction, on 128 digits, and draws the
# predicted curves (lines) against the networks (dots, mean ± standard error over seeds).
# `MIMICTHEORY_NOTEBOOK_SMALL=1` shrinks the networks (the tests use it).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import mimictheory as mt
from mimictheory import stax
from mimictheory.train import digits_split

DEPTH = 10            # try 2, 10, 30
NORM = "weight_mean"  # "none", "weight_mean" or "batch_norm" (exact at the batch)
LR_FRACTION = 0.25    # of the predicted limit 2 n_y / λ_max; above 1 the linearisation breaks

SMALL = os.environ.get("MIMICTHEORY_NOTEBOOK_SMALL") == "1"
WIDTH, STEPS, SEEDS = (128, 60, 2) if SMALL else (512, 300, 3)
(x, labels), (x_test, labels_test) = digits_split()  # bundled, standardised digits
targets = np.eye(10) - 0.1                                     # centred one-hot, 10 outputs
x, y, x_test, y_test = x[:128], targets[labels[:128]], x_test[:128], targets[labels_test[:128]]
sw2 = float(mt.stable_sw2("relu", norm="weight_mean")) if NORM == "weight_mean" else 2.0
net = stax.mlp(DEPTH, "relu", sw2, 0.0, NORM, width=WIDTH, out_dim=10)

# %% [markdown]
# ## Predicted and measured loss curves
#
# The description `net` is used twice: `net.kernel_fn` gives the NNGP and NTK (float64) from
# which `predict.gradient_descent_mse_ensemble` gives the expected loss over
# initialisations; `net.init_fn` / `net.apply_fn` are the finite networks (float32). BN has
# no test predictions: its kernels are those of the training batch.

# %%
test = (None, None) if NORM == "batch_norm" else (x_test, y_test)
curves = mt.training_curves(net, x, y, *test, steps=STEPS, lr_fraction=LR_FRACTION, seeds=SEEDS)
fig, ax = plt.subplots(figsize=(6, 4))
mean, se = curves.train
ax.loglog(curves.steps[1:], curves.predicted_train[1:], "C0", label="training, predicted")
ax.errorbar(curves.steps[1:], mean[1:], se[1:], fmt="o", color="C0", ms=3,
            label="training, networks")
if curves.test is not None:
    mean, se = curves.test
    ax.loglog(curves.steps[1:], curves.predicted_test[1:], "C1", label="test, predicted")
    ax.errorbar(curves.steps[1:], mean[1:], se[1:], fmt="o", color="C1", ms=3,
                label="test, networks")
ax.set_ylim(1e-12, None)  # below, the prediction is float64 rounding; the networks are float32
ax.set_xlabel("gradient-descent step")
ax.set_ylabel("loss")
ax.set_title(f"{NORM}, depth {DEPTH}, width {WIDTH}: κ = {curves.condition_number:.3g}, "
             f"η = {curves.learning_rate:.3g}", fontsize=9)
ax.legend(fontsize=8)
plt.show()
mean, se = curves.train
for i in (len(curves.steps) // 2, -1):
    print(f"training loss after {curves.steps[i]} steps: predicted "
          f"{curves.predicted_train[i]:.3g}, networks {mean[i]:.3g} ± {se[i]:.2g}")

# %% [markdown]
# ## Where the linearisation stops: the learning-rate limit
#
# Bisection on η for the largest rate at which the networks still train (their loss ends
# below its initial value), and the largest at which their loss never rises. Between the two
# the loss first rises, then falls (catapult dynamics), which the kernels do not describe.

# %%
limit = mt.learning_rate_limit(net, x, y, steps=40, seeds=2, iterations=3 if SMALL else 5)
print(f"predicted limit 2 n_y / λ_max = {limit.predicted:.4g}")
print(f"loss never rises up to {limit.monotone_low:.3g}–{limit.monotone_high:.3g} × predicted")
print(f"networks still train up to {limit.low:.3g}–{limit.high:.3g} × predicted "
      f"({'catapult band' if limit.catapult else 'no catapult band'})")
