"""Training MimicNorm models with Optax and Orbax (public API; see `mimictheory._src.train`)."""
from mimictheory._src.data import augment, digits_split, load_data, synthetic_data  # noqa: F401
from mimictheory._src.train import (  # noqa: F401
    TrainConfig, TrainResult, TrainingInterrupted, data_mesh, epoch_batches, evaluate,
    learning_rate_schedule, optimizer, train, train_step)

__all__ = ["TrainConfig", "TrainResult", "TrainingInterrupted", "augment", "data_mesh",
           "digits_split", "epoch_batches", "evaluate", "learning_rate_schedule", "load_data",
           "optimizer", "synthetic_data", "train", "train_step"]
