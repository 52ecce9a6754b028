"""Parallelism applied to the plain-torch model from outside (as torchtitan's parallelize functions are): the
`parallel` config (`config`) and `parallelize` (activation checkpointing -> compile -> FSDP2). Below both the memory
planner and training: the planner simulates the same recipe the trainer applies."""
