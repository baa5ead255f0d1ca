"""Training DEQ classifiers: a loop with progress bars, per-epoch metrics, checkpoints and exact resume.

``python -m deqkit.train mnist --model seed|seed-linear|wide|conv ...`` runs it from the shell (also under
``torchrun``, with DistributedDataParallel; ``--tensorboard`` logs to TensorBoard); :func:`train_mnist` and
:func:`train` are the same from Python: a :class:`TrainConfig` holds what determines a run's numbers, a
:class:`RunOptions` how it is run (run folder, new/resume/overwrite, device, checkpoints, progress, TensorBoard).
"""

from .callbacks import StepLog, TensorBoardLog
from .checkpoint import CheckpointError, RunFolderError, load_checkpoint, save_checkpoint
from .config import RunOptions, TrainConfig
from .distributed import DistContext, launched_by_torchrun, resolve_device
from .loop import METRIC_FIELDS, TrainResult, evaluate, load_model, train, train_mnist

__all__ = [
    "METRIC_FIELDS",
    "CheckpointError",
    "DistContext",
    "RunFolderError",
    "RunOptions",
    "StepLog",
    "TensorBoardLog",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "launched_by_torchrun",
    "load_checkpoint",
    "load_model",
    "resolve_device",
    "save_checkpoint",
    "train",
    "train_mnist",
]
