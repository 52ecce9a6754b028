"""The Lightning side: `module.GPT4LitModule` (steps, optimizer, model build), the callbacks (`callbacks`:
throughput and memory; `nonfinite`: the NaN/Inf guard; `stop`: signals; `downstream`: in-training lm-eval),
optimizer groups and schedules (`optim`, `schedule`), FLOPs (`flops`), loggers, the typed configs of the
`optim`, `scheduler` and `trainer` groups (`config`), and the trainer's device helpers (`devices`)."""
