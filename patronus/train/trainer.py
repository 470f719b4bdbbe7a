"""The training loop: AdamW, AMP, optional EMA, gradient clipping, DDP, checkpoints and resume.

Randomness is derived from (seed, step, rank): the data order of every epoch, the timesteps and
noise of every step and the dropout masks. A resumed run therefore draws exactly what the
uninterrupted run would have, and continues bit-exactly from the optimizer, scaler and EMA state
stored in the checkpoint. The global RNG state of the caller is restored when ``fit`` returns.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from patronus.checkpoint import (
    EMA_FILE,
    LATEST_FILE,
    MODEL_FILE,
    TRAIN_STATE_JSON,
    TRAIN_STATE_TENSORS,
    CheckpointError,
    checkpoint_step,
    load_tensors,
    read_config,
    recover_interrupted_writes,
    resolve_checkpoint,
    save_model,
    save_tensors,
    write_atomically,
)
from patronus.data.size import dataset_size
from patronus.diffusion.loss import sample_timesteps
from patronus.models import Patronus, PatronusConfig
from patronus.nn.prototype_layer import prototype_distinct_loss
from patronus.train.activation_decorrelation import activation_decorrelation_loss
from patronus.train.config import TrainConfig
from patronus.train.dataset_check import check_training_dataset
from patronus.train.distributed import setup_distributed
from patronus.train.divergence import check_weights, non_finite_parameters
from patronus.train.edit_consistency import edit_consistency_loss
from patronus.train.ema import EMA
from patronus.train.metrics import MetricsLog, plot_loss_curve
from patronus.train.run_folder import RunLock, holds_a_run
from patronus.train.state import flatten_optimizer, unflatten_optimizer
from patronus.utils.cpu_features import fast_cpu_bf16
from patronus.utils.images import save_grid

LOSS_CURVE_FILE = "loss_curve.png"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by a signal (SIGINT or SIGTERM) after saving a checkpoint."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


@contextmanager
def _deferred_interrupts() -> Iterator[list[int]]:
    """Within the block, SIGINT (Ctrl-C) and SIGTERM are recorded in the list it yields, for the
    training loop to stop at the end of the step it is in: an interrupt raised in the middle of a
    step would leave the weights, optimizer and EMA of different steps. A second signal
    interrupts at once. Main thread only (elsewhere nothing is installed); restored after."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def defer(number, frame):
        if received:
            raise TrainingInterrupted(number)
        received.append(number)

    previous = {number: signal.signal(number, defer) for number in STOP_SIGNALS}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """A DataLoader worker's init: ignore Ctrl-C and SIGTERM, which reach the whole process
    group, so that the workers keep serving the step under way; the training process stops
    after it and shuts them down. (Workers that inherit nothing, as under the spawn and
    forkserver start methods, died of the signal first, and the step waiting for their batch
    failed with "DataLoader worker exited unexpectedly", saving nothing.) The workers start with
    the signals blocked (:func:`_workers_started`): once ignored, they are unblocked, and one
    that arrived while the worker was starting is dropped."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _workers_started(loader: DataLoader) -> Iterator:
    """``iter(loader)`` with the stop signals blocked while it starts the workers, which inherit
    the mask and keep it until their init ignores the signals: a worker importing torch when
    Ctrl-C comes would die of it. The training process receives a signal that came meanwhile
    when its mask is restored here (the mask is the calling thread's, whichever it is)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Objective(nn.Module):
    """What DDP wraps: (x0, t, noise) -> (total loss, its terms by name: "mse", "distinct" and,
    when their weights are on, "consistency" and "decorrelation")."""

    def __init__(self, model: Patronus, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        config = self.config
        forward = self.model.training_forward(x0, t, noise)
        loss = forward.mse
        terms = {"mse": forward.mse, "distinct": torch.zeros_like(forward.mse)}
        if config.distinct_loss_weight:
            terms["distinct"] = prototype_distinct_loss(
                self.model.prototype_layer.prototypes, config.distinct_margin
            )
            loss = loss + config.distinct_loss_weight * terms["distinct"]
        if config.edit_consistency_weight:
            terms["consistency"] = edit_consistency_loss(
                self.model, t, forward, config.edit_consistency_max_timestep
            )
            loss = loss + config.edit_consistency_weight * terms["consistency"]
        if config.activation_decorrelation_weight:
            terms["decorrelation"] = activation_decorrelation_loss(forward.activations)
            loss = loss + config.activation_decorrelation_weight * terms["decorrelation"]
        return loss, terms


class _StepBatches(Sampler[list[int]]):
    """Index batches for steps [start, stop) of this process: epoch-wise permutations of a
    seeded generator, the global batch split evenly across processes, incomplete batches dropped."""

    def __init__(
        self, size: int, batch: int, rank: int, world: int, seed: int, start: int, stop: int
    ):
        self.size, self.batch, self.rank, self.world = size, batch, rank, world
        self.seed, self.start, self.stop = seed, start, stop
        self.steps_per_epoch = size // batch

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        local = self.batch // self.world
        epoch, permutation = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start, self.stop):
            step_epoch, position = divmod(step, self.steps_per_epoch)
            if step_epoch != epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step_epoch)
                permutation = torch.randperm(self.size, generator=generator)
                epoch = step_epoch
            first = position * self.batch + self.rank * local
            yield permutation[first : first + local].tolist()


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """ "auto": bf16 on CUDA and on CPUs with bf16 in hardware (``fast_cpu_bf16``), else none."""
    if mode == "auto":
        fast = device.type == "cuda" or (device.type == "cpu" and fast_cpu_bf16())
        return torch.bfloat16 if fast else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]


