"""Command line: a thin layer over the public API. Errors: one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import math
import re
import sys

import numpy as np

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise SystemExit(_fail(f"{self.prog}: error: {message}"))


def _fail(line: str) -> int:
  print(line.replace("\n", " "), file=sys.stderr)
  return 2


MAX_GRID_POINTS = 100_000  # per axis of a phase grid
MAX_GRID_CELLS = 25_000_000  # σw² × σb² cells (about 2 GB of float64 outputs)


def grid(spec: str) -> np.ndarray:
  """'start:stop:num' (inclusive linspace), 'a,b,c' or a single number; finite values and
  1 <= num <= MAX_GRID_POINTS."""
  message = (f"expected START:STOP:NUM (finite START, STOP; 1 <= NUM <= {MAX_GRID_POINTS}), "
             f"a comma list or a number, got {spec!r}")
  try:
    if ":" in spec:
      start, stop, num = spec.split(":")
      start, stop, num = float(start), float(stop), int(num)
      if not (1 <= num <= MAX_GRID_POINTS and math.isfinite(start) and math.isfinite(stop)):
        raise ValueError
      return np.linspace(start, stop, num)
    values = np.array([float(v) for v in spec.split(",")])
  except ValueError:
    raise argparse.ArgumentTypeError(message) from None
  if not np.isfinite(values).all() or values.size > MAX_GRID_POINTS:
    raise argparse.ArgumentTypeError(message)
  return values


# Options whose values may start with a minus sign (argparse would read "-1:0:5" as an option).
_SIGNED_OPTIONS = ("--sw2", "--sb2", "--lrs", "--milestones")


def _join_signed_values(argv):
  """['--sb2', '-1:0:5'] -> ['--sb2=-1:0:5'], so that a negative grid reaches its check."""
  out, i = [], 0
  while i < len(argv):
    token = argv[i]
    if (token in _SIGNED_OPTIONS and i + 1 < len(argv)
        and re.match(r"^-[0-9.]", argv[i + 1])):
      out.append(f"{token}={argv[i + 1]}")
      i += 2
    else:
      out.append(token)
      i += 1
  return out


def _phase(args) -> int:
  from mimictheory._src.checks import check_choice, check_fan_in
  from mimictheory._src.figures import phase_figure
  from mimictheory._src.io import ensure_dir, exit_cleanly_on_interrupt
  from mimictheory._src.maps import NORMS
  from mimictheory._src.phase import grid_axis
  grid_axis("sw2", args.sw2, positive=True)  # validate before any folder is made
  grid_axis("sb2", args.sb2, positive=False)
  if args.sw2.size * args.sb2.size > MAX_GRID_CELLS:
    raise ValueError(f"--sw2 x --sb2 has {args.sw2.size} x {args.sb2.size} cells; at most "
                     f"{MAX_GRID_CELLS:,} fit in memory here (split the grid)")
  norms = [check_choice("norm", n, NORMS) for n in args.norm]
  if not norms:
    raise ValueError(f"--norm must name at least one of {', '.join(NORMS)}, got ''")
  check_fan_in(args.fan_in)
  _check_fan_in_norm(args.fan_in, norms)
  out = ensure_dir(args.out)
  with exit_cleanly_on_interrupt():
    paths = phase_figure(out, args.activation, norms, sw2=args.sw2, sb2=args.sb2,
                         fan_in=args.fan_in, progress=not args.quiet, stem="phase",
                         compact=False)
  print(f"wrote {', '.join(str(p) for p in paths)} ({args.sw2.size}x{args.sb2.size} grid, "
        f"norms {', '.join(norms)})")
  return 0


def _check_fan_in_norm(fan_in, norms) -> None:
  """--fan-in is Lemma 1's finite fan-in of weight mean; without it, it would be ignored."""
  if fan_in is not None and "weight_mean" not in norms:
    raise ValueError(f"--fan-in applies to --norm weight_mean only (Lemma 1's (n-1)/n), got "
                     f"--norm {','.join(norms)}")


