"""One training loop for every pruning method: phases, events, checkpoints, cancellation.

A run goes through up to three phases, each a number of epochs of momentum SGD:

``dense``     plain training when the run starts from untrained weights (the baseline);
``prune``     the pruning method's hooks are active (regulariser, thresholds, controller);
``finetune``  the zero pattern is frozen (masked gradients and momentum), lr lowered —
              GSL's recipe (Park et al. 2017, §2.3; docs/research.md §3).

Methods plug in through :class:`PruningHooks`: a regulariser runs between ``backward()`` and
``step()``, thresholds after ``step()``, the controller at the end of each epoch. Every
observable thing is an event (a plain dict) sent to the callbacks: steps, epochs with loss,
accuracy and per-layer sparsity, and method decisions with reasons.

Resuming from a checkpoint gives the same result as an uninterrupted run: the data order of
epoch ``e`` depends only on ``(seed, e)``, and the checkpoint holds the model, optimizer,
method and RNG states. Checkpoints are loaded with ``torch.load(weights_only=True)`` onto the
CPU first, so a run checkpointed on a GPU resumes on a CPU host and the other way round.

The run trains on the config's ``device`` (:func:`model.training.distributed.resolve_device`:
a CUDA GPU when there is one, by default) and hands the model back on the device it came on.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from model.training import distributed

Event = dict[str, Any]
Callback = Callable[[Event], None]
PHASES = ("dense", "prune", "finetune")
BATCH_SIZE_MAX = 65_536  # beyond any data set here; the loader's islice refused > sys.maxsize
FLOAT32_MAX = 3.4028234663852886e38  # lr, weight decay: the optimizer's float32 arithmetic
SEED_MAX = 2**32 - 1  # the epochs' shuffles are seeded with seed · 100003 + phase · 10^6 + epoch


class Cancelled(Exception):  # noqa: N818 - reads as "the run was cancelled"
    """The run was cancelled from outside; resuming continues from the last checkpoint
    (the end of the last completed epoch), so a resumed run equals an uninterrupted one.
    ``rank_left``: not a cancel request but another rank of a data-parallel job stopping
    (its worker shuts down), so the job should run again rather than end."""

    def __init__(self, message: str, rank_left: bool = False):
        super().__init__(message)
        self.rank_left = rank_left


@dataclass
class TrainConfig:
    """Hyperparameters of a run. Defaults are tuned for LeNet-5 on digits on 2 cores."""

    dense_epochs: int = 10  # baseline training when no starting checkpoint is given
    prune_epochs: int = 30  # GSL needs many updates for lasso to drive weights to zero
    finetune_epochs: int = 10
    batch_size: int = 64
    lr: float = 0.02  # the paper's 1e-3 is for ImageNet batches of 256; digits converge faster
    finetune_lr: float = 0.002  # 10x lower, as in SkimCaffe's fine-tuning
    momentum: float = 0.9
    weight_decay: float = 5e-5  # L2 on layers the method does not regularise (paper: 5e-5)
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    log_every: int = 20  # steps between "step" events
    checkpoint_every: int = 1  # epochs between checkpoints (0: never)
    procs: int = 1  # data-parallel processes per host (gloo on CPUs, NCCL on GPUs); same batch
    nodes: int = 1  # hosts the job's processes span (service: workers that join the job)
    device: str = "auto"  # 'auto' (a CUDA GPU per process if there are enough), 'cpu', 'cuda[:N]'

    def __post_init__(self) -> None:
        for name in ("dense_epochs", "prune_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.batch_size <= BATCH_SIZE_MAX:
            raise ValueError(
                f"batch_size must be between 1 and {BATCH_SIZE_MAX}, got {self.batch_size}"
            )
        for name in ("lr", "finetune_lr"):  # 1e308 passed and overflowed in the first step
            if not 0 < getattr(self, name) <= FLOAT32_MAX:
                raise ValueError(f"{name} must be > 0 and at most {FLOAT32_MAX:.4g} (float32), "
                                 f"got {getattr(self, name)}")  # fmt: skip
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay <= FLOAT32_MAX:  # NaN too: torch's SGD takes it
            raise ValueError(f"weight_decay must be >= 0 and at most {FLOAT32_MAX:.4g} "
                             f"(float32), got {self.weight_decay}")  # fmt: skip
        if not 0 <= self.seed <= SEED_MAX:  # NumPy's split refuses < 0, torch > 2^64 - 1
            raise ValueError(f"seed must be between 0 and {SEED_MAX}, got {self.seed}")
        for name in ("log_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: never), got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not 1 <= self.procs <= 64:
            raise ValueError(f"procs must be between 1 and 64, got {self.procs}")
        if not 1 <= self.nodes <= 64:
            raise ValueError(f"nodes must be between 1 and 64, got {self.nodes}")
        distributed.check_device_spec(self.device)

    def phase_epochs(self, warm_start: bool = False) -> dict[str, int]:
        """Epochs each phase runs at most, in order (no dense phase when the run starts from
        a trained checkpoint)."""
        dense = 0 if warm_start else self.dense_epochs
        return {"dense": dense, "prune": self.prune_epochs, "finetune": self.finetune_epochs}


class PruningHooks(Protocol):
    """What a pruning method provides to the training loop (all hooks may do nothing)."""

    def start(self, model: nn.Module, emit: Callback) -> None:
        """Beginning of the prune phase: decide what to prune (emit decisions)."""

    def tracked_parameters(self) -> set[str]:
        """Names of the parameters whose per-step update ``after_step`` needs."""

    def regularize(self, model: nn.Module) -> None:
        """After ``backward()``, before ``step()``: add the regulariser's gradient."""

    def after_step(self, model: nn.Module, updates: dict[str, torch.Tensor]) -> None:
        """After ``step()``; ``updates`` maps parameter names to the update just applied."""

    def end_epoch(self, model: nn.Module, epoch: int, emit: Callback) -> bool:
        """End of a prune epoch: controller checks; return True when pruning has converged."""

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Parameter name → 0/1 mask frozen during fine-tuning."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # Optional hooks, looked up with getattr (a method without them works unchanged):
    #
    # attach(model, optimizer, phase) -> None
    #     called whenever the trainer builds an optimizer (start, each phase, resume), after
    #     ``start``/``load_state_dict``: a method may add parameter groups of its own (AutoPrune's
    #     mask parameters) or keep a handle on momentum buffers (to hold masked weights).
    # sparsity(model) -> dict[str, float]
    #     per-layer sparsity reported in prune-phase epoch events, for methods whose zeros are
    #     not (yet) in the weights (AutoPrune's masks multiply them in the forward pass).
    # end_prune(model, epoch, emit) -> None
    #     the prune phase is over (epochs ran out or it converged), before the fine-tuning
    #     masks are taken: settle what is still being pruned (GSL's layers short of their
    #     budget). Called again on a resume at fine-tuning epoch 0, so it must be idempotent.


