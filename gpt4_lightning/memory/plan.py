"""The plan: parameters, gradients and optimizer state counted on the real model built on meta, FSDP2's
and DDP's buffers replayed along a `simulate`d step, and the peak over it (see the package docstring)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from gpt4_lightning.memory.simulate import PRECISIONS, Simulation, simulate
from gpt4_lightning.model import GPT4, GPT4Config
from gpt4_lightning.parallel.config import ParallelConfig
from gpt4_lightning.utils.names import torch_dtype

GIB = 2**30
STRATEGIES = ("single", "ddp", "fsdp")


# --- parameters ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamGroups:
    """Parameter shapes of a GPT4, by FSDP unit: the root (`Transformer`: embedding, final norm, head,
    buffers-free) and each decoder block."""

    root: tuple[tuple[int, ...], ...]
    blocks: tuple[tuple[tuple[int, ...], ...], ...]

    @property
    def groups(self) -> list[tuple[tuple[int, ...], ...]]:
        return [self.root, *self.blocks]

    def numel(self, group: tuple[tuple[int, ...], ...] | None = None) -> int:
        groups = [group] if group is not None else self.groups
        return sum(math.prod(shape) for g in groups for shape in g)


def param_groups(cfg: GPT4Config) -> ParamGroups:
    """The real model's parameter shapes, from a build on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = GPT4.from_config(cfg)
    blocks = model.blocks
    in_blocks = {id(p) for p in blocks.parameters()}
    root = tuple(tuple(p.shape) for p in model.parameters() if id(p) not in in_blocks)
    return ParamGroups(root, tuple(tuple(tuple(p.shape) for p in block.parameters()) for block in blocks))


def padded_numel(shape: tuple[int, ...], world: int) -> int:
    """Elements of a parameter once FSDP2 pads dim 0 to a multiple of the world size."""
    if not shape:
        return world
    return math.ceil(shape[0] / world) * world * math.prod(shape[1:])


def group_padded_numel(group: tuple[tuple[int, ...], ...], world: int) -> int:
    return sum(padded_numel(shape, world) for shape in group)


# --- the plan ------------------------------------------------------------------------------------

@dataclass
class MemoryPlan:
    """Bytes per rank at the peak of a steady-state training step, and what makes it up.

    The components (`params` … `transient`) are what is alive *at the peak* and sum to `peak`:
    `grads` are the gradients alive then (the previous step's during the forward, the ones produced so
    far during the backward), `comm_buffers` DDP's buckets or FSDP2's unsharded / all-gather /
    reduce-scatter buffers, `activations` the forward's tensors still alive, `transient` the rest.
    `activations_saved` is what the forward leaves for the backward (at its end), split into
    `activations_per_block` (mean over decoder blocks) and `activations_outside_blocks` (embedding,
    final norm, logits and loss, caches)."""

    config: dict[str, Any]
    n_params: int
    params: int
    grads: int
    optimizer: int
    comm_buffers: int
    activations: int
    transient: int
    peak: int
    peak_phase: str  # forward | backward | optimizer step
    activations_saved: int
    activations_per_block: int
    activations_outside_blocks: int
    grads_total: int  # all gradients of this rank (after backward)
    phases: dict[str, int] = field(default_factory=dict)  # peak of each phase
    # what is alive at each phase's peak: grads, comm_buffers, activations, transient (params and optimizer: always)
    phase_parts: dict[str, dict[str, int]] = field(default_factory=dict)

    COMPONENTS = ("params", "grads", "optimizer", "comm_buffers", "activations", "transient", "peak")

    @property
    def checkpoint_staging(self) -> int:
        """Host bytes a background checkpoint (`checkpoint.async_save`) stages besides the step's peak: this rank's
        parameters and optimizer state, what its share of a checkpoint holds (on CPU, the same memory as `peak`)."""
        return self.params + self.optimizer

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SIM_CACHE: dict[tuple, Simulation] = {}


