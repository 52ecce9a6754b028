"""One forward + loss + backward of the real model on fake tensors, following every storage an op
creates until it is gone (see the package docstring for what is counted where)."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gpt4_lightning.model import GPT4, GPT4Config
from gpt4_lightning.model.kernels import SDPA
from gpt4_lightning.parallel.config import ParallelConfig
from gpt4_lightning.parallel.parallelize import apply_activation_checkpointing

# precision name (ours and Lightning's) -> (parameter dtype, autocast dtype or None)
PRECISIONS: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "fp32": (torch.float32, None), "32-true": (torch.float32, None), "32": (torch.float32, None),
    "bf16_mixed": (torch.float32, torch.bfloat16), "bf16-mixed": (torch.float32, torch.bfloat16),
    "bf16_true": (torch.bfloat16, None), "bf16-true": (torch.bfloat16, None),
}


# FlexAttention has no CPU backward to simulate: SDPA's causal kernel stands in for it (no bias, ALiBi left
# out); both save q, k, v, the output and the logsumexp, and build nothing n x n
FLEX_STAND_IN = dataclasses.replace(SDPA, name="flex-stand-in", dense_alibi=False)


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
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def simulate(cfg: GPT4Config, micro_batch: int, seq_len: int, precision: str = "fp32",
             activation_checkpointing: bool = False, ac_every: int = 1,
             param_dtype: torch.dtype | None = None, dense_bias: bool = True,
             document_mask: bool = False) -> Simulation:
    """Run forward + loss + backward of `GPT4.from_config(cfg)` on fake CPU tensors of shape
    `(micro_batch, seq_len + 1)` and follow every storage (see `Simulation`).

    `param_dtype` overrides the dtype the parameters compute in (FSDP2's mixed-precision policy).
    `dense_bias=False` stands in for CUDA's FlexAttention, which has no CPU backward to simulate: SDPA's
    causal kernel (`is_causal`, no bias), which like FlexAttention builds nothing n x n and saves the
    same tensors (q, k, v, output, logsumexp). True: the CPU path, with its cached dense ALiBi bias.

    Long on purpose: the hooks, the tracked step and the per-op series share the tracker's state, and the
    order (hooks, step, classification) is the algorithm."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.multiprocessing.reductions import StorageWeakRef

    orig_dtype, autocast_dtype = PRECISIONS[precision]
    dtype = param_dtype or orig_dtype
    with FakeTensorMode():
        with _default_dtype(dtype):  # as Lightning's bf16-true builds the model (`.to` cannot swap fake params)
            model = GPT4.from_config(cfg)
        model.checks_token_values = False  # fake tensors have shapes, not values
        if activation_checkpointing:  # as parallelize applies it (compile and FSDP2 are not simulated)
            ParallelConfig(activation_checkpointing, ac_every)  # its checks
            apply_activation_checkpointing(model.blocks, ac_every)
        if not dense_bias:
            model.set_attention_kernel(FLEX_STAND_IN)
        tensors = [*model.parameters(), *model.buffers()]
        tracker = _StorageTracker({StorageWeakRef(t.untyped_storage()).cdata for t in tensors})
        events: list[tuple[int, str, int]] = []
        grad_events: list[tuple[int, int, int]] = []
        blocks = model.blocks

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
        for group, module in [(-1, model.root), *enumerate(blocks)]:
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
        if dense_bias and cfg.alibi_pos_bias:
            # steady state: the ALiBi bias is built on the first step and cached; count it, not its construction
            bias = model.attention_bias(seq_len, torch.device("cpu"), autocast_dtype or dtype).dense
            tracker.add(StorageWeakRef(bias.untyped_storage()), bias.untyped_storage().nbytes())
        with tracker.mode:
            with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                # document masking's dense per-batch mask (its shape, not the ids, sets its size); CUDA's
                # FlexAttention block mask is (n / 128)^2 per batch: nothing to count
                documents = torch.zeros_like(tokens, dtype=torch.int32) if document_mask and dense_bias else None
                loss = model.loss(tokens, documents)
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


