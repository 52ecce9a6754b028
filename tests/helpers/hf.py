"""The export read back by transformers alone: tests/helpers/hf_check.py, run as a script in a process that cannot
import gpt4_lightning, against our model loaded from the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer

from gpt4_lightning.checkpoint.load import load_model

PROMPT = "def main(argv):\n    return"
HF_CHECK = Path(__file__).with_name("hf_check.py")


def transformers_matches(export: Path, ckpt: Path, tmp_path: Path) -> None:
    """The export, read by transformers alone, against our model loaded from the checkpoint itself."""
    model, meta = load_model(ckpt)
    tokenizer = Tokenizer.from_file(str(Path(meta["data_dir"]) / "tokenizer.json"))
    ids = torch.tensor([tokenizer.encode(PROMPT).ids])
    with torch.no_grad():
        greedy = model.generate(ids, 20, temperature=0.0)
        # the logits each generated token was chosen from, computed over the whole sequence without a cache
        step_logits = model(torch.cat([ids, greedy], 1))[:, ids.shape[1] - 1 : -1]
        reference = {"prompt": PROMPT, "logits": model(ids), "greedy": greedy, "step_logits": step_logits}
    torch.save(reference, tmp_path / "reference.pt")
    proc = subprocess.run([sys.executable, str(HF_CHECK), str(export), str(tmp_path / "reference.pt")],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.rpartition("RESULT ")[2])
    assert result["gpt4_lightning_modules"] == [] and result["model_class"] == "GPT4ForCausalLM"
    assert result["ids"] == ids.tolist()
    assert result["max_abs_diff"] < 1e-5, result["max_abs_diff"]
    assert result["greedy"] == reference["greedy"].tolist() and result["uncached_equal"]
    assert result["step_max_abs_diff"] < 1e-4, result["step_max_abs_diff"]  # transformers' KV cache path
    assert result["pipeline_text"].startswith(PROMPT) and len(result["pipeline_text"]) > len(PROMPT)