def _simulation(cfg: GPT4Config, micro_batch: int, seq_len: int, precision: str, ac: bool, ac_every: int,
                param_dtype: torch.dtype | None, dense_bias: bool, document_mask: bool) -> Simulation:
    key = (cfg, micro_batch, seq_len, precision, ac, ac_every if ac else 0, param_dtype, dense_bias, document_mask)
    if key not in _SIM_CACHE:
        _SIM_CACHE.clear()  # one at a time: a simulation holds per-op series
        _SIM_CACHE[key] = simulate(cfg, micro_batch, seq_len, precision, ac, ac_every, param_dtype, dense_bias,
                                   document_mask)
    return _SIM_CACHE[key]


def plan_memory(cfg: GPT4Config, *, exact: bool = False, **step: Any) -> MemoryPlan:
    """Plan one rank's memory for a training step (see the package docstring for the model).

    step: strategy: "single" (one process), "ddp" or "fsdp" (FSDP2 as `parallelize.apply_fsdp` applies it);
    world_size; precision: fp32 | bf16_mixed | bf16_true (Lightning's spellings too); micro_batch; seq_len;
    activation_checkpointing, ac_every; param_dtype / reduce_dtype / reshard_after_forward: the `parallel`
    config keys (FSDP2 only); device: "cpu" or "cuda" (the attention kernel and AdamW's implementation differ);
    document_mask: `data.document_mask` (on CPU its dense per-batch `(b, 1, n, n)` mask; CUDA's block mask is small).

    The decoder blocks are identical (with `ac_every=k`: identical runs of k), so every quantity of the plan is
    linear in the depth away from the ends: unless `exact`, the step is simulated at depths 3k, 4k and 5k and,
    where the two increments agree, each phase's peak and its parts extrapolated to the model's depth (a deep
    model's plan in a second or two; equal to the exact plan, a test checks); where they do not,
    every block is simulated. `exact=True` always simulates every block."""
    k = step.get("ac_every", 1) if step.get("activation_checkpointing") else 1
    if exact or k < 1 or cfg.depth <= 5 * k or cfg.depth % k:
        return _plan_simulated(cfg, **step)
    # near the ends FSDP2's backward prefetch and the last block's unsharded forward shape the peaks: simulate
    # 3k, 4k and 5k blocks and extrapolate only where the two increments agree exactly, else simulate it all
    s3, a, b = (_plan_simulated(dataclasses.replace(cfg, depth=d), **step) for d in (3 * k, 4 * k, 5 * k))
    if not all(b.phases[ph] - a.phases[ph] == a.phases[ph] - s3.phases[ph] and
               all(b.phase_parts[ph][c] - a.phase_parts[ph][c] == a.phase_parts[ph][c] - s3.phase_parts[ph][c]
                   for c in a.phase_parts[ph]) for ph in a.phases):
        return _plan_simulated(cfg, **step)
    steps = (cfg.depth - 4 * k) // k

    def lin(x: int, y: int) -> int:
        return x + steps * (y - x)

    phases = {ph: lin(a.phases[ph], b.phases[ph]) for ph in a.phases}
    phase = max(phases, key=phases.__getitem__)
    parts = {ph: {c: lin(a.phase_parts[ph][c], b.phase_parts[ph][c]) for c in a.phase_parts[ph]} for ph in a.phases}
    return dataclasses.replace(
        b, config={**b.config, "model": dataclasses.asdict(cfg)}, n_params=lin(a.n_params, b.n_params),
        params=lin(a.params, b.params), optimizer=lin(a.optimizer, b.optimizer), grads_total=lin(a.grads_total,
        b.grads_total), activations_saved=lin(a.activations_saved, b.activations_saved), peak=phases[phase],
        peak_phase=phase, phases=phases, phase_parts=parts, **parts[phase])


