"""Memory per rank of a training step: a planner, and a callback that measures the real peak.

`plan_memory(cfg, strategy=..., world_size=..., precision=..., micro_batch=..., seq_len=...)` gives the
bytes one rank holds at the peak of a steady-state training step (step >= 2: the optimizer state and the
previous step's gradients exist), split into parameters, gradients, optimizer state, communication
buffers, activations and transients. `PeakMemory` logs what a real run used (`mem/*`), and
`bench/memory_plan.py --measure` compares the two.

The model of a step
-------------------
Lightning's automatic optimisation runs, per step: `training_step` (forward + loss, under autocast for
bf16-mixed), `optimizer.zero_grad()` (set_to_none, *after* the forward: the previous step's gradients
are alive during the forward), `backward`, gradient clipping (in place), `optimizer.step()`. The plan is
the maximum over that sequence, op by op, of

    params + optimizer state + gradients alive + communication buffers alive + activations + transients

- **Parameters, gradients, optimizer state** are counted on the real model built on the meta device
  (`GPT4.from_config`), per FSDP unit: each decoder block, and the root (embedding, final norm, logits
  head). fp32 and bf16-mixed (Lightning keeps fp32 weights and autocasts the compute) hold 4 bytes per
  parameter, bf16-true 2; gradients have the parameters' dtype, AdamW keeps two states of it.
- **Activations and transients** are *simulated*: one forward + loss + backward of the real model (with
  `parallelize`'s activation checkpointing) on fake CPU tensors (`FakeTensorMode`: shapes, dtypes and
  storages, no data, nothing allocated) under CPU autocast for bf16-mixed, while a dispatch mode follows
  every storage an op creates until it is gone. Storages created in the forward and still alive when the
  loss is returned are **activations** (saved for backward, the inputs that checkpointing keeps, the
  cached ALiBi bias); parameter gradients are **gradients**; everything else (forward temporaries, the
  logits' float copy, gradients of activations, blocks recomputed under checkpointing) is **transient**.
  The model's parameters and buffers are excluded by storage. This includes what is easy to miss, e.g.
  autocast's cache of bf16 copies of fp32 weights, kept until the forward ends (saved for backward
  without checkpointing; a transient of the whole model's size in bf16 with it).
- **Optimizer step**: params + grads + states + AdamW's temporaries: single-tensor AdamW on CPU (`sqrt`
  and a division: 2x the largest local parameter; measured), `foreach` AdamW on CUDA (one copy of all
  local parameters), plus the caches that outlive the step (the ALiBi bias).
- **DDP** (Lightning's `DDPStrategy`: `gradient_as_bucket_view=False`): full parameters, gradients and
  optimizer state per rank, plus the reducer's flat gradient buckets, a second copy of the gradients that
  lives as long as the model.
- **FSDP2** (`ModelParallelStrategy` + `parallelize.apply_fsdp`: `fully_shard` per block, then on the
  root with the same `reshard_after_forward`, the last block never resharded after forward): parameters,
  gradients and optimizer state are this rank's shards (dim 0 padded to a multiple of the world size, as
  FSDP2 pads). On top, replayed along the simulated op sequence at its module hooks, what torch's
  `FSDPParamGroup` holds (collectives in program order, one reduce-scatter input kept in flight):
  forward: the root's unsharded parameters from its pre- to its post-forward; per block its flat
  all-gather output (`param_dtype`) and unsharded copy while it runs, the previous all-gather output until
  the next copy-out; the last block stays unsharded until its backward. Backward: the root is gathered
  again when the logits' gradient arrives and stays unsharded, with its unsharded gradients, to the end
  (its forward input, token ids, carries no gradient, so its post-backward runs in FSDP's final
  callback); each block is unsharded while the next one is prefetched, its unsharded gradients
  (`param_dtype`) accumulate, and at its post-backward they are copied into a reduce-scatter input
  (`reduce_dtype`), kept until the next block's reduce-scatter; the sharded gradient is a view of the
  reduce-scatter output. Checked against torch's `FSDPMemTracker` (the real `fully_shard` on fake
  tensors with a fake process group: equal peaks on small configs and on gpt4_2b over 8 ranks) and
  against measured RSS (`bench/memory_plan.py --measure`); see BENCHMARKS.md.

What is approximated
--------------------
- The simulation runs the CPU code path: `scaled_dot_product_attention` with the cached dense
  ALiBi+causal bias (heads x n x n) and chunked queries. `device="cuda"` plans FlexAttention, which has
  no CPU backward to simulate, as SDPA's causal kernel without a bias: both save q, k, v, the output and
  the logsumexp and build nothing n x n. bf16-mixed uses CPU autocast's op lists (CUDA's keep a few more
  ops, e.g. norms, in fp32). Compiled blocks (`parallel.compile`) may save fewer tensors: not modelled.
- The planner counts tensors. On CUDA, the caching allocator's fragmentation and reserved-but-free
  memory, the CUDA context and NCCL buffers are not included (compare with `max_memory_allocated`, as
  `PeakMemory` logs). On CPU, what glibc's malloc keeps after a free is not included either: by default
  its mmap threshold rises to 32 MiB as large blocks are freed, and freed activations then stay in the
  heap (measured: RSS 0.45-0.7 GiB above the live tensors on the benchmark configs); with a fixed
  threshold (`MALLOC_MMAP_THRESHOLD_=131072`) RSS follows the tensors.
- Pipeline/tensor parallelism, gradient accumulation and CPU offload are not modelled.

The `PeakMemory` callback (gpt4_lightning/callbacks.py) measures what this module plans.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .model import GPT4, GPT4Config
from .model.kernels import AttentionBias
from .parallelize import DTYPES, ParallelConfig, parallelize

GIB = 2**30
STRATEGIES = ("single", "ddp", "fsdp")
# precision name (ours and Lightning's) -> (parameter dtype, autocast dtype or None)
PRECISIONS: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "fp32": (torch.float32, None), "32-true": (torch.float32, None), "32": (torch.float32, None),
    "bf16_mixed": (torch.float32, torch.bfloat16), "bf16-mixed": (torch.float32, torch.bfloat16),
    "bf16_true": (torch.bfloat16, None), "bf16-true": (torch.bfloat16, None),
}


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
    blocks = model.net.decoder.blocks
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


# --- the simulation of forward + backward on fake tensors ------------------------------------------

@dataclass
class Simulation:
    """Live bytes after every op of one forward + loss + backward (one rank, unsharded model).

    act/tmp/grad[t]: bytes alive after op t that are activations (created in forward, alive at its end),
    transients, and parameter gradients. events: (op index, kind, group) with kind one of fw_pre,
    fw_post, bw_pre, bw_post and group -1 for the root, i for block i. grad_events: (op index, group,
    bytes) when a parameter's gradient is set. forward_end: ops [0, forward_end) are the forward + loss;
    sample forward_end is the state after it (what the forward left), before the backward.
    """

    act: list[int]
    tmp: list[int]
    grad: list[int]
    events: list[tuple[int, str, int]]
    grad_events: list[tuple[int, int, int]]
    forward_end: int
    activations: int  # alive at the end of the forward
    activations_per_block: list[int]  # what each block's forward left alive
    persistent: int  # created in forward, still alive after backward (caches: the ALiBi bias)
    param_dtype: torch.dtype


class _StorageTracker:
    """A dispatch mode following every storage an op returns, from birth to death (polled after each op)."""

    def __init__(self, exclude: set[int]) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self
        self.exclude = exclude
        self.live: dict[int, tuple[Any, int, int]] = {}  # key -> (weakref, nbytes, index in `born`)
        self.born: list[tuple[int, int]] = []  # (op index born, nbytes)
        self.died: dict[int, int] = {}  # index in `born` -> op index after which it was gone
        self.ops = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker.prune()
                for t in tree_leaves(out):
                    if isinstance(t, Tensor) and t.layout == torch.strided:
                        tracker.add(StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes())
                tracker.ops += 1
                return out

        self.mode = Mode()

    def prune(self) -> None:
        for key in [k for k, (ref, _, _) in self.live.items() if ref.expired()]:
            self.died[self.live.pop(key)[2]] = self.ops  # gone before op `ops` finished

    def add(self, ref: Any, nbytes: int) -> None:
        key = ref.cdata
        if key in self.exclude:
            return
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = (ref, nbytes, len(self.born))
            self.born.append((self.ops, nbytes))
        elif entry[1] != nbytes:  # resized in place
            idx = entry[2]
            self.born[idx] = (self.born[idx][0], max(self.born[idx][1], nbytes))

    def key_index(self, t: Tensor) -> int | None:
        from torch.multiprocessing.reductions import StorageWeakRef

        entry = self.live.get(StorageWeakRef(t.untyped_storage()).cdata)
        return entry[2] if entry is not None else None


@contextlib.contextmanager
def _fake_token_checks():
    """`check_tokens` reads token values, which fake tensors do not have: skip the value check (shapes
    are still those of a real batch) while simulating."""
    from .model import transformer

    original = transformer.check_tokens
    transformer.check_tokens = lambda tokens, cfg, offset=0: None
    try:
        yield
    finally:
        transformer.check_tokens = original


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def simulate(cfg: GPT4Config, micro_batch: int, seq_len: int, precision: str = "fp32",
             activation_checkpointing: bool = False, ac_every: int = 1,
             param_dtype: torch.dtype | None = None, dense_bias: bool = True) -> Simulation:
    """Run forward + loss + backward of `GPT4.from_config(cfg)` on fake CPU tensors of shape
    `(micro_batch, seq_len + 1)` and follow every storage (see `Simulation`).

    `param_dtype` overrides the dtype the parameters compute in (FSDP2's mixed-precision policy).
    `dense_bias=False` stands in for CUDA's FlexAttention, which has no CPU backward to simulate: SDPA's
    causal kernel (`is_causal`, no bias), which like FlexAttention builds nothing n x n and saves the
    same tensors (q, k, v, output, logsumexp). True: the CPU path, with its cached dense ALiBi bias."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.multiprocessing.reductions import StorageWeakRef

    orig_dtype, autocast_dtype = PRECISIONS[precision]
    dtype = param_dtype or orig_dtype
    with FakeTensorMode(), _fake_token_checks():
        with _default_dtype(dtype):  # as Lightning's bf16-true builds the model (`.to` cannot swap fake params)
            model = GPT4.from_config(cfg)
        parallelize(model, ParallelConfig(activation_checkpointing=activation_checkpointing, ac_every=ac_every))
        if not dense_bias:
            model.net.decoder.attention_bias = lambda *args: AttentionBias(None, None)
        tensors = [*model.parameters(), *model.buffers()]
        tracker = _StorageTracker({StorageWeakRef(t.untyped_storage()).cdata for t in tensors})
        events: list[tuple[int, str, int]] = []
        grad_events: list[tuple[int, int, int]] = []
        blocks = model.net.decoder.blocks

        def mark(kind: str, group: int) -> None:
            events.append((tracker.ops, kind, group))

        def grad_hook(group: int):
            def hook(grad: Tensor) -> None:
                mark("bw_post", group)
            return hook

        def pre_forward(group: int):
            def hook(module: nn.Module, args: tuple) -> None:
                mark("fw_pre", group)
                if group >= 0 and args[0].requires_grad:  # its gradient is ready once the block's backward is done
                    args[0].register_hook(grad_hook(group))
            return hook

        def post_forward(group: int):
            def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
                mark("fw_post", group)
                out.register_hook(lambda grad: mark("bw_pre", group))
            return hook

        handles = []
        for group, module in [(-1, model.net), *enumerate(blocks)]:
            handles.append(module.register_forward_pre_hook(pre_forward(group)))
            handles.append(module.register_forward_hook(post_forward(group)))
        owner = {id(p): -1 for p in model.parameters()}
        for i, block in enumerate(blocks):
            owner.update({id(p): i for p in block.parameters()})
        grad_index: set[int] = set()

        def on_grad(p: Tensor) -> None:
            idx = tracker.key_index(p.grad)
            if idx is not None:
                grad_index.add(idx)
            grad_events.append((tracker.ops, owner[id(p)], p.grad.untyped_storage().nbytes()))

        for p in model.parameters():
            handles.append(p.register_post_accumulate_grad_hook(on_grad))

        tokens = torch.randint(0, cfg.num_tokens, (micro_batch, seq_len + 1))
        decoder, cpu = model.net.decoder, torch.device("cpu")
        if dense_bias and decoder.alibi is not None:
            # steady state: the ALiBi bias is built on the first step and cached; count it, not its construction
            bias = decoder.attention_bias(decoder.kernel_for(cpu, seq_len, seq_len), seq_len, seq_len, cpu,
                                          autocast_dtype or dtype).dense
            tracker.add(StorageWeakRef(bias.untyped_storage()), bias.untyped_storage().nbytes())
        with tracker.mode:
            with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                loss = model.loss(tokens)
            tracker.prune()  # what the forward freed on its way out (the logits), then a boundary sample
            forward_end = tracker.ops
            tracker.ops += 1
            alive_at_forward_end = {idx for _, _, idx in tracker.live.values()}
            loss.backward()
            tracker.prune()
            total_ops = tracker.ops
        for h in handles:
            h.remove()
        alive_at_end = {idx for _, _, idx in tracker.live.values()}

    # per-op series by category, from birth/death indices (difference arrays)
    series = {"act": [0] * (total_ops + 1), "tmp": [0] * (total_ops + 1), "grad": [0] * (total_ops + 1)}
    for idx, (born, nbytes) in enumerate(tracker.born):
        died = tracker.died.get(idx, total_ops)
        if idx in grad_index:
            kind = "grad"
        elif born < forward_end and died > forward_end:
            kind = "act"
        else:
            kind = "tmp"
        series[kind][born] += nbytes
        series[kind][died] -= nbytes
    for values in series.values():
        running = 0
        for t in range(total_ops + 1):
            running += values[t]
            values[t] = running
    # what each block's forward left for the backward: storages born between its pre- and post-forward
    spans = {g: [0, 0] for g in range(len(blocks))}
    for op, kind, g in events:
        if g >= 0 and kind in ("fw_pre", "fw_post"):
            spans[g][kind == "fw_post"] = op
    block_live = [sum(tracker.born[idx][1] for idx in alive_at_forward_end if lo <= tracker.born[idx][0] < hi)
                  for lo, hi in spans.values()]
    persistent = sum(tracker.born[idx][1] for idx in alive_at_end - grad_index if tracker.born[idx][0] < forward_end)
    activations = sum(tracker.born[idx][1] for idx in alive_at_forward_end)
    return Simulation(act=series["act"][:total_ops], tmp=series["tmp"][:total_ops], grad=series["grad"][:total_ops],
                      events=events, grad_events=grad_events, forward_end=forward_end, activations=activations,
                      activations_per_block=block_live, persistent=persistent, param_dtype=dtype)


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

    COMPONENTS = ("params", "grads", "optimizer", "comm_buffers", "activations", "transient", "peak")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


_SIM_CACHE: dict[tuple, Simulation] = {}


def _simulation(cfg: GPT4Config, micro_batch: int, seq_len: int, precision: str, ac: bool, ac_every: int,
                param_dtype: torch.dtype | None, dense_bias: bool) -> Simulation:
    key = (cfg, micro_batch, seq_len, precision, ac, ac_every if ac else 0, param_dtype, dense_bias)
    if key not in _SIM_CACHE:
        _SIM_CACHE.clear()  # one at a time: a simulation holds per-op series
        _SIM_CACHE[key] = simulate(cfg, micro_batch, seq_len, precision, ac, ac_every, param_dtype, dense_bias)
    return _SIM_CACHE[key]


def plan_memory(cfg: GPT4Config, *, strategy: str = "single", world_size: int = 1, precision: str = "fp32",
                micro_batch: int, seq_len: int, activation_checkpointing: bool = False, ac_every: int = 1,
                param_dtype: str | None = None, reduce_dtype: str | None = None,
                reshard_after_forward: bool = True, device: str = "cpu") -> MemoryPlan:
    """Plan one rank's memory for a training step (see the module docstring for the model).

    strategy: "single" (one process), "ddp" or "fsdp" (FSDP2 as `parallelize.apply_fsdp` applies it);
    precision: fp32 | bf16_mixed | bf16_true (Lightning's spellings too); param_dtype / reduce_dtype /
    reshard_after_forward: the `parallel` config key (FSDP2 only); device: "cpu" or "cuda" (the
    attention kernel and AdamW's implementation differ)."""
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
    compute_dtype = DTYPES[param_dtype] if fsdp and param_dtype else orig_dtype
    reduce = DTYPES[reduce_dtype] if fsdp and reduce_dtype else compute_dtype
    ob, pb, rb = _dtype_bytes(orig_dtype), _dtype_bytes(compute_dtype), _dtype_bytes(reduce)
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
                      compute_dtype if fsdp and param_dtype else None, dense_bias=device == "cpu")
    fe = sim.forward_end
    buckets = grads_total if strategy == "ddp" else 0

    best: dict[str, Any] = {"peak": -1}
    phases: dict[str, int] = {}

    def consider(phase: str, grads: int, comm: int, act: int, tmp: int) -> None:
        total = params + optimizer + grads + comm + act + tmp
        phases[phase] = max(phases.get(phase, 0), total)
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
                      phases=phases)


_EVENT_ORDER = {"fw_post": 0, "bw_post": 1, "fw_pre": 2, "bw_pre": 3}


def _walk_fsdp(sim: Simulation, consider: Any, *, padded: list[int], world: int, ob: int, pb: int, rb: int,
               reshard_after_forward: bool) -> None:
    """Replay the simulated step with FSDP2's buffers (module docstring), calling `consider` per op and
    at each momentary high point (an all-gather next to the previous one, a reduce-scatter copy-in)."""
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