def _maps(args) -> int:
  import mimictheory as mt
  from mimictheory._src.checks import check_fan_in
  check_fan_in(args.fan_in)
  _check_fan_in_norm(args.fan_in, [args.norm])
  if args.batch is not None and args.norm != "batch_norm":
    raise ValueError(f"--batch applies to --norm batch_norm only, got --norm {args.norm}")
  kw = dict(activation=args.activation, sw2=args.sw2, sb2=args.sb2, norm=args.norm,
            fan_in=args.fan_in)
  finite_chi1 = (None if args.batch is None else
                 float(mt.chi1(args.activation, norm="batch_norm", batch=args.batch)))
  fp = mt.fixed_points(**kw)
  scales = mt.depth_scales(**kw)
  print(f"q* = {fp.qstar:.10g}   chi1 = {fp.chi1:.10g}   c* = {float(scales.cstar):.10g}   "
        f"xi_c = {float(scales.xi_c):.6g}   xi_q = {float(scales.xi_q):.6g}")
  if args.norm == "batch_norm":
    print("batch_norm: the values above are Theorem 2's full-batch limit (B -> infinity)"
          + ("" if finite_chi1 is None else
             f"; at batch {args.batch} the exact chi1 = {finite_chi1:.10g}")
          + ("; give --batch B for the exact chi1 at a finite batch" if finite_chi1 is None
             else ""))
  for p, d, s in zip(fp.points, fp.slopes, fp.stable):
    print(f"fixed point rho* = {p:+.10f}   T'(rho*) = {d:.10f}   {'stable' if s else 'unstable'}")
  return 0


def _figures(args) -> int:
  from mimictheory._src.figures import figure_names, regenerate
  from mimictheory._src.io import ensure_dir, exit_cleanly_on_interrupt
  only = None
  if args.only is not None:
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    if not only:
      raise ValueError(f"--only must name at least one figure, got {args.only!r}")
  figure_names(only)  # check the names and the data before any folder or file is made
  if args.mnist is not None:
    from mimictheory._src.data import mnist
    mnist(args.mnist)
  out = ensure_dir(args.out)
  def written(paths):  # as each figure is done, not at the end
    for path in paths:
      print(f"wrote {path}", flush=True)

  with exit_cleanly_on_interrupt():
    regenerate(out, only, progress=not args.quiet, mnist=args.mnist, on_figure=written)
  return 0


def _crosscheck(args) -> int:
  from mimictheory._src import crosscheck as cc
  from mimictheory._src.io import ensure_dir
  cc.check_activations(args.activations)  # fail before any folder is made
  python = cc.reference_python(args.nt_python)
  out = ensure_dir(args.out)
  result = cc.crosscheck(activations=args.activations, depths=args.depths, nt_python=python,
                         width=args.width, n_inputs=args.inputs, repeat=args.repeat,
                         progress=not args.quiet)
  md, js = cc.write_report(result, out)
  print(f"wrote {md} and {js}: {len(result.comparisons) - len(result.failures())} of "
        f"{len(result.comparisons)} comparisons agree")
  if not result.ok:
    worst = max(result.failures(), key=lambda c: max(c.max_rel / c.tolerance,
                                                     c.max_rel_diagonal / c.diagonal_tolerance))
    print(f"mimictheory: {len(result.failures())} comparisons disagree with neural-tangents, "
          f"worst: {worst.quantity} {worst.activation} depth {worst.depth} rel "
          f"{worst.max_rel:.1e}, diagonal {worst.max_rel_diagonal:.1e} (see {md})",
          file=sys.stderr)
    return 1
  return 0


def _train(args) -> int:
  from mimictheory._src.plotting import plot_training
  from mimictheory._src.data import load_data
  from mimictheory._src.train import TrainConfig, data_mesh, train
  config = TrainConfig(
    norm=args.norm,
    model=args.model,
    model_width=args.model_width,
    augment=not args.no_augment,
    depth=args.depth,
    width=args.width,
    epochs=args.epochs,
    batch_size=args.batch_size,
    lr=args.lr,
    momentum=args.momentum,
    weight_decay=args.weight_decay,
    warmup_epochs=args.warmup_epochs,
    warmup_start=args.warmup_start,
    milestones=args.milestones,
    drop_last=args.drop_last,
    seed=args.seed,
    data=args.data,
  ).validate()
  data = load_data(args.data, args.data_path)
  from mimictheory._src.io import out_path
  out = out_path(args.out)  # made by train once everything is validated
  mesh = data_mesh() if args.data_parallel else None
  result = train(config, data, out, progress=not args.quiet, mesh=mesh)  # writes once valid
  plot_training(result.history, out / "curves.png",
                title=f"{args.data}, {args.model}, norm {args.norm}, lr {args.lr}")
  last = result.history[-1] if result.history else {}
  resumed = f" (resumed from epoch {result.resumed_from})" if result.resumed_from else ""
  print(f"{result.status}{resumed}: {len(result.history)} epochs, test accuracy "
        f"{last.get('test_accuracy', float('nan')):.4f}; wrote {out / 'metrics.jsonl'} and "
        f"{out / 'curves.png'}")
  if result.status == "diverged":
    print(f"mimictheory: training diverged (non-finite loss) in epoch {last['epoch']}; "
          "recorded in metrics.jsonl", file=sys.stderr)
    return 1
  return 0