def _plan_simulated(cfg: GPT4Config, *, strategy: str = "single", world_size: int = 1, precision: str = "fp32",
                    micro_batch: int, seq_len: int, activation_checkpointing: bool = False, ac_every: int = 1,
                    param_dtype: str | None = None, reduce_dtype: str | None = None,
                    reshard_after_forward: bool = True, device: str = "cpu",
                    document_mask: bool = False) -> MemoryPlan:
    """`plan_memory` with every block simulated.

    Long on purpose: the phases (forward, backward, optimizer step) are summed from the same per-group
    sizes in one pass, top to bottom; split up, each part would need all of them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} must be one of {STRATEGIES}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {sorted(PRECISIONS)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} must be 'cpu' or 'cuda'")
    if world_size < 1 or (strategy == "single" and world_size != 1):
        raise ValueError(f"world_size={world_size} must be >= 1 (and 1 for strategy='single')")
    if micro_batch < 1 or seq_len < 1:
        raise ValueError(f"micro_batch={micro_batch} and seq_len={seq_len} must be >= 1")
    ParallelConfig(activation_checkpointing, ac_every, param_dtype=param_dtype, reduce_dtype=reduce_dtype)  # checks
    fsdp = strategy == "fsdp"
    orig_dtype, _ = PRECISIONS[precision]
    compute_dtype = torch_dtype(param_dtype) if fsdp and param_dtype else orig_dtype
    reduce = torch_dtype(reduce_dtype) if fsdp and reduce_dtype else compute_dtype
    ob, pb, rb = orig_dtype.itemsize, compute_dtype.itemsize, reduce.itemsize
    world = world_size if strategy != "single" else 1
    shard_world = world if fsdp else 1

    groups = param_groups(cfg)
    n_params = groups.numel()
    padded = [group_padded_numel(g, shard_world) for g in groups.groups]  # root first, then blocks
    local = [n // shard_world for n in padded]
    params = sum(local) * ob
    grads_total = params
    optimizer = 2 * params  # AdamW: exp_avg, exp_avg_sq of the parameters' dtype
    largest_local = max(math.ceil(s[0] / shard_world) * math.prod(s[1:]) if s else 1
                        for g in groups.groups for s in g)
    opt_temp = params if device == "cuda" else 2 * largest_local * ob  # foreach on CUDA, single-tensor on CPU

    sim = _simulation(cfg, micro_batch, seq_len, precision, activation_checkpointing, ac_every,
                      compute_dtype if fsdp and param_dtype else None, dense_bias=device == "cpu",
                      document_mask=document_mask)
    fe = sim.forward_end
    buckets = grads_total if strategy == "ddp" else 0

    best: dict[str, Any] = {"peak": -1}
    phases: dict[str, int] = {}
    phase_parts: dict[str, dict[str, int]] = {}

    def consider(phase: str, grads: int, comm: int, act: int, tmp: int) -> None:
        total = params + optimizer + grads + comm + act + tmp
        if total > phases.get(phase, -1):
            phases[phase] = total
            phase_parts[phase] = dict(grads=grads, comm_buffers=comm, activations=act, transient=tmp)
        if total > best["peak"]:
            best.update(peak=total, phase=phase, grads=grads, comm=comm, act=act, tmp=tmp)

    if not fsdp:
        for t in range(len(sim.act)):
            forward = t <= fe  # the boundary sample too: zero_grad runs after it
            consider("forward" if forward else "backward", grads_total if forward else sim.grad[t], buckets,
                     sim.act[t], sim.tmp[t])
    else:
        _walk_fsdp(sim, consider, padded=padded, world=shard_world, ob=ob, pb=pb, rb=rb,
                   reshard_after_forward=reshard_after_forward)
    consider("optimizer step", grads_total, buckets, 0, sim.persistent + opt_temp)

    per_block = sim.activations_per_block
    mean_block = sum(per_block) // len(per_block) if per_block else 0
    config = dict(strategy=strategy, world_size=world, precision=precision, micro_batch=micro_batch,
                  seq_len=seq_len, activation_checkpointing=activation_checkpointing,
                  ac_every=ac_every if activation_checkpointing else None, param_dtype=param_dtype if fsdp else None,
                  reduce_dtype=reduce_dtype if fsdp else None, device=device, model=dataclasses.asdict(cfg))
    return MemoryPlan(config=config, n_params=n_params, params=params, grads=best["grads"], optimizer=optimizer,
                      comm_buffers=best["comm"], activations=best["act"], transient=best["tmp"], peak=best["peak"],
                      peak_phase=best["phase"], activations_saved=sim.activations, activations_per_block=mean_block,
                      activations_outside_blocks=sim.activations - sum(per_block), grads_total=grads_total,
                      phases=phases, phase_parts=phase_parts)


_EVENT_ORDER = {"fw_post": 0, "bw_post": 1, "fw_pre": 2, "bw_pre": 3}


def _walk_fsdp(sim: Simulation, consider: Any, *, padded: list[int], world: int, ob: int, pb: int, rb: int,
               reshard_after_forward: bool) -> None:
    """Replay the simulated step with FSDP2's buffers (package docstring), calling `consider` per op and
    at each momentary high point (an all-gather next to the previous one, a reduce-scatter copy-in).

    Long on purpose: one state machine over the op sequence (what is gathered, in flight, accumulated),
    read in program order as FSDP2 runs it."""
    root, depth = -1, len(padded) - 1
    unsharded_bytes = {g: padded[g + 1] * pb for g in range(-1, depth)}  # group -> unsharded params
    gather_bytes = {g: (unsharded_bytes[g] if world > 1 else 0) for g in unsharded_bytes}  # flat all-gather output
    rs_bytes = {g: padded[g + 1] * rb for g in unsharded_bytes}
    shard_grad = {g: padded[g + 1] // world * ob for g in unsharded_bytes}
    sharded_grads_prev = sum(shard_grad.values())

    unsharded: dict[int, int] = {}
    prefetched: dict[int, int] = {}
    state = {"held_gather": 0, "rs": 0, "sharded_done": 0}
    grad_alive = dict.fromkeys(unsharded_bytes, 0)

    def comm() -> int:
        return sum(unsharded.values()) + sum(prefetched.values()) + state["held_gather"] + state["rs"]

    def grads(t: int) -> int:
        if t <= sim.forward_end:
            return sharded_grads_prev
        return state["sharded_done"] + sum(grad_alive.values())

    def spike(t: int, extra: int, phase: str) -> None:
        t = max(min(t, len(sim.act) - 1), 0)
        consider(phase, grads(t), comm() + extra, sim.act[t], sim.tmp[t])

    def unshard(g: int, t: int, phase: str) -> None:
        if g in unsharded:
            return
        gathered = prefetched.pop(g, None)
        if gathered is None:
            gathered = gather_bytes[g]
            spike(t, gathered, phase)  # all-gather output next to what is held
        spike(t, gathered + unsharded_bytes[g], phase)  # copy-out
        unsharded[g] = unsharded_bytes[g]
        if phase == "forward":
            state["held_gather"] = gathered  # freed at the next copy-out (the previous one is freed now)
        # in backward the all-gather output is freed right after the copy-out

    def reduce(g: int, t: int) -> None:
        unsharded.pop(g, None)  # reshard after backward
        state["rs"] = 0  # the previous reduce-scatter input is waited on and freed first
        spike(t, rs_bytes[g] + shard_grad[g], "backward")  # copy-in: unsharded grads still alive
        grad_alive[g] = 0
        state["rs"] = rs_bytes[g]
        state["sharded_done"] += shard_grad[g]

    events = sorted(sim.events, key=lambda e: (e[0], _EVENT_ORDER[e[1]]))
    grad_events = sorted(sim.grad_events)
    ei = gi = 0
    for t in range(len(sim.act)):
        while ei < len(events) and events[ei][0] <= t:
            _, kind, g = events[ei]
            ei += 1
            when = t - 1
            if kind == "fw_pre":
                if g != root:
                    spike(when, gather_bytes[g], "forward")  # the previous all-gather output is still held
                    state["held_gather"] = 0
                unshard(g, when, "forward")
            elif kind == "fw_post":
                if reshard_after_forward and g != depth - 1:
                    unsharded.pop(g, None)
                if g == root:
                    state["held_gather"] = 0
            elif kind == "bw_pre":
                unshard(g, when, "backward")
                target = depth - 1 if g == root else g - 1  # the previous module in forward order
                if target >= 0 and target not in unsharded and target not in prefetched:
                    prefetched[target] = gather_bytes[target]
            elif kind == "bw_post":
                reduce(g, when)
        while gi < len(grad_events) and grad_events[gi][0] <= t:
            _, g, nbytes = grad_events[gi]
            gi += 1
            if t > sim.forward_end:
                grad_alive[g] += nbytes
        consider("forward" if t <= sim.forward_end else "backward", grads(t), comm(), sim.act[t], sim.tmp[t])
    reduce(root, len(sim.act) - 1)  # the root's post-backward runs in FSDP's final callback
