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
  heap (RSS then stays above the live tensors: BENCHMARKS.md); with a fixed
  threshold (`MALLOC_MMAP_THRESHOLD_=131072`) RSS follows the tensors.
- Pipeline/tensor parallelism, gradient accumulation and CPU offload are not modelled.

The `PeakMemory` callback (`training.callbacks`) measures what this module plans.
"""

from gpt4_lightning.memory.plan import GIB, STRATEGIES, MemoryPlan, ParamGroups, param_groups, plan_memory
from gpt4_lightning.memory.simulate import PRECISIONS, Simulation, simulate

__all__ = ["GIB", "PRECISIONS", "STRATEGIES", "MemoryPlan", "ParamGroups", "Simulation", "param_groups",
           "plan_memory", "simulate"]