def _ablation(args) -> int:
  from mimictheory._src.ablation import lr_sweep
  from mimictheory._src.io import ensure_dir
  from mimictheory._src.norms import MODEL_NORMS, check_norm
  from mimictheory._src.data import load_data
  from mimictheory._src.checks import check_int, check_positive
  methods = [check_norm(m, MODEL_NORMS, "method") for m in args.methods]
  if not methods:
    raise ValueError(f"--methods must name at least one of {', '.join(MODEL_NORMS)}")
  if not args.lrs:
    raise ValueError("--lrs must list at least one learning rate, got ''")
  for lr in args.lrs:
    check_positive("lr", lr)
  check_int("epochs", args.epochs)
  data = load_data(args.data, args.data_path)
  out = ensure_dir(args.out)
  sweep = lr_sweep(data, out, methods=methods, lrs=args.lrs, epochs=args.epochs,
                   depth=args.depth, width=args.width, seed=args.seed, data_name=args.data,
                   progress=not args.quiet)
  print(sweep.markdown())
  print(f"wrote {out / 'lr_sweep.md'}, {out / 'lr_sweep.json'} and {out / 'lr_sweep.png'}")
  return 0


def _memory(args) -> int:
  from mimictheory._src.memory import compare, format_table
  rows = compare(args.models, args.batch, args.width, progress=not args.quiet)
  print(f"compiled training-step memory, batch {args.batch}, width x{args.width} (XLA memory "
        "analysis: arguments + outputs not aliased to the donated state + temporaries)")
  print(format_table(rows))
  if args.throughput:
    from mimictheory._src.memory import compare_speed, format_speed_table
    print(f"\nsteady-state training step, batch {args.batch} (median of 3 rounds of 10 steps, "
          "after compilation and warm-up)")
    print(format_speed_table(compare_speed(args.models, args.batch, args.width,
                                           progress=not args.quiet)))
  return 0


