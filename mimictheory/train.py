"""Training MimicNorm models with Optax and Orbax (public API; see `mimictheory._src.train`)."""
from mimictheory._src.train import (  # noqa: F401
    TrainConfig, TrainResult, digits_split, learning_rate_schedule, synthetic_data, train)

__all__ = ["TrainConfig", "TrainResult", "digits_split", "learning_rate_schedule",
           "synthetic_data", "train"]
