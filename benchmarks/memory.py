"""Compiled training-step memory, BN against MimicNorm, for every model (XLA memory analysis).

Run: `make memory` or `python benchmarks/memory.py [--batch 128] [--width 1.0]` (the same
table as `mimictheory memory`). The paper reports 12-27% less training memory for MimicNorm
(ResNet50 11.7%, ShuffleNetV2 19.8%, SqueezeNet 27.0%; Table 1).
"""
import argparse

from mimictheory._src.memory import compare, format_table
from mimictheory._src.models import MODELS


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--models", default=",".join(MODELS))
  args = parser.parse_args()
  print(f"batch {args.batch}, CIFAR-100, width x{args.width}; arguments + outputs not aliased to "
        "the donated state + temporaries (XLA's memory analysis of the compiled step)")
  print(format_table(compare(args.models.split(","), args.batch, args.width)))


if __name__ == "__main__":
  main()