def _dynamics(args) -> int:
  from mimictheory._src.checks import check_int, check_positive
  from mimictheory._src.dynamics import learning_rate_limit, training_curves
  from mimictheory._src.figure_data import dynamics_network, dynamics_task
  from mimictheory._src.io import ensure_dir, progress_bar, write_table
  from mimictheory._src.maps import NORMS
  from mimictheory._src.norms import check_norm
  norms = [check_norm(n, NORMS, "norm") for n in args.norm]
  if not norms:
    raise ValueError(f"--norm must name at least one of {', '.join(NORMS)}")
  if "batch_norm_paper" in norms:
    raise ValueError("--norm batch_norm_paper is Theorem 2's limit, which has no finite network "
                     "to train; use batch_norm (exact at the batch)")
  check_int("depth", args.depth)
  check_int("width", args.width, minimum=2)
  check_int("train", args.train, minimum=2)
  check_int("test", args.test, minimum=1)
  if args.lr is not None:
    check_positive("lr", args.lr)
  check_positive("lr_fraction", args.lr_fraction)
  if args.sw2 is not None:
    check_positive("sw2", args.sw2)
  if not args.sb2 >= 0:
    raise ValueError(f"sb2 must be >= 0, got {args.sb2}")
  x, y, xt, yt = dynamics_task(args.train, args.test, args.seed)
  rows, payload = [], {"depth": args.depth, "width": args.width, "activation": args.activation,
                       "sb2": args.sb2, "train": args.train, "test": args.test, "runs": []}
  out = ensure_dir(args.out)
  for norm in progress_bar(norms, not args.quiet, "norms"):
    sw2 = args.sw2 if args.sw2 is not None else (None if norm == "weight_mean" else 2.0)
    net = dynamics_network(args.depth, args.activation, sw2, args.sb2, norm, args.width)
    test = (xt, yt) if norm != "batch_norm" else (None, None)
    c = training_curves(net, x, y, *test, steps=args.steps, learning_rate=args.lr,
                        lr_fraction=None if args.lr is not None else args.lr_fraction,
                        seeds=args.seeds, seed=args.seed, progress=not args.quiet)
    train, train_se = c.train
    run = {"norm": norm, "condition_number": c.condition_number,
           "max_learning_rate": c.max_learning_rate, "learning_rate": c.learning_rate,
           "steps": c.steps.tolist(), "predicted_train": c.predicted_train.tolist(),
           "train_loss": c.train_loss.tolist()}
    test_cell = "(BN: training batch only)"
    if c.test_loss is not None:
      mean, se = c.test
      run.update(predicted_test=c.predicted_test.tolist(), test_loss=c.test_loss.tolist())
      test_cell = f"{c.predicted_test[-1]:.4g} / {mean[-1]:.4g} ± {se[-1]:.2g}"
    limit_cell = "(--limits)"
    if args.limits:
      r = learning_rate_limit(net, x, y, seeds=min(args.seeds, 2), seed=args.seed,
                              progress=not args.quiet)
      run.update(measured_limit=[r.low * r.predicted, r.high * r.predicted],
                 monotone_limit=[r.monotone_low * r.predicted, r.monotone_high * r.predicted])
      limit_cell = (f"{r.low:.3g}–{r.high:.3g} (loss never rises: {r.monotone_low:.3g}–"
                    f"{r.monotone_high:.3g})")
    payload["runs"].append(run)
    rows.append(f"| {norm} | {c.condition_number:.4g} | {c.max_learning_rate:.4g} | "
                f"{c.learning_rate:.4g} | {c.predicted_train[-1]:.4g} / {train[-1]:.4g} ± "
                f"{train_se[-1]:.2g} | {test_cell} | {limit_cell} |")
  last = int(np.asarray(payload["runs"][0]["steps"])[-1])
  markdown = "\n".join([
      f"Training dynamics: {args.activation} MLP of depth {args.depth}, width {args.width}, "
      f"{args.seeds} seeds, {args.train} training and {args.test} test digits, MSE, full-batch "
      f"gradient descent for {last} steps (float32 networks against the float64 prediction).",
      "",
      "| norm | NTK κ | predicted limit η | η used | train loss: predicted / measured | "
      "test loss: predicted / measured | measured limit / predicted |",
      "|---|---:|---:|---:|---:|---:|---:|", *rows])
  paths = write_table(out, "dynamics", markdown, payload)
  print(markdown)
  print("wrote " + " and ".join(str(p) for p in paths))
  return 0


