"""Downstream evaluation through lm-evaluation-harness: `harness.py` runs lm-eval tasks on a GPT4 in-process (as
transformers' model, so the numbers are those of `lm_eval --model hf` on an export), and `next_line.py` builds
the task shipped with the package, which needs no download."""
