"""Run as a script (by path) by tests/helpers/hf.py: load an export with transformers alone (gpt4_lightning cannot be
imported here) and compare it with the reference the test computed with our model. Prints `RESULT <json>`."""

from __future__ import annotations

import importlib.abc
import json
import sys


class _NoGpt4Lightning(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "gpt4_lightning":
            raise ImportError(f"{name}: the export must not need gpt4_lightning")


sys.meta_path.insert(0, _NoGpt4Lightning())

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

export, reference = sys.argv[1], torch.load(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(export)
ids = tokenizer(reference["prompt"], return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits
new = reference["greedy"].shape[1]
out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, output_logits=True,
                     return_dict_in_generate=True)
greedy = out.sequences[:, ids.shape[1]:]
step_logits = torch.stack(out.logits, 1)  # (b, new, vocab): each from one token and the KV cache
uncached = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=False)
text = pipeline("text-generation", model=model, tokenizer=tokenizer)(reference["prompt"], max_new_tokens=5,
                                                                     do_sample=False)[0]["generated_text"]
print("\nRESULT " + json.dumps({
    "ids": ids.tolist(), "max_abs_diff": float((logits - reference["logits"]).abs().max()),
    "greedy": greedy.tolist(), "step_max_abs_diff": float((step_logits - reference["step_logits"]).abs().max()),
    "uncached_equal": bool(torch.equal(uncached[:, ids.shape[1]:], greedy)),
    "pipeline_text": text, "model_class": type(model).__name__,
    "gpt4_lightning_modules": sorted(m for m in sys.modules if m.startswith("gpt4_lightning")),
}))  # on its own line: AutoTokenizer's trust_remote_code question is on stdout too