def _floats(spec: str):
  try:
    return tuple(float(v) for v in spec.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {spec!r}") from None


def _names(spec: str):
  return tuple(v.strip() for v in spec.split(",") if v.strip())


def _ints(spec: str):
  try:
    values = tuple(int(v) for v in spec.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {spec!r}") from None
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"expected integers >= 1, got {spec!r}")
  return values


def _common(p, activation="relu", norm="none"):
  from mimictheory._src.activations import ACTIVATIONS
  from mimictheory._src.maps import NORMS
  p.add_argument("--activation", default=activation, choices=list(ACTIVATIONS))
  if norm is not None:
    p.add_argument("--norm", default=norm, choices=list(NORMS))
  p.add_argument("--fan-in", type=int, default=None, help="finite fan-in n of Lemma 1")


def _float_or_none(spec: str):
  if spec.lower() in ("none", "stable"):
    return None
  try:
    return float(spec)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number or 'stable', got {spec!r}") from None


def build_parser() -> argparse.ArgumentParser:
  """The parser; its defaults and lists are the library's (TrainConfig, DATASETS, MODELS,
  EXPERIMENTS, ...), never repeated here."""
  from mimictheory._src.ablation import LEARNING_RATES
  from mimictheory._src.activations import ACTIVATIONS
  from mimictheory._src.data import DATASETS
  from mimictheory._src.models import MODELS
  from mimictheory._src.norms import ABLATION_METHODS, MODEL_NORMS, RESIDUAL_BASELINES
  from mimictheory._src.reproduce import EXPERIMENTS
  from mimictheory._src.train import TrainConfig
  train_defaults = TrainConfig()
  flat = [d for d in DATASETS if not d.endswith("_images")]  # an MLP's data sets
  parser = _Parser(prog="mimictheory", description="Mean-field / NTK theory of MimicNorm.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  p = sub.add_parser("phase", help="phase diagrams over (sw2, sb2), one row per norm: "
                                    "phase.png, phase.pdf, phase.npz")
  _common(p, norm=None)
  p.add_argument("--norm", type=_names, default=("none", "weight_mean", "batch_norm"),
                 help="comma list of norms, one row each (default all three)")
  p.add_argument("--sw2", type=grid, default=grid("0.5:4:200"), help="START:STOP:NUM")
  p.add_argument("--sb2", type=grid, default=grid("0:0.3:150"), help="START:STOP:NUM")
  p.add_argument("--out", default="figures/phase", help="output folder")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(run=_phase)
  p = sub.add_parser("figures", help="regenerate the figures (PNG, PDF and the data as npz)")
  p.add_argument("--out", default="figures", help="output folder")
  p.add_argument("--only", default=None, help="comma list of figure names, e.g. fig4,fig5")
  p.add_argument("--mnist", default=None,
                 help="a local MNIST copy (mnist.npz or the IDX folder); default: bundled digits")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(run=_figures)
  p = sub.add_parser("maps", help="q*, chi1, depth scales and the fixed points of T")
  _common(p)
  p.add_argument("--sw2", type=_float_or_none, default=2.0, help="a number or 'stable'")
  p.add_argument("--sb2", type=float, default=0.0)
  p.add_argument("--batch", type=int, default=None,
                 help="with --norm batch_norm: also the exact chi1 at this batch size (>= 4)")
  p.set_defaults(run=_maps)
  p = sub.add_parser("crosscheck", help="compare NNGP/NTK with neural-tangents (make nt-env)")
  p.add_argument("--out", default="crosscheck", help="folder for crosscheck.md and .json")
  p.add_argument("--nt-python", default=None,
                 help="the reference environment's python (default .nt-env/bin/python)")
  p.add_argument("--activations", type=_names, default=("relu", "erf", "gelu", "leaky_relu",
                                                         "tanh"), help="comma list")
  p.add_argument("--depths", type=_ints, default=(1, 3, 10), help="comma list")
  p.add_argument("--width", type=int, default=256, help="width of the random networks")
  p.add_argument("--inputs", type=int, default=16, help="number of random inputs")
  p.add_argument("--repeat", type=int, default=0, help="also time each computation N times")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(run=_crosscheck)
  p = sub.add_parser("train", help="train a MimicNorm (or baseline) network; resumes in --out")
  p.add_argument("--data", default="digits", choices=list(DATASETS))
  p.add_argument("--model", default=train_defaults.model,
                 help=f"mlp or {', '.join(MODELS)} (the CIFAR models need 32x32x3 images)")
  p.add_argument("--model-width", type=float, default=train_defaults.model_width,
                 help="channel multiplier")
  p.add_argument("--no-augment", action="store_true", help="no random crop / flip / rotation")
  p.add_argument("--data-path", default=None, help="folder of a local CIFAR copy (python pickle)")
  p.add_argument("--norm", default=train_defaults.norm,
                 choices=MODEL_NORMS + RESIDUAL_BASELINES + ("bn",),
                 help="fixup and skipinit: the normalisation-free baselines (resnet18/50 only)")
  p.add_argument("--data-parallel", action="store_true",
                 help="split every batch over all devices (jax.sharding; multi-host after "
                 "jax.distributed.initialize)")
  p.add_argument("--depth", type=int, default=train_defaults.depth)
  p.add_argument("--width", type=int, default=train_defaults.width)
  p.add_argument("--epochs", type=int, default=train_defaults.epochs)
  p.add_argument("--batch-size", type=int, default=train_defaults.batch_size)
  p.add_argument("--lr", type=float, default=train_defaults.lr)
  p.add_argument("--momentum", type=float, default=train_defaults.momentum)
  p.add_argument("--weight-decay", type=float, default=train_defaults.weight_decay)
  p.add_argument("--warmup-epochs", type=float, default=train_defaults.warmup_epochs)
  p.add_argument("--warmup-start", type=float, default=train_defaults.warmup_start,
                 help="the rate at the warm-up's first step")
  p.add_argument("--milestones", type=_floats, default=train_defaults.milestones,
                 help="comma list of epochs where the rate drops (the official 80,110,135 "
                 "counted after 2 warm-up epochs)")
  p.add_argument("--drop-last", action="store_true",
                 help="drop each epoch's last, partial batch (the official code keeps it)")
  p.add_argument("--seed", type=int, default=train_defaults.seed)
  p.add_argument("--out", default="runs/train", help="output folder (resumes if it holds a run)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(run=_train)
  p = sub.add_parser("ablation", help="ablation experiments")
  ab = p.add_subparsers(dest="experiment", required=True, parser_class=_Parser)
  p = ab.add_parser("lr-sweep", help="methods against learning rates (the paper's Table 2)")
  p.add_argument("--data", default="digits", choices=flat)
  p.add_argument("--data-path", default=None, help="folder of a local CIFAR copy")
  p.add_argument("--methods", type=_names, default=ABLATION_METHODS)
  p.add_argument("--lrs", type=_floats, default=LEARNING_RATES)
  p.add_argument("--epochs", type=int, default=5, help="best accuracy in the first N epochs")
  p.add_argument("--depth", type=int, default=16)
  p.add_argument("--width", type=int, default=256)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="runs/lr_sweep")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(run=_ablation)
  p = sub.add_parser("memory", help="training-step memory of each model, BN against MimicNorm")
  p.add_argument("--models", type=_names, default=tuple(MODELS))
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--width", type=float, default=1.0, help="channel multiplier")
  p.add_argument("--throughput", action="store_true",
                 help="also time the step in steady state (ms/step and images/s)")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(run=_memory)
  p = sub.add_parser("reproduce", help="the paper's Tables 1-2, Figures 6-7 and supplementary "
                     "Figure 3 as resumable grids of runs")
  p.add_argument("experiment", choices=list(EXPERIMENTS))
  p.add_argument("--data-path", default=None, help="a local CIFAR-100 copy (python pickle): the "
                 "paper's settings; without it, a small version on the bundled digits")
  p.add_argument("--data", default=None, choices=list(DATASETS), help="override the data set")
  p.add_argument("--epochs", type=int, default=None, help="override the epochs of every run")
  p.add_argument("--model-width", type=float, default=None, help="override the channel width")
  p.add_argument("--models", type=_names, default=None, help="restrict the grid (comma list)")
  p.add_argument("--norms", type=_names, default=None, help="restrict the grid (comma list)")
  p.add_argument("--lrs", type=_floats, default=None, help="learning rates (comma list)")
  p.add_argument("--seeds", type=int, default=1)
  p.add_argument("--out", default="runs/reproduce")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(run=_reproduce)
  p = sub.add_parser("dynamics", help="training curves of finite networks against the kernels' "
                     "prediction, and learning-rate limits (dynamics.md, dynamics.json)")
  p.add_argument("--depth", type=int, default=10)
  p.add_argument("--activation", default="relu", choices=list(ACTIVATIONS))
  p.add_argument("--norm", type=_names, default=("none", "weight_mean", "batch_norm"),
                 help="comma list of none, weight_mean, batch_norm")
  p.add_argument("--sw2", type=_float_or_none, default=None,
                 help="default: 2, or Theorem 3's stable value with weight_mean")
  p.add_argument("--sb2", type=float, default=0.0)
  p.add_argument("--width", type=int, default=512)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--lr", type=float, default=None, help="learning rate (default: a fraction of "
                 "the predicted limit)")
  p.add_argument("--lr-fraction", type=float, default=0.25, help="of the predicted limit")
  p.add_argument("--train", type=int, default=128, help="training digits")
  p.add_argument("--test", type=int, default=128, help="test digits")
  p.add_argument("--limits", action="store_true",
                 help="also measure the learning-rate limit by bisection")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="runs/dynamics")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(run=_dynamics)
  p = sub.add_parser("kernels", help="NNGP and NTK Gram matrices of an MLP written to disk tile "
                     "by tile (nngp.npy, ntk.npy); resumes in --out; several processes share it")
  p.add_argument("--data", default="digits",
                 help="'digits' (scikit-learn's, standardised) or a .npy of inputs (N, ...)")
  p.add_argument("--n", type=int, default=None, help="the first N inputs only")
  p.add_argument("--depth", type=int, default=10)
  _common(p)
  p.add_argument("--sw2", type=_float_or_none, default=2.0, help="a number or 'stable'")
  p.add_argument("--sb2", type=float, default=0.0)
  p.add_argument("--dtype", default="float64", help="float64 or float32 files")
  p.add_argument("--tile", type=int, default=None, help="tile edge (default 256)")
  p.add_argument("--out", required=True, help="folder for nngp.npy, ntk.npy")
  p.add_argument("--distributed", action="store_true",
                 help="one of several processes (jax.distributed; the cluster found by JAX, "
                 "e.g. under SLURM, or given by the next three options)")
  p.add_argument("--coordinator", default=None, help="host:port of process 0")
  p.add_argument("--num-processes", type=int, default=None)
  p.add_argument("--process-id", type=int, default=None)
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(run=_kernels)
  return parser


