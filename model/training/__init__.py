"""The training loop shared by every pruning method (phases, events, checkpoints)."""

from model.training.trainer import (
    PHASES,
    Callback,
    Cancelled,
    Event,
    PruningHooks,
    TrainConfig,
    Trainer,
    TrainResult,
    epochs_done,
    evaluate,
    layer_sparsity,
)

__all__ = [
    "PHASES",
    "Callback",
    "Cancelled",
    "Event",
    "PruningHooks",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "epochs_done",
    "evaluate",
    "layer_sparsity",
]