def epochs_done(event: Event, phase_epochs: dict[str, int]) -> int:
    """Epochs finished, over all phases, when an ``epoch`` event is sent: from the event's
    own phase and epoch, so a run resumed from a checkpoint counts from where it stopped (not
    from 0), a repeated event changes nothing and a prune phase that converged early counts
    as whole."""
    phases = list(phase_epochs)
    if event.get("phase") not in phases:
        return 0
    index = phases.index(event["phase"])
    before = sum(phase_epochs[phase] for phase in phases[:index])
    return before + min(int(event.get("epoch") or 0), phase_epochs[event["phase"]])


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`."""

    dense_accuracy: float | None
    final_accuracy: float
    events: list[Event] = field(default_factory=list)
    seconds: float = 0.0


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``dataset``, in eval mode, on the
    model's device."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    total = 0
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for inputs, targets in DataLoader(dataset, batch_size=batch_size):
            inputs, targets = inputs.to(device), targets.to(device)
            logits = model(inputs)
            loss += F.cross_entropy(logits, targets, reduction="sum")
            correct += (logits.argmax(1) == targets).sum()
            total += len(targets)
    model.train(was_training)
    return loss.item() / max(total, 1), correct.item() / max(total, 1)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights of every Conv2d and Linear, by module path."""
    return {
        name: (module.weight == 0).float().mean().item()
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    }


class Trainer:
    """Runs the dense → prune → finetune phases of one job.

    Args:
        model: trained in place.
        train, test: data sets of ``(input, label)`` pairs.
        config: hyperparameters.
        hooks: the pruning method (``None``: dense training only).
        callbacks: receive every event.
        checkpoint_path: where checkpoints go; resumed from if it exists and ``resume``.
        cancel: set it from another thread to stop after the current step.
    """

    def __init__(
        self,
        model: nn.Module,
        train: Dataset,
        test: Dataset,
        config: TrainConfig,
        hooks: PruningHooks | None = None,
        callbacks: Iterable[Callback] = (),
        checkpoint_path: Path | None = None,
        cancel: threading.Event | None = None,
    ):
        self.model = model
        self.train_set, self.test_set = train, test
        self.config = config
        self.hooks = hooks
        self.callbacks = list(callbacks)
        self.checkpoint_path = checkpoint_path
        self.cancel = cancel or threading.Event()
        self.events: list[Event] = []
        self.step = 0
        self.phase = "dense"
        self.epoch = 0  # epochs completed in the current phase
        self.dense_accuracy: float | None = None
        self.masks: dict[str, torch.Tensor] = {}
        self.resumed_finished = False  # resumed a run that had ended: nothing trained again
        self.trained_on: list[str] = []  # where the run trained, over its resumes
        self.rank, self.world = distributed.rank_and_world()
        # data-parallel ranks train where their process group runs (one device kind per job)
        self.device = (distributed.group_device() if self.world > 1
                       else distributed.resolve_device(config.device))  # fmt: skip
        self._home = model_device(model)  # where fit() hands the model back
        self.model.to(self.device)
        if self.device.type == "cuda":  # a resumed run equals an uninterrupted one there too
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        self.optimizer = self._optimizer(config.lr)
        self._start = time.perf_counter()

    # ------------------------------------------------------------------ events and state

    def emit(self, event: Event) -> None:
        if self.rank != 0:  # events come from rank 0 only
            return
        event = {"time": round(time.perf_counter() - self._start, 4), **event}
        event.setdefault("step", self.step)
        self.events.append(event)
        for callback in self.callbacks:
            callback(event)

    def _optimizer(self, lr: float) -> torch.optim.SGD:
        optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )
        attach = getattr(self.hooks, "attach", None)
        if attach is not None:
            attach(self.model, optimizer, self.phase)
        return optimizer

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "hooks": self.hooks.state_dict() if self.hooks else {},
            "masks": self.masks,
            "phase": self.phase,
            "epoch": self.epoch,
            "step": self.step,
            "dense_accuracy": self.dense_accuracy,
            "events": self.events,
            "trained_on": self.trained_on,
            "rng": torch.get_rng_state(),
            "cuda_rng": (torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
                         else None),  # dropout on a GPU draws from the GPU's generator
            "config": asdict(self.config),
        }

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is None or self.rank != 0:  # one writer
            return
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(self.checkpoint_path)  # atomic: a crash never leaves half a checkpoint

    def load_checkpoint(self, path: Path) -> None:
        self.load_state(torch.load(path, map_location="cpu", weights_only=True))

    def load_state(self, state: dict[str, Any]) -> None:
        """Resume from ``state`` (a checkpoint loaded onto the CPU, or this run's own)."""
        rng, cuda_rng = state["rng"].cpu(), state.get("cuda_rng")
        state = distributed.to_device(state, self.device)
        self.model.load_state_dict(state["model"])
        self.phase, self.epoch, self.step = state["phase"], state["epoch"], state["step"]
        self.dense_accuracy = state["dense_accuracy"]
        self.masks = state["masks"]
        if self.hooks:  # before the optimizer: a method may own parameters of its own
            self.hooks.load_state_dict(state["hooks"])
        lr = self.config.finetune_lr if self.phase == "finetune" else self.config.lr
        self.optimizer = self._optimizer(lr)
        self.optimizer.load_state_dict(state["optimizer"])
        self.events = list(state["events"])
        self.trained_on = list(state.get("trained_on", []))  # older checkpoints: unknown
        torch.set_rng_state(rng)
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng.cpu(), self.device)
        self.resumed_finished = (self.phase == "finetune"
                                 and self.epoch >= self.config.finetune_epochs)  # fmt: skip
        # A prune phase that converged early is checkpointed at its last epoch number (the loop
        # jumps there): "resumed at prune epoch 10" read as ten epochs after converging at 7.
        phase_ended = self.epoch >= getattr(self.config, f"{self.phase}_epochs")
        self.emit({"type": "log", "message": (
            f"resumed at {self.phase} epoch {self.epoch}: the run had finished, nothing is "
            "trained again (its results are written again)" if self.resumed_finished
            else f"resumed at the end of the {self.phase} phase" if phase_ended
            else f"resumed at {self.phase} epoch {self.epoch}"
        )})  # fmt: skip

    # ----------------------------------------------------------------------------- loop

    def _loader(self, epoch_key: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch_key)
        return DataLoader(
            self.train_set, batch_size=self.config.batch_size, shuffle=True,
            generator=generator, drop_last=False, pin_memory=self.device.type == "cuda",
        )  # fmt: skip

    def _params(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    def _apply_masks(self) -> None:
        params = self._params()
        with torch.no_grad():
            for name, mask in self.masks.items():
                params[name].mul_(mask)

    def _mask_gradients(self) -> None:
        params = self._params()
        for name, mask in self.masks.items():
            grad = params[name].grad
            if grad is not None:
                grad.mul_(mask)

    def _mask_momentum(self) -> None:
        params = self._params()
        for name, mask in self.masks.items():
            buffer = self.optimizer.state.get(params[name], {}).get("momentum_buffer")
            if buffer is not None:
                buffer.mul_(mask)

    def train_epoch(self, phase: str = "dense") -> tuple[float, float]:
        """One epoch of ``phase``: (train loss, train accuracy). No events, checkpoints or
        phase changes (:meth:`fit` adds those; ``sweetspot bench train`` times this alone)."""
        self.model.train()
        epoch_key = PHASES.index(phase) * 1_000_000 + self.epoch
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        tracked = self.hooks.tracked_parameters() if phase == "prune" and self.hooks else set()
        for inputs, targets in self._loader(epoch_key):
            stop = distributed.stop_code(self.cancel.is_set(), self.rank, self.world)
            if stop == distributed.RANK_LEAVING:
                self.emit({"type": "log", "message": "a data-parallel rank is leaving; stopped"})
                raise Cancelled(f"a rank left during {phase} epoch {self.epoch + 1}",
                                rank_left=True)  # fmt: skip
            if stop:
                self.emit({"type": "log", "message": "cancelled"})
                raise Cancelled(f"cancelled during {phase} epoch {self.epoch + 1}")
            global_n = len(targets)
            if self.world > 1:  # this rank's share of the global batch
                inputs = inputs.tensor_split(self.world)[self.rank]
                targets = targets.tensor_split(self.world)[self.rank]
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(inputs)
            loss = F.cross_entropy(logits, targets) if len(targets) else logits.sum() * 0.0
            loss_value = loss.item()  # the one wait for the device per step
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss became {loss_value} at step {self.step} ({phase}); lower the lr"
                )
            loss.backward()
            if self.world > 1:
                distributed.average_gradients(self.model, len(targets), global_n)
            if phase == "prune" and self.hooks is not None:
                self.hooks.regularize(self.model)
            if phase == "finetune":
                self._mask_gradients()
                self._mask_momentum()
            params = self._params()
            before = {n: params[n].detach().clone() for n in tracked}
            self.optimizer.step()
            if phase == "prune" and self.hooks is not None:
                updates = {n: params[n].detach() - before[n] for n in tracked}
                self.hooks.after_step(self.model, updates)
            if phase == "finetune":
                self._apply_masks()
                self._mask_momentum()
            self.step += 1
            total_loss += loss.detach().double() * len(targets)
            correct += (logits.argmax(1) == targets).sum()
            seen += len(targets)
            if self.config.log_every and self.step % self.config.log_every == 0:
                self.emit({"type": "step", "phase": phase, "epoch": self.epoch + 1,
                           "loss": loss_value})  # fmt: skip
        totals = [total_loss.item(), correct.item(), seen]
        if self.world > 1:
            totals = distributed.sum_over_ranks(totals)
        return totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)

    def _sparsity(self, phase: str) -> dict[str, float]:
        sparsity = layer_sparsity(self.model)
        reported = getattr(self.hooks, "sparsity", None)
        if phase == "prune" and reported is not None:
            sparsity.update(reported(self.model))
        return sparsity

    def _epoch_event(self, phase: str, train_loss: float, train_accuracy: float) -> float:
        test_loss, test_accuracy = evaluate(self.model, self.test_set)
        self.emit({
            "type": "epoch", "phase": phase, "epoch": self.epoch, "loss": train_loss,
            "train_accuracy": train_accuracy, "test_loss": test_loss,
            "test_accuracy": test_accuracy, "sparsity": self._sparsity(phase),
        })  # fmt: skip
        return test_accuracy

    def fit(self, resume: bool = True) -> TrainResult:
        """Run (or resume) all phases; raises :class:`Cancelled` if cancelled. The model is
        handed back on the device it was given on, also when the run stops early."""
        try:
            return self._fit(resume)
        finally:
            self.model.to(self._home)

    def _fit(self, resume: bool) -> TrainResult:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        state = None
        if resume and self.rank == 0 and self.checkpoint_path and self.checkpoint_path.exists():
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if self.world > 1:  # rank 0's resume point: other hosts need not see its files
            state = distributed.broadcast_object(state)
        if state is not None:
            self.load_state(state)
        else:
            torch.manual_seed(self.config.seed)
        if not self.resumed_finished:
            where = distributed.describe_device(self.device)
            if self.world > 1:
                where = f"{self.world} processes, rank 0 on {where}"
            self.emit({"type": "log", "message": f"training on {where}"})
            if self.trained_on[-1:] != [where]:
                self.trained_on.append(where)
        epochs = {
            "dense": self.config.dense_epochs,
            "prune": self.config.prune_epochs if self.hooks else 0,
            "finetune": self.config.finetune_epochs if self.hooks else 0,
        }
        accuracy = None
        for phase in PHASES[PHASES.index(self.phase) :]:
            if phase != self.phase:  # entering a new phase
                self.phase, self.epoch = phase, 0
                self._enter(phase)
            elif self.epoch == 0:
                self._enter(phase)
            while self.epoch < epochs[phase]:
                loss, train_accuracy = self.train_epoch(phase)
                self.epoch += 1
                if self.rank == 0:
                    accuracy = self._epoch_event(phase, loss, train_accuracy)
                converged = False
                if phase == "prune" and self.hooks is not None:
                    converged = self.hooks.end_epoch(self.model, self.epoch, self.emit)
                    converged = self._share_decisions(converged)
                if converged:
                    self.emit({"type": "log", "message": f"pruning converged at {self.epoch}"})
                    self.epoch = epochs[phase]
                if self.config.checkpoint_every and self.epoch % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
            if phase == "dense" and self.rank == 0:
                self.dense_accuracy = evaluate(self.model, self.test_set)[1]
        if accuracy is None and self.rank == 0:
            accuracy = evaluate(self.model, self.test_set)[1]
        self.phase, self.epoch = "finetune", epochs["finetune"]
        self.save_checkpoint()
        return TrainResult(self.dense_accuracy, accuracy, self.events,
                           time.perf_counter() - self._start)  # fmt: skip

    def _share_decisions(self, converged: bool) -> bool:
        """Data-parallel runs: rank 0's pruning state (masks, controller decisions, weights)
        is broadcast so every rank continues from exactly the same decisions."""
        if self.world == 1:
            return converged
        state = {"hooks": self.hooks.state_dict() if self.hooks else {}, "converged": converged}
        state = distributed.broadcast_object(distributed.to_device(state, "cpu"))
        if self.rank != 0 and self.hooks is not None:
            self.hooks.load_state_dict(distributed.to_device(state["hooks"], self.device))
        distributed.broadcast_module(self.model)
        return bool(state["converged"])

    def _enter(self, phase: str) -> None:
        self.emit({"type": "phase", "phase": phase, "epoch": 0})
        if phase == "prune" and self.hooks is not None:
            if self.dense_accuracy is None and self.rank == 0:
                self.dense_accuracy = evaluate(self.model, self.test_set)[1]
            self.hooks.start(self.model, self.emit)
            self._share_decisions(False)
            self.optimizer = self._optimizer(self.config.lr)
        elif phase == "finetune" and self.hooks is not None:
            end_prune = getattr(self.hooks, "end_prune", None)
            if end_prune is not None:
                end_prune(self.model, self.config.prune_epochs, self.emit)
                self._share_decisions(False)
            self.masks = {k: v.detach().clone() for k, v in self.hooks.masks(self.model).items()}
            self._apply_masks()
            self.optimizer = self._optimizer(self.config.finetune_lr)
            frozen = sum(int((m == 0).sum()) for m in self.masks.values())
            self.emit({"type": "log", "message": f"fine-tuning with {frozen} weights frozen at 0"})