def _kernels(args) -> int:
  """`mimictheory kernels`: `mt.kernels(..., out=DIR)` on digits or a .npy."""
  import time
  from pathlib import Path

  from mimictheory._src.checks import check_int
  if args.distributed or args.coordinator is not None:
    from mimictheory._src.distributed import initialize
    initialize(args.coordinator, args.num_processes, args.process_id)
  from mimictheory._src.data import digits, standardise
  from mimictheory._src.io import out_path
  from mimictheory._src.kernels import kernels
  from mimictheory._src.out_of_core import DTYPES
  if args.dtype not in DTYPES:
    raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
  check_int("depth", args.depth)
  if args.tile is not None:
    check_int("tile", args.tile)
  if args.data == "digits":
    x = standardise(digits()[0])
  else:
    path = Path(args.data)
    if path.suffix != ".npy" or not path.is_file():
      raise ValueError(f"--data must be 'digits' or an existing .npy file, got {args.data!r}")
    x = np.load(path, mmap_mode="r")
    if x.ndim < 2:
      raise ValueError(f"--data: the inputs must have shape (N, features...), got {x.shape}")
    x = np.asarray(x, np.float64).reshape(len(x), -1)
  if args.n is not None:
    x = x[:check_int("n", args.n)]
  out = out_path(args.out)
  start = time.perf_counter()
  k = kernels(x, None, args.depth, args.activation, args.sw2, args.sb2, args.norm, args.fan_in,
              block_size=args.tile, progress=not args.quiet, out=out, dtype=args.dtype)
  seconds = time.perf_counter() - start
  import jax
  if jax.process_index() == 0:
    print(f"wrote {out / 'nngp.npy'} and {out / 'ntk.npy'}: {k.nngp.shape[0]} x "
          f"{k.nngp.shape[1]} {args.dtype} each, in {seconds:.1f} s")
  return 0


