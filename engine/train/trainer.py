"""The training recipe: setup → train (steps, evals, checkpoints) → save adapter → cleanup.

A run is a pure function of its config: the split, the batch order, the LoRA init and every
perturbation derive from `seed`, so a checkpoint of (θ, optimiser state, step) resumes to the
exact loss sequence of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.api import config as config_io
from engine.api.checkpoints import CHECKPOINTS
from engine.api.config import TrainConfig
from engine.api.errors import UserError
from engine.api.estimate import Shape, describe_workers, per_worker, scored_columns, suggest
from engine.api.history import read_history
from engine.data.dataset import Dataset, find_eval_file, load_dataset, split
from engine.model import device as devices
from engine.model import loading as models
from engine.model import memory
from engine.train import checkpoint, distributed, lora
from engine.train.events import EventBus, MetricsFileSink, truncate_history
from engine.train.objective import Batch, Objective
from engine.train.optim import LossFn, copies_needed
from engine.train.optim import build as build_optimizer
from engine.train.optim.schedule import learning_rate

log = logging.getLogger(__name__)

EVAL_BATCH_ROWS = 16


class NonFiniteLoss(UserError):
    pass


class MemoryBudgetExceeded(UserError):
    pass


@dataclass
class RunResult:
    status: str  # completed | stopped
    step: int
    eval_before: dict | None
    eval_after: dict | None
    adapter_dir: Path | None
    # Why training ended: steps | time budget | early stopping | stopped.
    reason: str = "steps"
    # The step whose θ the adapter holds (the best evaluated one; the last one if none was).
    adapter_step: int | None = None


def eval_score(result: dict) -> tuple[float, float]:
    """Higher is better: accuracy first (classification), then lower held-out loss."""
    accuracy = result.get("accuracy")
    return (accuracy if accuracy is not None else 0.0, -result["loss"])


def config_fingerprint(config: TrainConfig) -> str:
    """What must not change between a run and its resume (everything but the run length and
    bookkeeping fields)."""
    values = config_io.to_dict(config)
    for free in ("steps", "eval_every", "checkpoint_every", "keep_checkpoints", "output_dir",
                 "memory_budget_gb", "threads", "eval_rows", "time_budget_minutes",
                 "early_stopping_patience", "workers", "worker_timeout_seconds"):
        values.pop(free)
    # A run that diverged resumes from its last good checkpoint with a lower lr or eps.
    for free in ("lr", "eps"):
        values["optimizer"].pop(free)
    # Runs made before the backend field existed keep their fingerprint (and stay resumable).
    if values["backend"] == "pytorch":
        values.pop("backend")
    defaults = config_io.to_dict(TrainConfig())
    for section, key in (("optimizer", "estimator"), ("optimizer", "directions"),
                         ("optimizer", "normalize"), ("optimizer", "momentum"),
                         ("optimizer", "schedule"), ("optimizer", "warmup_steps"),
                         ("lora", "top_layers")):
        if values[section][key] == defaults[section][key]:
            values[section].pop(key)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


class Trainer:
    def __init__(self, config: TrainConfig, bus: EventBus, stop: threading.Event | None = None):
        self.config = config
        self.bus = bus
        self.stop = stop or threading.Event()
        self.output_dir = Path(config.output_dir)
        self.start_step = 0
        self.eval_before: dict | None = None
        self.final_eval: dict | None = None
        # Training seconds so far (steps only, not evaluation): what a time budget counts.
        self.train_seconds = 0.0
        # The best evaluation so far, its θ, and evaluations since it (early stopping).
        self.best: dict | None = None
        self.best_theta: torch.Tensor | None = None
        self.evals_since_best = 0
        self.last_eval: dict | None = None

    # ---- setup -------------------------------------------------------------------------
    def setup(self, resume: bool) -> None:
        cfg = self.config
        # The ExecuTorch program is lowered from a CPU float32 model, whatever the machine has.
        self.device = devices.resolve("cpu" if cfg.backend == "executorch" else cfg.device)
        self.world = distributed.join(self.device, cfg.worker_timeout_seconds)
        self.device = self.world.device
        if self.world.size > 1:
            # Under an external torchrun its worker count replaces the config's.
            config_io.validate(dataclasses.replace(cfg, workers=self.world.size))
            self.bus.log(f"worker {self.world.rank} of {self.world.size} on {self.device}")
        if self.world.primary:
            self._prepare_output_dir(resume)
        self.dtype = devices.resolve_dtype(cfg.dtype, self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # "cuda" alone names no card; the window shows the one that computes.
        self.device_name = (f"cuda:{torch.cuda.current_device()}"
                            if self.device.type == "cuda" and self.device.index is None
                            else str(self.device))
        self._status("loading", f"loading data from {cfg.dataset}")
        self.train_data, self.eval_data = self._load_data()
        self._status("loading", f"loading model {cfg.model}")
        loaded = models.load(cfg.model, self.device, self.dtype, cfg.trust_remote_code)
        self.model, self.tokenizer, self.model_folder = loaded.model, loaded.tokenizer, loaded.folder
        if cfg.dtype == "int8":
            self.bus.log(f"int8 base: {models.quantize_int8(self.model)} projections quantised")
        self.train_data = self.train_data.render(self.tokenizer)
        self.eval_data = self.eval_data.render(self.tokenizer)
        self._preflight_memory()
        context = models.context_length(self.model)
        if context and cfg.max_seq_len > context:
            raise UserError(
                f'config field "max_seq_len" is {cfg.max_seq_len} but the model reads at most '
                f"{context} tokens; lower max_seq_len"
            )
        self.objective = Objective(self.tokenizer, self.train_data.task, cfg.max_seq_len,
                                   self.train_data.label_words)
        if self.train_data.task == "classification":
            self.objective.check_label_words(self.train_data.label_words)
        directions = len(self.world.directions(cfg.optimizer.q))
        self.adapter = lora.inject(self.model, cfg.lora, copies_needed(cfg.optimizer, directions), cfg.seed)
        self.optimizer = build_optimizer(cfg.optimizer, self.adapter.store, cfg.seed, self.world)
        self.batch_losses = self._eager_losses if cfg.backend == "pytorch" else self._program_losses()
        self.fingerprint = config_fingerprint(cfg)
        if resume:
            self._restore()
        if self.world.primary:
            self.metrics_sink = MetricsFileSink(self.output_dir / "metrics.jsonl")
            self.bus.add(self.metrics_sink)
        self.budget_bytes = int(cfg.memory_budget_gb * 2**30) or None

    def _preflight_memory(self) -> None:
        """Show the estimate; refuse a run whose estimate exceeds the budget, naming what fits."""
        cfg = dataclasses.replace(self.config, task=self.train_data.task)
        shape = Shape.from_config(self.model.config.to_dict())
        dtype = "int8" if cfg.dtype == "int8" else str(self.dtype).removeprefix("torch.")
        scored = None
        if cfg.task == "sft":
            texts = [e.completion for e in self.train_data.examples + self.eval_data.examples]
            longest = max(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
            scored = scored_columns(longest, cfg.max_seq_len)
        # Each worker is a process of its own and memory_budget_gb bounds each one's RSS; every
        # worker checks the largest, so all of them refuse alike.
        workers = per_worker(shape, dataclasses.replace(cfg, workers=self.world.size), dtype,
                             scored, EVAL_BATCH_ROWS)
        predicted = self.memory_estimate = max(workers, key=lambda e: e.total_bytes)
        self.bus.log(describe_workers(workers))
        budget = int(cfg.memory_budget_gb * 2**30)
        if budget and predicted.total_bytes > budget:
            options = suggest(shape, cfg, budget, dtype, scored)
            hint = f"settings that fit: {', '.join(options)}" if options else \
                "no smaller q, batch or sequence length fits: pick a smaller model or raise the budget"
            each = " per worker" if self.world.size > 1 else ""
            raise UserError(
                f"this run needs about {predicted.total_bytes / 2**30:.2f} GiB{each} but "
                f'memory_budget_gb is {cfg.memory_budget_gb}; {hint}'
            )

    def _prepare_output_dir(self, resume: bool) -> None:
        out = self.output_dir
        has_run = (out / "config.yaml").exists() or (out / CHECKPOINTS).exists()
        if has_run and not resume:
            raise UserError(
                f"output_dir {out} already holds a run; pass --resume to continue it, or choose "
                "another output_dir (nothing was overwritten)"
            )
        if resume and not has_run:
            raise UserError(f"--resume: {out} holds no run to resume")
        try:
            out.mkdir(parents=True, exist_ok=True)
            if resume:
                try:
                    saved = config_io.load(out / "config.yaml")
                except UserError as exc:
                    raise UserError(f"--resume: {exc}; was the run started by a newer "
                                    "EdgeTune?") from None
                if config_fingerprint(saved) != config_fingerprint(self.config):
                    raise UserError(
                        f"--resume: the config differs from the one {out} was started with (only "
                        "steps, eval/checkpoint intervals, threads, the memory budget and "
                        f"optimizer.lr/eps may change); see {out / 'config.yaml'}"
                    )
            config_io.save(self.config, out / "config.yaml")
        except OSError as exc:
            raise UserError(f"output_dir {out} cannot hold a run ({exc.strerror}); pick another "
                            "folder") from exc

    def _load_data(self) -> tuple[Dataset, Dataset]:
        cfg = self.config
        options = dict(prompt_template=cfg.prompt_template, schema=cfg.schema,
                       skip_bad_rows=cfg.skip_bad_rows)
        data = load_dataset(cfg.dataset, task=cfg.task, label_words=cfg.label_words, **options)
        if data.skipped_rows:
            self.bus.log(f"skipped {data.skipped_rows} malformed rows of {data.path} "
                         "(skip_bad_rows is on)", "warning")
        eval_file = cfg.eval_dataset or find_eval_file(cfg.dataset)
        if eval_file:
            held_out = load_dataset(eval_file, task=data.task, label_words=data.label_words,
                                    **options)
            train = data
        else:
            train, held_out = split(data, cfg.eval_fraction, cfg.seed)
        if cfg.batch_size > len(train.examples):
            raise UserError(
                f'config field "batch_size" is {cfg.batch_size} but the training split has only '
                f"{len(train.examples)} rows; lower batch_size or add data"
            )
        if cfg.eval_rows and len(held_out.examples) > cfg.eval_rows:
            held_out = held_out.subset(sorted(random.Random(cfg.seed + 1).sample(
                range(len(held_out.examples)), cfg.eval_rows)))
        self.bus.log(f"data: {len(train.examples)} training rows, {len(held_out.examples)} "
                     f"held-out rows, task {train.task}")
        return train, held_out

    def _restore(self) -> None:
        found = checkpoint.load_latest(self.output_dir / CHECKPOINTS,
                                       warn=lambda m: self.bus.log(m, "warning"))
        if found is None:
            raise UserError(f"--resume: {self.output_dir} has no checkpoint yet; start it again "
                            "without --resume in a new output_dir")
        if found.config_fingerprint != self.fingerprint:
            raise UserError(f"--resume: checkpoint {found.path} belongs to a different config")
        self.world.same_everywhere(found.step, "the checkpoint step to resume from")
        self.optimizer.load_state_dict(found.state)
        self.world.checksum(self.optimizer.state_dict(), found.step)
        self.start_step = found.step
        state = found.state
        self.train_seconds = float(state.get("trainer/train_seconds", torch.zeros(())).item())
        if "trainer/best_theta" in state:
            self.best_theta = state["trainer/best_theta"].clone()
            self.best = {"step": int(state["trainer/best_step"].item()),
                         "accuracy": _optional(state["trainer/best_accuracy"]),
                         "loss": float(state["trainer/best_loss"].item())}
            self.evals_since_best = int(state["trainer/evals_since_best"].item())
        history = self.output_dir / "metrics.jsonl"
        if self.world.primary:
            truncate_history(history, found.step)
        if found.step >= self.config.steps and history.exists():
            # Killed after the final checkpoint: its evaluation is in the history already, and
            # running it again would record it twice.
            self.final_eval = next(({k: r[k] for k in ("step", "loss", "accuracy", "rows")}
                                    for r in read_history(history)
                                    if r["type"] == "eval" and r["step"] == found.step), None)
        self.bus.log(f"resumed from {found.path} at step {found.step}")

    # ---- batches -----------------------------------------------------------------------
    def batch_indices(self, step: int) -> list[int]:
        """Rows of the batch for `step`: seeded epoch permutations, so any step is addressable."""
        n, b = len(self.train_data.examples), self.config.batch_size
        rows = []
        for position in range(step * b, step * b + b):
            epoch, offset = divmod(position, n)
            rows.append(self._permutation(epoch)[offset])
        return rows

    def _permutation(self, epoch: int) -> list[int]:
        if getattr(self, "_perm_epoch", None) != epoch:
            order = list(range(len(self.train_data.examples)))
            random.Random(f"{self.config.seed}:epoch:{epoch}").shuffle(order)
            self._perm_epoch, self._perm = epoch, order
        return self._perm

    # ---- train -------------------------------------------------------------------------
    def train(self) -> RunResult:
        cfg = self.config
        if self.start_step == 0:
            self.eval_before = self.evaluate(0)
        self._status("training", f"training with {cfg.optimizer.name}")
        budget_seconds = cfg.time_budget_minutes * 60
        started = time.perf_counter()
        step = self.start_step
        reason = "steps"
        while step < cfg.steps:
            batch = self.objective.encode(
                [self.train_data.examples[i] for i in self.batch_indices(step)]).to(self.device)
            lr = learning_rate(cfg.optimizer, step, self._progress(step, budget_seconds))
            t0 = time.perf_counter()
            with torch.inference_mode(cfg.optimizer.name != "fo"):
                result = self.optimizer.step(self._step_losses(batch), step, lr)
            devices.synchronize(self.device)
            step_seconds = time.perf_counter() - t0
            self.train_seconds += step_seconds
            if budget_seconds:
                self.train_seconds = self.world.latest(self.train_seconds)
            step += 1
            if not math.isfinite(result.loss) or not all(math.isfinite(g) for g in result.projected_grads):
                raise NonFiniteLoss(
                    f"the loss became non-finite at step {step}; lower optimizer.lr or "
                    "optimizer.eps. The last good checkpoint is kept; resume from it with the new "
                    "setting after editing nothing else"
                )
            grads = result.projected_grads
            grad_norm = math.sqrt(sum(g * g for g in grads)) if grads else None
            self.bus.emit("metrics", step=step, loss=result.loss, step_seconds=step_seconds,
                          tokens_per_second=batch.tokens / step_seconds, lr=lr,
                          projected_grad_norm=grad_norm, workers=self.world.size,
                          exchanged_bytes=self.world.take_exchanged_bytes())
            elapsed = time.perf_counter() - started
            done_here = step - self.start_step
            eta = elapsed / done_here * (cfg.steps - step)
            if budget_seconds:
                eta = min(eta, max(budget_seconds - self.train_seconds, 0.0) * elapsed
                          / max(self.train_seconds, 1e-9))
            self.bus.emit("progress", step=step, total_steps=cfg.steps, elapsed_seconds=elapsed,
                          eta_seconds=eta)
            rss = memory.rss_bytes()
            # What ends the loop is decided by all workers together, or one would wait forever
            # in an exchange the others never enter (the identity for one worker). Its bytes
            # count in the next step's exchanged_bytes.
            stop_requested, out_of_time, out_of_memory = self.world.agree(
                self.stop.is_set(),
                bool(budget_seconds and self.train_seconds >= budget_seconds and step < cfg.steps),
                bool(self.budget_bytes and rss > self.budget_bytes))
            self._check_memory(step, rss, out_of_memory)
            if out_of_time:
                reason = "time budget"
                self.bus.log(f"time budget of {cfg.time_budget_minutes:g} min reached at step {step}")
                break
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                self.evaluate(step)
                if cfg.early_stopping_patience and self.evals_since_best >= cfg.early_stopping_patience:
                    reason = "early stopping"
                    self.final_eval = self.final_eval or self.last_eval
                    self.bus.log(f"early stopping at step {step}: {self.evals_since_best} evaluations "
                                 f"without a better held-out score than step {self.best['step']}")
                    break
            if stop_requested:
                self.save_checkpoint(step, "stop")
                adapter_dir, adapter_step = self.save_adapter(step)
                return RunResult("stopped", step, self.eval_before, None, adapter_dir, "stopped",
                                 adapter_step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                self.save_checkpoint(step, "interval")
        eval_after = self.final_eval or self.evaluate(step)
        self.save_checkpoint(step, "end")
        adapter_dir, adapter_step = self.save_adapter(step)
        return RunResult("completed", step, self.eval_before, eval_after, adapter_dir, reason,
                         adapter_step)

    def _progress(self, step: int, budget_seconds: float) -> float:
        """Share of the run done: of its steps, or of its time budget when that ends it first."""
        done = step / self.config.steps
        return max(done, self.train_seconds / budget_seconds) if budget_seconds else done

    def _step_losses(self, batch: Batch) -> LossFn:
        """The step's loss function: each copy's mean loss over the batch, or, for a worker
        that shares its direction with others (more workers than directions), over its block
        of the rows, scaled to that block's part of the batch's mean (the workers' parts add up
        in World.gather_directions). The part is float64: one worker's float32 mean, split in
        parts, sums back within float32 rounding."""
        rows = self.world.rows(self.config.optimizer.q, batch.rows)
        if len(rows) == batch.rows:
            return lambda n: self.batch_losses(batch, n)
        mine = batch.select(rows)
        part = self.objective.weight(mine) / max(self.objective.weight(batch), 1)
        return lambda n: self.batch_losses(mine, n).double() * part

    def _eager_losses(self, batch: Batch, copies: int) -> torch.Tensor:
        shared = self.adapter.shared_prefix is not None
        with lora.active_copies(self.adapter, copies, untiled_input=shared):
            return self.objective.losses(self.model, batch, copies, tile=not shared)

    def _program_losses(self) -> Callable[[Batch, int], torch.Tensor]:
        """The executorch backend: the step's losses from the lowered training program."""
        from engine.train.executorch import program, runner

        cfg = self.config
        spec = program.ProgramSpec.of(self.objective, self.adapter.store, copies_needed(cfg.optimizer),
                                      cfg.batch_size, cfg.max_seq_len)
        self._status("loading", "preparing the ExecuTorch training program")
        traced = program.TrainingProgram(self.model, self.adapter, self.objective, spec.copies)
        path = program.cached_program(self.output_dir, program.program_key(cfg, self.model_folder, spec),
                                      traced, spec, self.bus.log)
        losses = runner.ProgramLosses(path, spec, cfg.threads)
        return lambda batch, copies: losses(batch, self.adapter.store.copies[:copies])

    def evaluate(self, step: int) -> dict:
        examples = self.eval_data.examples
        starts = range(0, len(examples), EVAL_BATCH_ROWS)
        # Each worker scores its block of the batches; the sums then run in batch order, as on
        # one worker, over the gathered (exact float64) per-batch numbers.
        mine = self.world.share(len(starts))
        scored = torch.zeros(2, len(mine), dtype=torch.float64)
        # A large held-out set takes tens of seconds: a status per batch shows how far it is.
        # This worker's share of its rows stands for the whole evaluation's (exact on one).
        my_rows = [len(examples[starts[b]:starts[b] + EVAL_BATCH_ROWS]) for b in mine]
        self._evaluating(step, 0, len(examples))
        with torch.inference_mode(), lora.active_copies(self.adapter, 1):
            for k, b in enumerate(mine):
                batch = self.objective.encode(examples[starts[b]:starts[b] + EVAL_BATCH_ROWS]).to(self.device)
                scored[0, k], scored[1, k] = self.objective.score(self.model, batch)
                self._evaluating(step, round(len(examples) * sum(my_rows[:k + 1]) / sum(my_rows)),
                                 len(examples))
        losses, hits = self.world.gather(scored, len(starts)).tolist()
        total_loss, correct = 0.0, 0
        for loss, hit in zip(losses, hits, strict=True):
            total_loss += loss
            correct += int(hit)
        result = {
            "step": step,
            "loss": total_loss / len(examples),
            "accuracy": correct / len(examples) if self.objective.task == "classification" else None,
            "rows": len(examples),
        }
        self.bus.emit("eval", **result)
        self.last_eval = result
        if self.best is None or eval_score(result) > eval_score(self.best):
            self.best, self.evals_since_best = result, 0
            self.best_theta = self.optimizer.theta.detach().clone()
        else:
            self.evals_since_best += 1
        return result

    def _evaluating(self, step: int, rows_done: int, rows: int) -> None:
        self._status("evaluating", f"evaluating at step {step}: {rows_done}/{rows} rows",
                    step=step, rows_done=rows_done, rows=rows)

    def _status(self, state: str, message: str, **progress: Any) -> None:
        """A status event; every one names the device the run computes on (the window shows it
        while the run goes)."""
        self.bus.emit("status", state=state, message=message, device=self.device_name,
                      threads=torch.get_num_threads(), **progress)

    def _check_memory(self, step: int, rss: int, over_budget: bool) -> None:
        """Report this worker's memory; `over_budget` (agreed by all workers) ends the run."""
        self.bus.emit("memory", step=step, rss_bytes=rss, peak_rss_bytes=memory.peak_rss_bytes(),
                      device_allocated_bytes=devices.allocated_bytes(self.device),
                      budget_bytes=self.budget_bytes)
        if over_budget:
            self.save_checkpoint(step, "memory")
            raise MemoryBudgetExceeded(
                f"memory use ({rss / 2**30:.2f} GiB) crossed memory_budget_gb "
                f"({self.config.memory_budget_gb} GiB) at step {step}; a checkpoint was written. "
                "Lower batch_size, optimizer.q or max_seq_len (or use optimizer.mode=single), "
                "then resume"
            )

    # ---- outputs -----------------------------------------------------------------------
    def save_checkpoint(self, step: int, reason: str) -> Path | None:
        """Worker 0 writes it (None elsewhere), once every worker's θ is shown to be the same.
        `reason` is why: "interval" | "stop" | "memory" | "end" (the run's end; the runs list
        tells a finished run from a stopped one, which leaves an adapter too, by it)."""
        self._status("checkpointing", f"writing checkpoint at step {step}")
        theta_checksum = self.world.checksum(self.optimizer.state_dict(), step)
        if not self.world.primary:
            self.bus.log(f"checkpoint at step {step}: θ checksum {theta_checksum} (worker 0 writes it)")
            return None
        state = dict(self.optimizer.state_dict())
        state.update({f"frozen/{key}": a for key, a in self.adapter.frozen().items()})
        state["trainer/train_seconds"] = torch.tensor(self.train_seconds, dtype=torch.float64)
        if self.best is not None:
            accuracy = self.best["accuracy"]
            state.update({
                "trainer/best_theta": self.best_theta,
                "trainer/best_step": torch.tensor(self.best["step"]),
                "trainer/best_accuracy": torch.tensor(float("nan") if accuracy is None else accuracy,
                                                      dtype=torch.float64),
                "trainer/best_loss": torch.tensor(self.best["loss"], dtype=torch.float64),
                "trainer/evals_since_best": torch.tensor(self.evals_since_best),
            })
        path = checkpoint.save(self.output_dir / CHECKPOINTS, step, state, self.fingerprint,
                               self.config.keep_checkpoints)
        self.bus.emit("checkpoint", step=step, path=str(path), reason=reason,
                      theta_checksum=theta_checksum, workers=self.world.size)
        return path

    def save_adapter(self, step: int) -> tuple[Path, int]:
        """The adapter of the best evaluated θ (the base model itself counts: step 0), or of the
        last θ when nothing after step 0 was evaluated (a run stopped before its first
        evaluation still leaves what it trained). Returns (folder, the step it holds)."""
        theta, adapter_step = self.optimizer.theta, step
        evaluated_since_start = self.last_eval is not None and self.last_eval["step"] > 0
        if self.best is not None and (self.best["step"] > 0 or evaluated_since_start):
            theta, adapter_step = self.best_theta, self.best["step"]
        directory = self.output_dir / "adapter"
        if not self.world.primary:
            return directory, adapter_step
        lora.save_peft_adapter(directory, self.adapter, theta, self.config.lora,
                               str(models.resolve_reference(self.config.model)))
        if adapter_step != step:
            score = self.best.get("accuracy")
            what = f"accuracy {score:.1%}" if score is not None else f"loss {self.best['loss']:.4f}"
            self.bus.log(f"adapter: the best held-out evaluation, step {adapter_step} ({what}); "
                         f"the last checkpoint (step {step}) is kept for resume")
        self.bus.emit("artifact", kind="adapter", path=str(directory), step=adapter_step)
        return directory, adapter_step

    def cleanup(self) -> None:
        sink = getattr(self, "metrics_sink", None)
        if sink is not None:
            self.bus.sinks.remove(sink)
            sink.close()
        world = getattr(self, "world", None)
        if world is not None:
            world.close()


def _optional(value: torch.Tensor) -> float | None:
    number = float(value.item())
    return None if math.isnan(number) else number
