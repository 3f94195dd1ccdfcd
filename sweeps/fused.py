"""Fused training: K members (trial points of one architecture) trained as one computation, each
member exactly what it would be alone.

The members' parameters and buffers are stacked along a new first dimension and trained in one
forward/backward per step with ``torch.func.vmap(functional_call)``: under vmap a convolution of
K members becomes one grouped convolution, their BatchNorms one wide BatchNorm (each member's
running statistics updated in its own slice), their Linears one batched matmul. Everything else
stays the member's own: its model (an ``nn.Module`` whose parameters and buffers are views into
the stacks, so pruning_core prunes, measures and saves it as it would alone), its data stream,
its masks, its torch RNG (the random criterion), its learning rate, momentum, weight decay and
optimizer state (:class:`FusedOptimizer`, step for step torch's SGD/Adam/AdamW).

vmap was chosen over rewriting layers as grouped ones (HFTA's way) because it fuses any model
that trains unfused, also one whose forward touches channels between layers (the option-A
shortcut of the CIFAR ResNets pads channels). A model that cannot be fused (it draws random
numbers in training, or its forward does what vmap cannot batch) is refused by
:func:`check_fusable`, in one line naming the layer.
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import sys
import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

import pruning_core as pc
from analysis.messages import one_line
from pruning_core.masks import SUFFIX as MASK_SUFFIX
from pruning_core.masks import disarm

from .learner import EpochStats, ModelLearner, load_start_weights
from .loops import autocast, full_precision, place
from .plan import Seeds, Start

RANDOM_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch's defaults, which sweeps.optimizers.make_optimizer uses


class FusionError(ValueError):
    """Members that cannot be trained as one computation; the message says which layer or setting."""


def _precision(device: torch.device, mixed: bool):
    """The trials' bf16 autocast on ``device`` (:func:`sweeps.loops.autocast`), or with ``mixed`` off, none."""
    return autocast(device) if mixed else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------- the model

def _skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device without masks or pruning hooks: the code that
    ``functional_call`` runs with the members' stacked tensors."""
    base = copy.deepcopy(model).to("meta")
    for module in base.modules():
        for key in [k for k in module._buffers if k.endswith(MASK_SUFFIX)]:
            del module._buffers[key]
        disarm(module)
    return base


def _random_layer(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, RANDOM_LAYERS) and module.p > 0:
            return f"layer {name} ({type(module).__name__}, p={module.p})"
    return None


@contextlib.contextmanager
def _running_layer(base: nn.Module, seen: list[str]):
    """Record in ``seen`` the layers whose forward has begun but not ended (the innermost last)."""
    def ended(module, args, output):
        seen.pop()  # returns None: a forward hook's return value would replace the output

    handles = []
    for name, module in base.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: seen.append(n)))
        handles.append(module.register_forward_hook(ended))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def check_fusable(model: nn.Module, example: torch.Tensor, mixed: bool = True) -> None:
    """Raise :class:`FusionError` naming the layer or operation if two copies of ``model`` cannot
    train as one fused computation on a batch like ``example`` (a training step and an
    evaluation, as :class:`FusedLearner` runs them, on ``example``'s device; with ``mixed``, under
    the bf16 autocast trials use there): a layer drawing random numbers in training (dropout: each
    member's would differ from its unfused twin's), or an operation vmap cannot batch."""
    where = _random_layer(model)
    if where is not None:
        raise FusionError(f"{where} draws random numbers in training, which a fused member cannot draw as its "
                          "unfused twin would; set its p to 0 or train unfused")
    members = [copy.deepcopy(model) for _ in range(2)]
    stack = Stack(members)
    x = torch.stack([example, example])
    seen: list[str] = []
    precision = _precision(example.device, mixed)
    try:
        with _running_layer(stack.base, seen):
            stack.base.train()
            with precision:
                out = stack.forward(x)
            out.float().sum().backward()
            stack.base.eval()
            with torch.no_grad(), precision:
                stack.forward(example, shared_input=True)
    except Exception as exc:
        layer = f"layer {seen[-1] or '(the model itself)'} ({type(stack.base.get_submodule(seen[-1])).__name__})" \
            if seen else "the model"
        raise FusionError(f"{layer} cannot be fused ({type(exc).__name__}: {one_line(exc)})") from None