def _reproduce(args) -> int:
  from mimictheory._src.reproduce import reproduce
  out = reproduce(args.experiment, f"{args.out}/{args.experiment}", args.data_path, args.data,
                  args.epochs, args.model_width, args.models, args.norms, args.lrs, args.seeds,
                  progress=not args.quiet)
  scale = "the paper's settings" if out["full"] else "a small version (no --data-path)"
  print(f"{args.experiment}: {scale}; {out['trained']} run(s) trained; wrote "
        + ", ".join(str(p) for p in out["outputs"]))
  return 0


def main(argv=None) -> int:
  import warnings
  warnings.formatwarning = _one_line_warning
  parser = build_parser()
  argv = _join_signed_values(sys.argv[1:] if argv is None else list(argv))
  try:
    args = parser.parse_args(argv)
    return args.run(args)
  except SystemExit as exc:  # argparse's own --help / errors
    return exc.code if isinstance(exc.code, int) else 0
  except (ValueError, TypeError, OSError) as err:  # bad input: exit 2
    return _fail(f"mimictheory: error: {err}")
  except MemoryError:
    _fail("mimictheory: error: out of host memory; use a smaller grid, batch or model")
    return 1
  except RuntimeError as err:  # XLA failures (out of device memory, ...): exit 1, first line
    from mimictheory._src.crosscheck import ReferenceUnavailable
    if isinstance(err, ReferenceUnavailable):  # a bad --nt-python: a usage error, exit 2
      return _fail(f"mimictheory: error: {err}")
    first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    hint = ("; use a smaller batch, grid or model" if "RESOURCE_EXHAUSTED" in str(err)
            or "out of memory" in str(err).lower() else "")
    _fail(f"mimictheory: error: {first[:300]}{hint}")
    return 1
  except KeyboardInterrupt as err:
    _fail(f"mimictheory: {err or 'interrupted'}")
    return 130


def _one_line_warning(message, category, filename, lineno, line=None):
  return f"mimictheory: warning: {str(message).splitlines()[0]}\n"


if __name__ == "__main__":
  sys.exit(main())
