"""The Lightning side: `module.GPT4LitModule` (steps, optimizer, model build), the callbacks (`callbacks`:
throughput and memory; `nonfinite`: the NaN/Inf guard; `stop`: signals), optimizer groups and schedules
(`optim`), FLOPs (`flops`), loggers, the typed group configs (`config`), devices and trainer checks
(`devices`), and `parallelize` (AC -> compile -> FSDP2, applied to the model from outside).

Nothing is imported here: `parallelize` and `config` are used without Lightning (the memory planner)."""