class Stack:
    """The members' parameters and buffers stacked along a new first dimension (member ``i`` of
    the stack is ``members[i]``); each member's module holds views into the stacks, so what
    pruning_core does to a member (masks, rewinds, loads) lands in the stack, and training the
    stack trains the members.

    The trainable parameters live in one flat (K, P) tensor, :attr:`flat` (one row per member), so
    that masking and the optimizer step are a few whole-tensor operations, not a few per layer;
    parameters that do not train (``requires_grad=False``) are stacked beside it and never stepped."""

    def __init__(self, members: Sequence[nn.Module], base: nn.Module | None = None):
        self.members = list(members)
        self.base = base if base is not None else _skeleton(self.members[0])
        k = len(self.members)
        names = [name for name, _ in self.base.named_parameters()]
        own = {name: [m.get_parameter(name) for m in self.members] for name in names}
        for name, params in own.items():
            if len({p.requires_grad for p in params}) > 1:
                raise FusionError(f"parameter {name} trains in some members and is frozen in others")
        trainable = [n for n in names if own[n][0].requires_grad]
        dtypes = sorted({str(own[n][0].dtype) for n in trainable})
        if len(dtypes) > 1:
            raise FusionError(f"fused members train parameters of one dtype; these have {', '.join(dtypes)}")
        self.slices: dict[str, tuple[int, int, torch.Size]] = {}
        offset = 0
        for name in trainable:
            shape = own[name][0].shape
            self.slices[name] = (offset, offset + own[name][0].numel(), shape)
            offset += own[name][0].numel()
        self.flat = torch.cat([torch.stack([p.detach().reshape(-1) for p in own[n]]) for n in trainable], dim=1) \
            if trainable else torch.zeros(k, 0)
        self.flat.requires_grad_(True)
        for name, (a, b, shape) in self.slices.items():
            for i, p in enumerate(own[name]):
                p.data = self.flat.data[i, a:b].view(shape)
        self.frozen: dict[str, torch.Tensor] = {}
        for name in names:
            if name not in self.slices:
                stacked = torch.stack([p.detach() for p in own[name]])
                for i, p in enumerate(own[name]):
                    p.data = stacked[i]
                self.frozen[name] = stacked
        self.buffers: dict[str, torch.Tensor] = {}
        for name, _ in self.base.named_buffers():
            prefix, _, leaf = name.rpartition(".")
            owners = [m.get_submodule(prefix) for m in self.members]
            stacked = torch.stack([o._buffers[leaf] for o in owners])
            for i, o in enumerate(owners):
                o._buffers[leaf] = stacked[i]
            self.buffers[name] = stacked
        self.mask: torch.Tensor | None = None
        self.gather_masks()

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Every parameter stacked (K, ...): views into :attr:`flat` (made anew, for this forward's graph)."""
        k = len(self.members)
        views = {name: self.flat[:, a:b].view(k, *shape) for name, (a, b, shape) in self.slices.items()}
        return {**views, **self.frozen}

    def release(self, member: int) -> None:
        """Give member ``member`` tensors of its own (it leaves the stack, keeping its values)."""
        m = self.members[member]
        for name in (*self.slices, *self.frozen):
            p = m.get_parameter(name)
            p.data = p.data.clone()
        for name in self.buffers:
            prefix, _, leaf = name.rpartition(".")
            owner = m.get_submodule(prefix)
            owner._buffers[leaf] = owner._buffers[leaf].clone()

    def gather_masks(self) -> None:
        """The members' masks of the trainable parameters as one (K, P) keep-mask (True where a
        member has no mask), or None where no member has one."""
        self.mask = None
        for name, (a, b, _) in self.slices.items():
            prefix, _, leaf = name.rpartition(".")
            found = [m.get_submodule(prefix)._buffers.get(leaf + MASK_SUFFIX) for m in self.members]
            if all(f is None for f in found):
                continue
            if self.mask is None:
                self.mask = torch.ones(self.flat.shape, dtype=torch.bool, device=self.flat.device)
            for i, f in enumerate(found):
                if f is not None:
                    self.mask[i, a:b] = f.reshape(-1)

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """Every member's output: ``x`` holds one batch per member (K, B, ...), or with ``shared_input``
        one batch (B, ...) that every member sees; returns (K, B, ...)."""
        def one(params, buffers, xb):
            return functional_call(self.base, (params, buffers), (xb,))
        return vmap(one, in_dims=(0, 0, None if shared_input else 0), randomness="error")(self.params, self.buffers, x)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        if self.mask is not None and self.flat.grad is not None:
            self.flat.grad.mul_(self.mask)

    @torch.no_grad()
    def apply_masks(self) -> None:
        if self.mask is not None:
            self.flat.mul_(self.mask)

    @torch.no_grad()
    def finite(self) -> torch.Tensor:
        """(K,) bool: whether every floating weight and buffer of each member is finite."""
        ok = torch.isfinite(self.flat).all(1)
        for t in (*self.frozen.values(), *self.buffers.values()):
            if t.is_floating_point():
                ok &= torch.isfinite(t).flatten(1).all(1)
        return ok


# ---------------------------------------------------------------------------------------- the optimizer

class FusedOptimizer:
    """torch's SGD, Adam or AdamW (as :func:`sweeps.optimizers.make_optimizer` builds them) over a
    stacked parameter ``param`` (K, ...), with every member's own learning rate, momentum,
    Nesterov and weight decay, and its own state and step count: member ``k`` follows the update
    rule of torch's optimizer of its unfused twin term for term (in float64 to its rounding; in
    float32 the fused arithmetic rounds differently, as everything else fused does)."""

    def __init__(self, param: torch.Tensor, configs: Sequence):
        kinds = sorted({c.name for c in configs})
        if len(kinds) != 1:
            raise FusionError(f"fused members train with one optimizer kind; got {', '.join(kinds)}")
        self.kind, self.configs, self.param = kinds[0], list(configs), param
        names = ("momentum_buffer",) if self.kind == "sgd" else ("exp_avg", "exp_avg_sq")
        self.state = {s: torch.zeros_like(param).detach() for s in names}
        self._rates: tuple[tuple[float, ...], torch.Tensor] | None = None
        self._hyper = {f: self._column([float(getattr(c, f)) for c in self.configs])
                       for f in ("momentum", "weight_decay")}
        self._nesterov = self._column([float(c.nesterov and c.momentum > 0) for c in self.configs]) > 0
        self._step_count = self._column([0.0] * len(self.configs))  # each member's steps since its last reset

    def _column(self, values: Sequence[float]) -> torch.Tensor:
        """``values`` (one per member) as a (K, 1, ...) tensor on the parameter's device, once."""
        p = self.param
        return torch.tensor(values, dtype=p.dtype, device=p.device).view(-1, *[1] * (p.dim() - 1))

    def _lr(self, lrs: Sequence[float]) -> torch.Tensor:
        """The rates as a column, copied to the device only when they change (once per epoch)."""
        key = tuple(lrs)
        if self._rates is None or self._rates[0] != key:
            self._rates = (key, self._column(key))
        return self._rates[1]

    @torch.no_grad()
    def reset(self, member: int) -> None:
        """A fresh optimizer for ``member``: no state, no steps (as a new torch optimizer)."""
        for value in self.state.values():
            value[member].zero_()
        self._step_count[member] = 0

    @torch.no_grad()
    def clear_masked(self, mask: torch.Tensor | None) -> None:
        """Zero the state at pruned positions (as :func:`pruning_core.clear_optimizer_state`)."""
        if mask is not None:
            for value in self.state.values():
                value.mul_(mask)

    @torch.no_grad()
    def step(self, lrs: Sequence[float]) -> None:
        """One step of every member at its learning rate ``lrs[k]``."""
        p = self.param
        if p.grad is None:
            return
        self._step_count += 1
        lr, wd = self._lr(lrs), self._hyper["weight_decay"]
        if self.kind == "sgd":
            momentum, buf = self._hyper["momentum"], self.state["momentum_buffer"]
            grad = p.grad.add(p * wd)
            buf.mul_(momentum).add_(grad)  # a zero buffer times momentum plus the gradient: torch's first-step clone
            p.sub_(torch.where(self._nesterov, grad.add(buf * momentum), buf) * lr)
            return
        beta1, beta2 = ADAM_BETAS
        grad = p.grad
        if self.kind == "adamw":
            p.mul_(1 - lr * wd)
        else:
            grad = grad.add(p * wd)
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1 ** self._step_count)
        denom = (exp_avg_sq.sqrt() / (1 - beta2 ** self._step_count).sqrt()).add_(ADAM_EPS)
        p.sub_(exp_avg / denom * step_size)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "steps": [int(s) for s in self._step_count.flatten().tolist()],
                "state": {k: v.detach().cpu().clone() for k, v in self.state.items()}}

    @torch.no_grad()
    def load_state_dict(self, saved: dict) -> None:
        if saved["kind"] != self.kind or len(saved["steps"]) != len(self.configs):
            raise ValueError(f"a {saved['kind']} state of {len(saved['steps'])} members does not fit "
                             f"a {self.kind} optimizer of {len(self.configs)}")
        for key, value in self.state.items():
            if saved["state"][key].shape != value.shape:
                raise ValueError(f"a state of shape {tuple(saved['state'][key].shape)} does not fit parameters "
                                 f"of shape {tuple(value.shape)}")
            value.copy_(saved["state"][key])
        self._step_count = self._column([float(s) for s in saved["steps"]])

    def select(self, param: torch.Tensor, members: Sequence[int]) -> "FusedOptimizer":
        """This optimizer for ``members`` only (their state and steps), over ``param`` (their stack)."""
        kept = FusedOptimizer(param, [self.configs[k] for k in members])
        index = torch.tensor(list(members), device=param.device)
        for key, value in self.state.items():
            kept.state[key].copy_(value.index_select(0, index))
        kept._step_count = self._step_count.index_select(0, index)
        return kept