class Trainer:
    """Trains a :class:`~patronus.Patronus` on a dataset of ``(image, label)`` items.

    Args:
        model: the model (moved to the training device).
        dataset: images in [-1, 1] of the model's shape.
        config: :class:`TrainConfig`.
        run_dir: where checkpoints, metrics, samples and the loss curve go.
        device: default CUDA (``cuda:LOCAL_RANK`` under torchrun) when available, else CPU.
        metadata: extra JSON data stored in every checkpoint's config (e.g. the dataset spec).

    Under ``torchrun`` with more than one process it trains with DDP (gloo on CPU, nccl on CUDA);
    process 0 writes all files.
    """

    def __init__(
        self,
        model: Patronus,
        dataset: Dataset,
        config: TrainConfig,
        run_dir: str | Path,
        device: str | torch.device | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.dist = setup_distributed(device)
        self.device = self.dist.device
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} must divide by {self.dist.world_size} processes"
            )
        if config.activation_decorrelation_weight and config.batch_size < 2 * self.dist.world_size:
            raise ValueError(
                "activation decorrelation needs at least 2 images per process, got batch_size "
                f"{config.batch_size} over {self.dist.world_size} processes"
            )
        size = dataset_size(dataset)
        if size < config.batch_size:
            raise ValueError(
                f"the dataset has {size} images, less than a batch of {config.batch_size}"
            )
        check_training_dataset(dataset, model.config.image_shape)
        self.model = model.to(self.device)
        self.dataset = dataset
        self.config = config
        self.run_dir = Path(run_dir)
        self.metadata = metadata or {}
        if config.freeze_prototypes:  # before DDP, which registers what needs gradients
            for parameter in (*model.encoder.parameters(), *model.prototype_layer.parameters()):
                parameter.requires_grad_(False)
        objective = _Objective(model, config)
        self.objective = DistributedDataParallel(objective) if self.dist.enabled else objective
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        self.amp_dtype = _amp_dtype(config.amp, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.ema = EMA(model, config.ema_decay) if config.ema_decay else None
        self.noise_generator = torch.Generator(self.device)
        self.metrics = MetricsLog(self.run_dir)
        self.step = 0
        self._resumed = False

    # ------------------------------------------------------------------------------ one step
    def _seed(self, stream: int, rank: int = 0) -> int:
        """Seed of a stream of this step: 0 dropout (per process), 1 timesteps and noise."""
        mixed = (self.config.seed * 1_000_003 + self.step) * 1024 + rank * 2 + stream
        return mixed % 2**62

    def _lr(self) -> float:
        warmup = self.config.warmup_steps
        scale = min(1.0, (self.step + 1) / warmup) if warmup else 1.0
        return self.config.learning_rate * scale

    def _train_step(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        torch.manual_seed(self._seed(0, self.dist.rank))  # dropout masks
        # timesteps and noise are drawn for the global batch and sliced, so that a DDP run
        # computes what one process with the whole batch would
        self.noise_generator.manual_seed(self._seed(1))
        local, world = x0.shape[0], self.dist.world_size
        t = sample_timesteps(
            local * world,
            self.model.config.diffusion.timesteps,
            self.device,
            self.noise_generator,
            self.config.timestep_bias,
        )
        noise = torch.randn(
            (local * world, *x0.shape[1:]), generator=self.noise_generator, device=self.device
        )
        mine = slice(self.dist.rank * local, (self.dist.rank + 1) * local)
        t, noise = t[mine], noise[mine]
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            loss, terms = self.objective(x0, t, noise)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        parameters = list(self.model.parameters())
        grad_norm = nn.utils.clip_grad_norm_(
            parameters, self.config.grad_clip if self.config.grad_clip else float("inf")
        )
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        terms = {name: value.detach() for name, value in terms.items()}
        values = {
            "loss": loss.detach(),
            "mse": terms.pop("mse"),
            "distinct": terms.pop("distinct"),
            "grad_norm": grad_norm,
            **terms,
        }
        return values

    # ------------------------------------------------------------------------------ the loop
    def fit(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Train until ``config.max_steps``; returns a summary. Ctrl-C or SIGTERM let the step
        under way finish and save a checkpoint, then raise :class:`TrainingInterrupted` (a
        ``KeyboardInterrupt``); a second signal raises at once, saving nothing.

        The run folder is locked while training (a second training of it fails at once), and a
        folder that already holds a run must be resumed (:meth:`resume`) rather than trained anew.
        ``on_step(step, row)`` is called after every logged step with the metrics row.
        """
        with ExitStack() as stack:
            if self.dist.is_main:
                stack.enter_context(RunLock(self.run_dir))
                if not self._resumed and holds_a_run(self.run_dir):
                    raise ValueError(
                        f"{self.run_dir} already holds a run: resume it (Trainer.resume, "
                        "`patronus train --resume`) or clear it first (`--overwrite`)"
                    )
                recover_interrupted_writes(self.checkpoints_dir)
            stop = stack.enter_context(_deferred_interrupts())
            return self._fit(on_step, stop)

    def _fit(
        self, on_step: Callable[[int, dict[str, float]], None] | None, stop: list[int]
    ) -> dict[str, Any]:
        config = self.config
        self.model.train()  # a loaded model comes in eval mode; dropout and condition dropout on
        sampler = _StepBatches(
            dataset_size(self.dataset),
            config.batch_size,
            self.dist.rank,
            self.dist.world_size,
            config.seed,
            self.step,
            config.max_steps,
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_leave_stop_signals_to_the_trainer if config.num_workers else None,
        )
        rng_devices = [self.device] if self.device.type == "cuda" else []
        bar = tqdm(
            total=config.max_steps,
            initial=self.step,
            desc="training",
            disable=not (config.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        window_start, window_images = started, 0
        sums: dict[str, torch.Tensor] = {}
        saved_step, mid_step = -1, False
        try:
            with torch.random.fork_rng(devices=rng_devices):
                for batch in _workers_started(loader):
                    x0 = batch[0].to(self.device, non_blocking=True)
                    mid_step = True
                    values = self._train_step(x0)
                    self.step += 1
                    mid_step = False
                    window_images += x0.shape[0] * self.dist.world_size
                    for key, value in values.items():
                        sums[key] = sums.get(key, 0) + value.float()
                    bar.update(1)
                    logs = self.step % config.log_every == 0 or self.step == config.max_steps
                    saves = self.step % config.checkpoint_every == 0
                    samples = bool(config.sample_every) and self.step % config.sample_every == 0
                    if logs or saves or samples:
                        check_weights(
                            self.model, self.step, self._latest_checkpoint, config.learning_rate
                        )
                    if logs:
                        now = time.perf_counter()
                        steps = self.step % config.log_every or config.log_every
                        row = {"step": self.step, "epoch": self.step / sampler.steps_per_epoch}
                        row.update({key: float(total) / steps for key, total in sums.items()})
                        row["lr"] = self._lr()
                        row["images_per_s"] = window_images / max(now - window_start, 1e-9)
                        row["elapsed_s"] = now - started
                        sums, window_start, window_images = {}, now, 0
                        if self.dist.is_main:
                            self.metrics.append(row)
                        bar.set_postfix(loss=f"{row['loss']:.4f}")
                        if on_step is not None:
                            on_step(self.step, row)
                    if saves:
                        self.save_checkpoint()
                        saved_step = self.step
                    if samples:
                        self.write_samples()
                    # under DDP the processes agree on a stop where they synchronise anyway
                    if logs or saves or samples or not self.dist.enabled:
                        stop_signal = self.dist.agreed_signal(stop)
                        if stop_signal:
                            raise TrainingInterrupted(stop_signal)
        except KeyboardInterrupt as interrupt:
            diverged = bool(non_finite_parameters(self.model))  # nothing of it is saved
            if mid_step:  # a second signal, or an interrupt from outside the handlers
                print(
                    f"\ninterrupted in the middle of step {self.step + 1}: nothing saved "
                    f"(the last checkpoint: {self._latest_checkpoint() or 'none'})",
                    file=sys.stderr,
                )
            elif self.dist.is_main and self.step > 0 and saved_step != self.step and not diverged:
                path = self.save_checkpoint()
                print(f"\ninterrupted at step {self.step}; checkpoint saved to {path}")
            if isinstance(interrupt, TrainingInterrupted):
                raise
            raise TrainingInterrupted(signal.SIGINT) from None
        finally:
            bar.close()
        if saved_step != self.step:
            self.save_checkpoint()
        self.write_samples()
        self.dist.close()
        rows = self.metrics.rows() if self.dist.is_main else []
        return {
            "step": self.step,
            "final_loss": rows[-1]["loss"] if rows else None,
            "wall_s": time.perf_counter() - started,
            "run_dir": str(self.run_dir),
        }

    # ----------------------------------------------------------------------- files and state
    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step_XXXXXXX`` (process 0), update ``latest``, prune old ones."""
        folder = self.checkpoints_dir / f"step_{self.step:07d}"
        if self.dist.is_main:
            tensors, plain = flatten_optimizer(self.optimizer.state_dict())
            plain["scaler"] = self.scaler.state_dict()
            metadata = {"step": self.step, "train": self.config.to_dict(), **self.metadata}
            save_model(
                self.model,
                folder,
                metadata,
                ema_state=self.ema.full_state(self.model) if self.ema else None,
                extra_files={
                    TRAIN_STATE_TENSORS: lambda path: save_tensors(tensors, path),
                    TRAIN_STATE_JSON: lambda path: path.write_text(json.dumps(plain)),
                },
            )
            write_atomically(
                self.checkpoints_dir / LATEST_FILE, lambda path: path.write_text(folder.name)
            )
            self._prune_checkpoints()
            plot_loss_curve(self.metrics.rows(), self.run_dir / LOSS_CURVE_FILE)
        self.dist.barrier()
        return folder if self.dist.is_main else None

    def _latest_checkpoint(self) -> Path | None:
        """The checkpoint ``latest`` names, if any (a resumed run's included)."""
        latest = self.checkpoints_dir / LATEST_FILE
        return self.checkpoints_dir / latest.read_text().strip() if latest.is_file() else None

    def _prune_checkpoints(self) -> None:
        """Keep the newest ``keep_checkpoints`` by step number (the one just written among them)."""
        numbered = [
            (step, p)
            for p in self.checkpoints_dir.glob("step_*")
            if (step := checkpoint_step(p.name)) is not None
        ]
        for _, old in sorted(numbered)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old)

    def resume(self, checkpoint: str | Path | None = None) -> int:
        """Load model, optimizer, scaler, EMA and step from a checkpoint (default: the run's
        latest); returns the step. Metrics logged after that step are dropped."""
        folder = resolve_checkpoint(checkpoint or self.run_dir)
        data = read_config(folder)
        if PatronusConfig.from_dict(data["model"]) != self.model.config:
            raise CheckpointError(f"{folder} holds a different model configuration")
        state = load_tensors(folder / MODEL_FILE)
        self.model.load_state_dict(state)
        plain_path = folder / TRAIN_STATE_JSON
        if not plain_path.is_file():
            raise CheckpointError(
                f"{folder} has no training state ({TRAIN_STATE_JSON}); cannot resume"
            )
        plain = json.loads(plain_path.read_text())
        tensors = load_tensors(folder / TRAIN_STATE_TENSORS)
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, plain))
        self.scaler.load_state_dict(plain["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(load_tensors(folder / EMA_FILE))
        self.step = int(data["step"])
        self._resumed = True
        if self.dist.is_main:
            self.metrics.truncate_after(self.step)
        self.dist.barrier()
        return self.step

    @torch.no_grad()
    def write_samples(self) -> Path | None:
        """Conditional samples for the first images of the dataset: originals above samples."""
        if not self.dist.is_main:
            return None
        count = min(self.config.num_sample_images, dataset_size(self.dataset))
        originals = torch.stack([self.dataset[i][0] for i in range(count)]).to(self.device)
        model = self.model
        if self.ema is not None:
            model = copy.deepcopy(self.model)
            model.load_state_dict(self.ema.full_state(self.model))
        generator = torch.Generator(self.device).manual_seed(self.config.seed)
        s = model.encode(originals)
        samples = model.sample(s, steps=self.config.sample_steps, generator=generator, clip_x0=True)
        path = self.run_dir / "samples" / f"step_{self.step:07d}.png"
        return save_grid(torch.cat([originals, samples]), path, nrow=count)
