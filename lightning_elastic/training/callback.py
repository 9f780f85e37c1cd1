"""``ElasticTraining``: the callback that trains an unchanged LightningModule as a weight-sharing supernet.

How a step works (and why). In Lightning's automatic optimization the closure runs ``training_step``, then
``optimizer_zero_grad`` (first micro-batch of an accumulation window), then ``backward``. To train several subnets
per batch without summing their losses into one graph, the callback wraps the module's ``training_step`` (an
instance attribute, removed at teardown; the class is untouched):

1. it zeroes the gradients itself (through the module's own ``optimizer_zero_grad``) and makes Lightning's
   following ``optimizer_zero_grad`` call a no-op for this step, so the early subnets' gradients survive;
2. for every subnet but the last it selects the subnet, calls the user's ``training_step``, adds the distillation
   term and calls ``trainer.strategy.backward`` at once, so that subnet's graph is freed before the next forward
   (peak memory stays that of one subnet);
3. the last subnet's loss is returned to Lightning, which runs its backward, clipping, AMP scaling, accumulation,
   optimizer and scheduler steps as usual.

Under DDP only the last backward all-reduces; :mod:`~lightning_elastic.training.ddp` keeps every rank's reducer
complete. The BigNAS rules around each subnet's pass: dropout / drop-path only on the max subnet
(:mod:`~lightning_elastic.training.regularization`, switched back after the step's last backward, so activation
checkpointing recomputes what was run), distillation over non-padded positions only, optionally of hidden states
too (:mod:`~lightning_elastic.training.inplace`), every depth choice trained in turn (the samplers' ``cover_depth``).

What users see: ``on_before_backward``/``on_after_backward`` run once per subnet; values the ``training_step`` logs
keep their plain key (the step value is the last subnet's, epoch means average all subnets) and are logged per subnet
group too (``train_loss/max``, ``/min``, ``/random``; see :mod:`~lightning_elastic.training.train_logs`); the
module's class is never modified.

Manual optimization is refused in ``setup`` (the user's ``training_step`` owns backward and the optimizer step there;
why we do not switch modules to it ourselves: docs/design.md, "Training loop").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_elastic.adapters.base import Adapter
from lightning_elastic.core.checks import check_number
from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.distributed import destroy_group_at_exit
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.supernet.convert import to_supernet
from lightning_elastic.supernet.importance import CALIBRATION_BATCHES
from lightning_elastic.supernet.supernet import Supernet, get_supernet
from lightning_elastic.training.calibration import calibration_batches
from lightning_elastic.training.ddp import UnusedParameterGrads, params_outside_graph, reached_leaves
from lightning_elastic.training.discovery import find_model
from lightning_elastic.training.distill import DistillLoss, resolve_distill
from lightning_elastic.training.inplace import InplaceDistillation
from lightning_elastic.training.regularization import REGULARIZE, RegularizationSwitch
from lightning_elastic.training.samplers import (
    DelayedShrinkingSampler,
    ProgressiveShrinkingSampler,
    Sampler,
    StepContext,
    check_flag,
    resolve_sampler,
)
from lightning_elastic.training.tap import ModelTap
from lightning_elastic.training.train_logs import SubnetTrainLogs
from lightning_elastic.training.validation import (
    SubnetValidator,
    parse_validate_subnets,
    resolve_configs,
    train_loader_of,
)


class ElasticTraining(Callback):
    """Train the module's model as a supernet: several subnets per batch, in-place distillation, per-subnet validation.

    Args:
        space: the search space (default ``SearchSpaceConfig()``: the family's paper space).
        model_attr: dotted name of the submodule to convert (``"model"``, ``"backbone"``); default: the first
            submodule a registered adapter matches.
        adapter: force an adapter (registered name or instance) instead of auto-detection.
        sampler: ``'sandwich'`` (BigNAS), ``'uniform'``, ``'progressive'`` (OFA), ``'delayed'`` (DεpS),
            ``'nested'`` (SortedNet) or a :class:`~lightning_elastic.training.samplers.Sampler`.
        num_random: random subnets per step besides max/min (sandwich: 4 subnets per step with 2).
        distill: ``'inplace-kl'``, ``'alpha-divergence'`` (AlphaNet), None, or ``(student, teacher) -> loss``.
            Soft targets are the max subnet's detached outputs, or ``teacher``'s when given. Token-level logits
            (``[B, T, V]``) are distilled at the positions the forward's ``attention_mask`` (or the batch's
            ``'attention_mask'``) keeps, so padding counts for nothing; ``[B, C]`` logits are unaffected. The term
            is logged as ``train_kd/<group>``.
        kd_weight: the subnets' loss is ``(1 - kd_weight) * label_loss + kd_weight * kd_loss`` (BigNAS uses 1.0).
        temperature: distillation temperature; both built-in losses soften by ``T`` and scale by ``T²``.
        teacher: optional frozen external teacher (e.g. the original pretrained model); then the max subnet is
            distilled too.
        distill_hidden: weight of a hidden-state term (0 or False: off; True: 1.0): each child's last hidden states
            (the transformers backbone's ``last_hidden_state``, non-padded positions) are pulled to the max
            subnet's by a relative squared error, TinyBERT-style, logged as ``train_hidden/<group>``. Hugging Face
            models only. Off by default: BigNAS/OFA distil logits only; turn it on for pretrained transformers with
            elastic depth, whose shallow children must reproduce the full depth's last hidden state.
        validate_subnets: subnets validated each epoch, each in a complete validation epoch of its own (your epoch
            hooks and torchmetrics included), logged as ``<key>/<tag>``: ``('max', 'min')``, configs, or
            ``{tag: 'max' | 'min' | config}``. The first is also logged under the plain keys that ``ModelCheckpoint``
            / ``EarlyStopping`` monitor. None: the max subnet, under the plain keys only.
        bn_calibration_batches: batches used to recalibrate BatchNorm per validated subnet (0: off), drawn from the
            train set by a separate loader with a fixed shuffle (see :func:`calibration_loader`); the same batches
            for every subnet and epoch, and for :class:`~lightning_elastic.search.measure.SubnetMeasurer`.
        calibration_forward: ``(model, batch) -> output`` for calibration; default: first element / dict inputs.
        seed: sampling seed; subnets are a pure function of ``(seed, global_step)``.
        regularize: which subnets train with the model's dropout / drop-path: ``'max'`` (default, BigNAS: the small
            children underfit with it, only the biggest overfits without it; the others run with every dropout
            probability set to 0, restored exactly after the step; a sampler without a max subnet, ``'uniform'``,
            then trains without any) or ``'all'`` (every subnet, as OFA does and as before this option).
        cover_depth: the random subnets cycle through every depth choice (each block of ``len(choices)`` random
            subnets trains each once, other dims uniformly random), so no intermediate depth is left to chance
            (default True; applies to samplers given by name, set it on a Sampler instance yourself).
        phases: progressive-shrinking phases (``sampler='progressive'``), see :class:`ProgressiveShrinkingSampler`.
        shrink_start: fraction of training before shrinking starts (``sampler='delayed'``).

    Logs: what ``training_step`` logs keeps its plain key and is also logged per subnet group each step
    (``train_loss/max``, ``train_loss/min``, ``train_loss/random``: the mean over the step's random subnets); a key
    logged with ``prog_bar=True`` shows its ``/max`` value on the bar. The distillation terms: ``train_kd/<group>``,
    ``train_hidden/<group>``.

    Raises:
        ConfigError: an invalid argument (each names the argument, the value and what is allowed); in ``setup``, a
            second ``ElasticTraining`` in the same Trainer, or ``distill_hidden`` on a model without a transformers
            backbone.

    Example:
        >>> trainer = L.Trainer(callbacks=[ElasticTraining(SearchSpaceConfig(width=(0.5, 1.0)))])  # doctest: +SKIP
        >>> trainer.fit(MyLitModule(timm.create_model("resnet18", num_classes=10)))  # doctest: +SKIP
    """

    def __init__(self, space: SearchSpaceConfig | None = None, *, model_attr: str | None = None,
                 adapter: str | Adapter | None = None, sampler: str | Sampler = "sandwich", num_random: int = 2,
                 distill: str | None | Callable = "inplace-kl", kd_weight: float = 0.5, temperature: float = 1.0,
                 teacher: nn.Module | None = None,
                 validate_subnets: Sequence[str | Mapping[str, int]] | Mapping[str, Any] | None = ("max", "min"),
                 bn_calibration_batches: int = 10, calibration_forward: Callable | None = None, seed: int = 0,
                 phases: Sequence | None = None, shrink_start: float = 0.25, regularize: str = "max",
                 cover_depth: bool = True, distill_hidden: bool | float = 0.0) -> None:
        if space is not None and not isinstance(space, SearchSpaceConfig):
            raise ConfigError(f"`space` got a {type(space).__name__}; allowed: a SearchSpaceConfig or None. "
                              "HINT: space=SearchSpaceConfig(width=(0.5, 0.75, 1.0), depth='auto').")
        if model_attr is not None and (not isinstance(model_attr, str) or not model_attr):
            raise ConfigError(f"`model_attr` got {model_attr!r}; allowed: a submodule name such as 'model' or None "
                              "(auto-detect). HINT: the attribute of your LightningModule that holds the network.")
        if isinstance(num_random, bool) or not isinstance(num_random, int) or num_random < 0:
            raise ConfigError(f"`num_random` got {num_random!r}; allowed: an integer >= 0. "
                              "HINT: num_random=2 gives BigNAS's 4 subnets per step.")
        if regularize not in REGULARIZE:
            raise ConfigError(f"`regularize` got {regularize!r}; allowed: {list(REGULARIZE)}. HINT: regularize='max' "
                              "(BigNAS: dropout and drop-path on the max subnet only) or 'all' (every subnet).")
        self.regularize = regularize
        self.cover_depth = check_flag("cover_depth", cover_depth)
        if sampler == "progressive":
            sampler = ProgressiveShrinkingSampler(phases, num_random=num_random, cover_depth=cover_depth)
        elif sampler == "delayed":
            sampler = DelayedShrinkingSampler(num_random, start=shrink_start, cover_depth=cover_depth)
        self.sampler = resolve_sampler(sampler, num_random, cover_depth)
        self.distill_fn: DistillLoss | None = resolve_distill(distill, check_number("temperature", temperature, 0, 1e3,
                                                                               low_open=True))
        self.distill = distill
        self.kd_weight = check_number("kd_weight", kd_weight, 0.0, 1.0)
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise ConfigError(f"`teacher` got a {type(teacher).__name__}; allowed: an nn.Module or None. "
                              "HINT: pass the original pretrained model, e.g. timm.create_model(..., pretrained=True).")
        if teacher is not None and distill is None:
            raise ConfigError("`teacher` was given but `distill` is None. HINT: set distill='inplace-kl' to use it.")
        self.teacher = teacher
        self.distill_hidden = float(distill_hidden) if isinstance(distill_hidden, bool) else check_number(
            "distill_hidden", distill_hidden, 0.0, 1e3)
        self._inplace = InplaceDistillation(self.distill_fn, self.kd_weight, teacher, self.distill_hidden)
        self._validate_items = parse_validate_subnets(validate_subnets)
        if isinstance(bn_calibration_batches, bool) or not isinstance(bn_calibration_batches, int) or \
                bn_calibration_batches < 0:
            raise ConfigError(f"`bn_calibration_batches` got {bn_calibration_batches!r}; allowed: an integer >= 0 "
                              "(0 disables recalibration). HINT: OFA uses ~2000 images, e.g. 10 batches of 200.")
        if calibration_forward is not None and not callable(calibration_forward):
            raise ConfigError(f"`calibration_forward` got {calibration_forward!r}; allowed: None or a callable "
                              "(model, batch) -> output. HINT: lambda model, batch: model(batch['image']).")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"`seed` got {seed!r}; allowed: an integer. HINT: seed=0.")
        if adapter is not None and not isinstance(adapter, str | Adapter):
            raise ConfigError(f"`adapter` got {adapter!r}; allowed: None, a registered adapter name or an Adapter "
                              "instance. HINT: leave it None to auto-detect.")
        self.space = space
        self.model_attr = model_attr
        self.adapter = adapter
        self.bn_calibration_batches = bn_calibration_batches
        self.calibration_forward = calibration_forward
        self.seed = seed
        self.supernet: Supernet | None = None
        self.subnets_trained = 0  # subnet forward/backward passes, for logs and checkpoints
        self.last_subnets: list[str] = []
        self._tap: ModelTap | None = None
        self._validator: SubnetValidator | None = None
        self._skip_zero_grad = False
        self._module: L.LightningModule | None = None
        self._trainer: L.Trainer | None = None
        self._total_steps: float | None = None
        self._converted_name: str | None = None
        self._key_settled = False  # see state_key
        self._ddp = UnusedParameterGrads()
        self._regularization: RegularizationSwitch | None = None
        self._bar_on_max = False  # the sampler trains the max subnet: the progress bar shows its keys

    # -- setup ---------------------------------------------------------------------------------------------
    @property
    @override
    def state_key(self) -> str:
        # Lightning's Trainer refuses two stateful callbacks with one key as it is built, with a hint to make the keys
        # unique; but two ElasticTraining callbacks cannot share a module at all (each would wrap its training_step).
        # Until setup has checked that this is the Trainer's only one, the key is per instance so that check can say
        # so; from then on it is the stable class name that checkpoints are written and read under.
        return type(self).__qualname__ if self._key_settled else f"{type(self).__qualname__}@{id(self):x}"

    def _check_single(self, trainer: L.Trainer) -> None:
        mine = [c for c in trainer.callbacks if isinstance(c, ElasticTraining)]
        if len(mine) > 1:
            raise ConfigError(
                f"`callbacks` holds {len(mine)} ElasticTraining callbacks; allowed: one per Trainer (each converts "
                "the model and takes over the module's training_step). HINT: keep a single ElasticTraining; a "
                "module that adds its own through configure_callbacks (ElasticModule) needs none in `callbacks`.")
        self._key_settled = True

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._check_single(trainer)
        destroy_group_at_exit()  # a CPU DDP child must not finalize with a live gloo group (core/distributed.py)
        if stage == "fit" and not pl_module.automatic_optimization:
            raise ConfigError(
                f"`{type(pl_module).__name__}.automatic_optimization` is False; ElasticTraining supports automatic "
                "optimization only (it runs each subnet's backward and lets Lightning step). HINT: use automatic "
                "optimization, or drive subnets yourself with `get_supernet(model).subnet(cfg)` in your loop.")
        model = find_model(pl_module, self.model_attr, self.adapter)
        existing = get_supernet(model)
        if existing is not None and self.space is not None and existing.config.to_dict() != self.space.to_dict():
            raise ConfigError(
                f"`space` got {self.space.to_dict()}, but {type(model).__name__} is already a supernet built with "
                f"{existing.config.to_dict()}; a converted model's space cannot change. HINT: pass space=None to "
                "train the existing supernet, or convert a fresh model.")
        # idempotent: a second fit/validate (or a module converted by the user) reuses the existing supernet
        self.supernet = existing if existing is not None else to_supernet(
            model, self.space or SearchSpaceConfig(), adapter=self.adapter, forward_fn=self.calibration_forward,
            calibration_data=self._conversion_batches(trainer, pl_module))
        # without validate_subnets the max subnet is validated, not whichever subnet happened to train last
        configs = resolve_configs(self.supernet, self._validate_items) or [("max", self.supernet.max_config())]
        self._validator = SubnetValidator(self.supernet, configs, self.bn_calibration_batches,
                                          self.calibration_forward, tagged=bool(self._validate_items))
        loop = {"fit": trainer.fit_loop.epoch_loop.val_loop, "validate": trainer.validate_loop}.get(stage)
        if loop is not None:
            self._validator.install(trainer, loop)
        self._converted_name = next(n for n, m in pl_module.named_modules() if m is model)
        if self._tap is None:
            self._tap = ModelTap(self.supernet, hidden=self.distill_hidden > 0)
        self._trainer, self._module = trainer, pl_module
        self._regularization = RegularizationSwitch(pl_module)
        if stage == "fit" and "training_step" not in pl_module.__dict__:
            self._install(pl_module)
        rank_zero_info(f"ElasticTraining: {self.supernet!r}, sampler {self.sampler!r}")

    def _conversion_batches(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Any] | None:
        """A few training batches for data-driven importance at conversion (activation order, layer influence).

        The same fixed, seeded draw on every DDP rank (the loader is rebuilt over the whole dataset, not the rank's
        shard), so every rank computes the same permutations and layer orders, and a resumed run the same again.
        """
        return calibration_batches(train_loader_of(trainer, pl_module), CALIBRATION_BATCHES, self.seed) or None

    def _install(self, pl_module: L.LightningModule) -> None:
        original_step = pl_module.training_step
        original_zero_grad = pl_module.optimizer_zero_grad

        def training_step(*args: Any, **kwargs: Any) -> Any:
            return self._elastic_step(original_step, original_zero_grad, *args, **kwargs)

        def optimizer_zero_grad(*args: Any, **kwargs: Any) -> None:
            if self._skip_zero_grad:  # already zeroed before this step's first subnet
                self._skip_zero_grad = False
                return
            original_zero_grad(*args, **kwargs)

        pl_module.training_step = training_step
        pl_module.optimizer_zero_grad = optimizer_zero_grad

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for name in ("training_step", "optimizer_zero_grad", "log"):
            pl_module.__dict__.pop(name, None)
        for loop in (trainer.fit_loop.epoch_loop.val_loop, trainer.validate_loop):
            SubnetValidator.uninstall(loop)
        self._ddp.reset()
        if self._regularization is not None:
            self._regularization.restore()
        if self._tap is not None:
            self._tap.remove()
            self._tap = None
        if self.supernet is not None:
            self.supernet.select(self.supernet.max_config())

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._total_steps = None
        if self.teacher is not None:
            self.teacher.to(pl_module.device).eval().requires_grad_(False)
        late = self.sampler.sample(self.supernet.space, StepContext(10**9, 10**9, 1.0), torch.Generator().manual_seed(0))
        self._bar_on_max = any(tag == "max" for tag, _ in late)
        if self.distill_fn is not None and self.teacher is None and not self._bar_on_max:
            rank_zero_warn(f"ElasticTraining: distill={self.distill!r} but sampler {self.sampler.name!r} never trains "
                           "the max subnet, so there are no soft targets; pass `teacher=` for distillation.")

    # -- training ------------------------------------------------------------------------------------------
    def step_context(self, trainer: L.Trainer) -> StepContext:
        if self._total_steps is None:  # computing it re-inspects the dataloaders: once per fit
            self._total_steps = trainer.estimated_stepping_batches
        total = self._total_steps
        progress = trainer.global_step / total if total and math.isfinite(total) else 0.0
        return StepContext(trainer.global_step, trainer.current_epoch, min(1.0, progress))

    def subnets_for_step(self, trainer: L.Trainer) -> list[tuple[str, dict[str, int]]]:
        """The ``(tag, config)`` subnets trained at the trainer's current step."""
        return self.sampler.subnets(self.supernet.space, self.step_context(trainer), self.seed)

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._ddp.before_backward()

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        self._ddp.before_optimizer_step()

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # after the last subnet's backward (not at the end of its forward): activation checkpointing recomputes
        # the forward inside backward, which must see the probabilities the forward ran with
        self._regularization.restore()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._regularization is not None:
            self._regularization.restore()

    reached_leaves = staticmethod(reached_leaves)
    params_outside_graph = staticmethod(params_outside_graph)

    def _select_regularization(self, tag: str) -> None:
        if self.regularize == "max" and tag != "max":
            self._regularization.off()
        else:
            self._regularization.restore()

    def _elastic_step(self, step_fn: Callable, zero_grad_fn: Callable, batch: Any, batch_idx: int, *args: Any,
                      **kwargs: Any) -> Any:
        trainer, tap, module = self._trainer, self._tap, self._module
        subnets = self.subnets_for_step(trainer)
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        accumulate = trainer.accumulate_grad_batches
        self._ddp.start(new_window=batch_idx % accumulate == 0)
        if len(subnets) > 1 and optimizer is not None and batch_idx % accumulate == 0:
            zero_grad_fn(trainer.current_epoch, batch_idx, optimizer)
            self._skip_zero_grad = True
        ddp = trainer.world_size > 1
        own_log = module.__dict__.get("log")
        logs = SubnetTrainLogs(module.log, self._bar_on_max)
        module.log = logs
        tap.capturing = True
        try:
            for i, (tag, cfg) in enumerate(subnets):
                self.supernet.select(cfg)
                self._select_regularization(tag)
                logs.tag = tag
                output = step_fn(batch, batch_idx, *args, **kwargs)
                loss = output.get("loss") if isinstance(output, Mapping) else output
                if loss is None:  # the user skipped this batch: no backward follows
                    self._skip_zero_grad = False
                    self._regularization.restore()
                    logs.flush()
                    return output
                loss = self._inplace(tag, i == 0, loss, tap, batch, logs)
                self.subnets_trained += 1
                reached = self._ddp.track(loss) if ddp else set()
                if i == len(subnets) - 1:
                    if ddp:  # every rank must reduce every parameter: a zero-valued term for those this one skips
                        loss = self._ddp.complete(loss, module.parameters(), reached)
                    self.last_subnets = [t for t, _ in subnets]
                    logs.flush()
                    return {**output, "loss": loss} if isinstance(output, Mapping) else loss
                # free this subnet's graph now: backward before the next subnet's forward
                trainer.strategy.backward(loss / accumulate, optimizer)
                tap.clear()
                del output, loss
        except BaseException:
            self._regularization.restore()
            raise
        finally:
            tap.capturing = False
            tap.clear()
            self._inplace.clear()  # the soft targets ([B, T, V] for an LLM) are not kept past the step
            if own_log is None:
                module.__dict__.pop("log", None)
            else:
                module.log = own_log

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.supernet.select(self.supernet.max_config())

    # -- checkpoint ----------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "sampler": self.sampler.state_dict(), "subnets_trained": self.subnets_trained,
                "last_subnets": list(self.last_subnets),
                # the format lightning_elastic.cli/search read to rebuild the supernet from a checkpoint
                "supernet": self.supernet.state_info() if self.supernet is not None else None,
                "model_attr": self._converted_name}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("supernet")
        if saved is not None and self.supernet is not None and saved["signature"] != self.supernet.signature():
            raise ConfigError(
                f"`space` differs from the checkpoint's: the checkpoint was trained with {saved['config']} "
                f"(adapter {saved['adapter']!r}), this run uses {self.supernet.config.to_dict()}. "
                "HINT: resume with the same SearchSpaceConfig, or start a new run (load only the weights).")
        if state_dict.get("sampler", {}).get("name") not in (None, self.sampler.name):
            rank_zero_warn(f"ElasticTraining: the checkpoint used sampler {state_dict['sampler']['name']!r}, this "
                           f"run uses {self.sampler.name!r}.")
        self.seed = state_dict.get("seed", self.seed)
        self.subnets_trained = state_dict.get("subnets_trained", 0)
        self.last_subnets = list(state_dict.get("last_subnets", []))