def train_step(stack: Stack, optimizer: FusedOptimizer, x: torch.Tensor, y: torch.Tensor, lrs: Sequence[float],
               device: torch.device, masked: bool = True, hooks=(), mixed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of every member of ``stack`` on its batch (``x``: (K, B, ...), ``y``: (K, B)) at its
    rate ``lrs[k]``: one forward and backward for all (with ``mixed``, under the trials' bf16
    autocast where the device has it); returns each member's loss (K,) and logits.
    ``hooks(optimizer, args, kwargs)`` run before the step (as torch's optimizer step pre-hooks)."""
    with _precision(device, mixed):
        logits = stack.forward(x)
        losses = vmap(F.cross_entropy)(logits, y)
    stack.flat.grad = None
    losses.sum().backward()
    if masked:
        stack.mask_gradients()
    for hook in hooks:
        hook(optimizer, (), {})
    optimizer.step(lrs)
    if masked:
        stack.apply_masks()
    return losses, logits


def measure_steps(make_model, x: torch.Tensor, y: torch.Tensor, device: torch.device, steps: int,
                  optimizer) -> dict[str, float]:
    """Median seconds of one training step of K = ``len(x)`` models from ``make_model()`` (on
    ``device``) with ``optimizer`` (an ``OptimizerConfig``) on batches ``x`` (K, B, ...), ``y`` (K, B):
    ``separate`` (one after another, as unfused trials train) and ``fused``. What decides whether
    fusing pays for a model on a device: measured there, never assumed."""
    from .loops import train_step as one_step
    from .optimizers import make_optimizer

    k = x.shape[0]
    separate = [make_model() for _ in range(k)]
    optimizers = [make_optimizer(optimizer, m.parameters()) for m in separate]
    fast = device.type == "cuda"
    xs = [x[i].contiguous(memory_format=torch.channels_last) if fast else x[i] for i in range(k)]

    def sync():
        if fast:
            torch.cuda.synchronize(device)

    def one_after_another():
        for model, opt, xb, yb in zip(separate, optimizers, xs, y):
            one_step(model, opt, xb, yb, device)
        sync()

    stack = Stack([make_model() for _ in range(k)])
    fused_optimizer = FusedOptimizer(stack.flat, [optimizer] * k)
    x = torch.stack(xs)  # as FusedLearner stacks its members' batches
    lrs = [optimizer.lr] * k

    def fused():
        train_step(stack, fused_optimizer, x, y, lrs, device, masked=False)
        sync()

    out = {}
    for label, fn in (("separate", one_after_another), ("fused", fused)):
        fn()  # warm-up: the allocator, cuDNN's choice of algorithms
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[label] = statistics.median(times)
    return out


def speedup(sweep, k: int, device: torch.device, steps: int = 3) -> float:
    """How many times faster K members of ``sweep``'s model train fused than one after another on
    ``device``, measured there on batches of its data and its fine-tuning optimizer (> 1: fusing pays)."""
    from .data import DeviceLoader, load_dataset
    from .learner import model_for

    data = load_dataset(sweep.dataset)
    batch = sweep.finetune.batch_size
    xb, yb = next(iter(DeviceLoader(data, batch, torch.Generator().manual_seed(0))))
    x, y = xb.expand(k, *xb.shape).to(device), yb.expand(k, *yb.shape).to(device)

    def make_model():
        torch.manual_seed(0)
        return place(model_for(sweep, data), device)

    times = measure_steps(make_model, x, y, device, steps, sweep.finetune.optimizer)
    return times["separate"] / times["fused"]


# ---------------------------------------------------------------------------------------- the learner

class FusedLearner:
    """A learner (:class:`sweeps.learner.Learner`) of K members trained as one computation: member
    ``k`` is built as :class:`~sweeps.learner.ModelLearner` builds a model alone, from ``seeds[k]``,
    ``weights[k]``, ``snapshots[k]`` and seed ``seed_of[k]``, trained with ``optimizers[k]`` (one
    kind for all) in batches of ``batch_size`` (shared). A member that diverges leaves the stack
    (it stops; the others go on, unchanged)."""

    def __init__(self, sweep, device: torch.device, seeds: Sequence[Seeds], optimizers: Sequence, batch_size: int,
                 weights: Sequence[dict | None] | None = None, snapshots: Sequence[dict | None] | None = None,
                 seed_of: Sequence[int | None] | None = None, masked: bool = True):
        k = len(seeds)
        if k < 1 or len(optimizers) != k:
            raise ValueError(f"a fused learner needs one optimizer per member; got {k} members, {len(optimizers)}")
        weights, snapshots, seed_of = weights or [None] * k, snapshots or [None] * k, seed_of or [None] * k
        self.members, self.device, self._masked = k, torch.device(device), masked
        self.solo: list[ModelLearner] = []
        self._rng: list[dict] = []  # each member's torch RNG states (what the random criterion draws from)
        data = None
        for i in range(k):
            learner = ModelLearner(sweep, device, seeds[i], optimizers[i], batch_size, weights=weights[i],
                                   snapshots=snapshots[i], seed=seed_of[i], masked=masked, data=data)
            data = learner.data  # on the device once, for every member
            self._rng.append(self._rng_now())
            self.solo.append(learner)
        first = self.solo[0]
        self.data, self.layers, self.prunable_params = data, first.layers, first.prunable_params
        self.train_size, self.has_validation = first.train_size, first.has_validation
        self._configs = list(optimizers)
        self._mixed = self._check(first)
        self._base = _skeleton(first.model())
        self._step_hooks: list = []
        self.active = list(range(k))
        self.stack = Stack([m.model() for m in self.solo], self._base)
        self.optimizer = FusedOptimizer(self.stack.flat, self._configs)

    def _check(self, first: ModelLearner) -> bool:
        """Refuse a model that cannot be fused (:func:`check_fusable`); returns whether it trains under
        bf16 autocast fused (else in float32, said once: vmap's BatchNorm may not take bf16 on every GPU)."""
        try:
            check_fusable(first.model(), first._examples)
            return True
        except FusionError as exc:
            if self.device.type != "cuda":
                raise
            check_fusable(first.model(), first._examples, mixed=False)
            print(f"fused training runs in float32 here, not bf16: {exc}", file=sys.stderr, flush=True)
            return False

    def _restack(self, members: Sequence[int]) -> None:
        """Train only ``members`` from now on (the others keep their tensors and stop)."""
        members = list(members)
        position = {m: i for i, m in enumerate(self.active)}
        for m in self.active:
            if m not in members:
                self.stack.release(position[m])
        old = self.optimizer
        self.stack = Stack([self.solo[m].model() for m in members], self._base)
        self.optimizer = old.select(self.stack.flat, [position[m] for m in members])
        self.active = members

    def model(self, member: int) -> nn.Module:
        return self.solo[member].model()

    def add_step_hook(self, hook) -> None:
        """Run ``hook(optimizer, args, kwargs)`` before every fused optimizer step."""
        self._step_hooks.append(hook)

    def _rng_now(self) -> dict:
        now = {"torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            now["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return now

    def _set_rng(self, states: dict) -> None:
        torch.set_rng_state(states["torch_rng"])
        if "cuda_rng" in states and self.device.type == "cuda":
            torch.cuda.set_rng_state(states["cuda_rng"], self.device)

    @contextlib.contextmanager
    def _own_rng(self, member: int):
        """torch's RNGs as member ``member`` left them (its random criterion draws from them)."""
        outside = self._rng_now()
        self._set_rng(self._rng[member])
        try:
            yield
        finally:
            self._rng[member] = self._rng_now()
            self._set_rng(outside)

    # ------------------------------------------------------------------ what a plan asks

    def prune(self, targets: Sequence[float | None]) -> list[bool | None]:
        """Prune each member with a target, on its own weights (and gradients, from its own data stream)."""
        out: list[bool | None] = []
        for k, target in enumerate(targets):
            if target is None:
                out.append(None)
                continue
            with self._own_rng(k):
                [ok] = self.solo[k].prune([target])
            out.append(ok)
        self.stack.gather_masks()
        self.optimizer.clear_masked(self.stack.mask)
        return out

    def start(self, starts: Sequence[Start | None]) -> None:
        """Start each member's phase from the weights its ``starts[k]`` names; a fresh optimizer
        state for the member where it says so."""
        for k, start in enumerate(starts):
            if start is None:
                continue
            load_start_weights(self.solo[k].model(), self.solo[k].start_weights(start))
            if start.fresh_optimizer and k in self.active:
                self.optimizer.reset(self.active.index(k))

    def train_epoch(self, lrs: Sequence[float | None]) -> list[EpochStats | None]:
        """One epoch of every member with a learning rate, in one forward/backward per step."""
        running = [k for k, lr in enumerate(lrs) if lr is not None]
        if not running:
            return [None] * self.members
        if running != self.active:
            self._restack(running)
        rates = [lrs[k] for k in running]
        stack = self.stack
        self._base.train()
        n = len(running)
        total_loss = torch.zeros(n, device=self.device, dtype=torch.get_default_dtype())
        correct = torch.zeros(n, device=self.device, dtype=torch.long)
        seen = 0
        start = time.perf_counter()
        for batches in zip(*[self.solo[k].loader for k in running]):
            x = torch.stack([xb for xb, _ in batches])
            y = torch.stack([yb for _, yb in batches])
            losses, logits = train_step(stack, self.optimizer, x, y, rates, self.device, self._masked,
                                        self._step_hooks, self._mixed)
            total_loss += full_precision(losses.detach()) * y.shape[1]
            correct += (logits.argmax(-1) == y).sum(1)
            seen += y.shape[1]
        seconds = time.perf_counter() - start
        finite = (torch.isfinite(total_loss) & stack.finite()).tolist()
        losses_out, accuracy = (total_loss.double() / seen).tolist(), (correct.double() / seen).tolist()
        out: list[EpochStats | None] = [None] * self.members
        for i, k in enumerate(running):
            out[k] = EpochStats(losses_out[i], accuracy[i], seconds, rates[i], finite[i])
        return out

    @torch.no_grad()
    def evaluate(self, which: Sequence[bool], split: str = "test") -> list[tuple[float, float] | None]:
        """(mean loss, accuracy) on ``split`` in eval mode of each member wanted, all in one pass."""
        out: list[tuple[float, float] | None] = [None] * self.members
        for k, w in enumerate(which):
            if w and k not in self.active:  # a member that left the stack: alone
                out[k] = self.solo[k].evaluate([True], split)[0]
        if not any(w and k in self.active for k, w in enumerate(which)):
            return out
        self._base.eval()
        n = len(self.active)
        loss = torch.zeros(n, dtype=torch.float64, device=self.device)
        correct = torch.zeros(n, dtype=torch.long, device=self.device)
        seen = 0
        for xb, yb in self.data.batches(split, 1000):
            with _precision(self.device, self._mixed):
                logits = self.stack.forward(self.data.normalise(xb), shared_input=True)
            logits = full_precision(logits)
            loss += torch.stack([F.cross_entropy(logits[i], yb, reduction="sum") for i in range(n)]).double()
            correct += (logits.argmax(-1) == yb).sum(1)
            seen += yb.shape[0]
        self._base.train()
        losses, right = (loss / seen).tolist(), correct.tolist()
        for i, k in enumerate(self.active):
            if which[k]:
                out[k] = (losses[i], right[i] / seen)
        return out

    def measure(self, which: Sequence[bool]) -> list[dict | None]:
        """Each wanted member's sparsity report (:meth:`sweeps.learner.ModelLearner.measure`)."""
        return [self.solo[k].measure([True])[0] if w else None for k, w in enumerate(which)]

    def weights(self, member: int) -> dict:
        return self.solo[member].weights()

    # ------------------------------------------------------------------ continuing exactly

    def state(self) -> dict:
        """Every member's model (masks included), data stream and RNG, which members still train,
        and the optimizer's state: all needed to continue bit for bit."""
        members = [{"model": {k: v.detach().cpu().clone() for k, v in m.model().state_dict().items()},
                    "generator": m.generator.get_state(), **{k2: v.clone() for k2, v in self._rng[k].items()}}
                   for k, m in enumerate(self.solo)]
        return {"members": members, "active": list(self.active), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        """Continue from :meth:`state` (of a group of the same members)."""
        if len(state["members"]) != self.members:
            raise ValueError(f"a state of {len(state['members'])} members does not fit a group of {self.members}")
        for k, (learner, saved) in enumerate(zip(self.solo, state["members"])):
            pc.load_state_dict(learner.model(), saved["model"])
            learner.generator.set_state(saved["generator"])
            self._rng[k] = {key: saved[key].clone() for key in ("torch_rng", "cuda_rng") if key in saved}
        self.active = list(range(self.members))
        self.stack = Stack([m.model() for m in self.solo], self._base)
        self.optimizer = FusedOptimizer(self.stack.flat, self._configs)
        if state["active"] != self.active:
            self._restack(state["active"])
        self.optimizer.load_state_dict(state["optimizer"])
