"""Is the initialisation sensible at a preset's real size? Initial loss against ln(vocab) and gradient norms.

Builds a preset (conf/model/<name>.yaml) with its seeded init (`init_weights(seed)`, as training does), in
`--dtype`, and on `--batches` random-token batches reports the loss (uniform random tokens: a well-initialised
model predicts ~uniformly, loss ≈ ln(num_tokens)) and the gradient norm, total and per kind of weight. With
`--adamw-steps N` it then takes N AdamW steps on one batch and reports the loss and grad norm of each (the
first steps; needs the optimizer state in memory, so for the small presets on this CPU).

    python bench/init_check.py --model gpt4_2b --dtype bf16 --seq 256 --batches 2     # ~10 GiB, a few minutes
    python bench/init_check.py --model gpt4_125m --adamw-steps 10
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from machine_info import machine_info
from omegaconf import OmegaConf

from gpt4_lightning import GPT4, GPT4Config

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
KINDS = ("token_emb", "to_qkv", "to_out", "proj_in", "proj_out", "to_logits", "norms and qk scales")


def kind(name: str) -> str:
    return next((k for k in KINDS[:-1] if f"{k}." in name), KINDS[-1])


def grad_norms(model: GPT4) -> dict[str, float]:
    sq = dict.fromkeys(KINDS, 0.0)
    for name, p in model.named_parameters():
        sq[kind(name)] += p.grad.float().pow(2).sum().item()
    return {"total": math.sqrt(sum(sq.values())), **{k: math.sqrt(v) for k, v in sq.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt4_2b")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--adamw-steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    values = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{args.model}.yaml"))
    cfg = GPT4Config.from_kwargs(**values)
    with torch.device("meta"):
        model = GPT4.from_config(cfg)
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(args.seed)
    model.to(DTYPES[args.dtype]).train()
    ln_v = math.log(cfg.num_tokens)
    print(f"{args.model}: {model.num_params() / 1e9:.3f} B parameters, {args.dtype}, ln(num_tokens) = {ln_v:.3f}")
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for i in range(args.batches):
        tokens = torch.randint(0, cfg.num_tokens, (args.batch, args.seq + 1), generator=generator)
        start = time.perf_counter()
        loss = model.loss(tokens)
        loss.backward()
        rows.append(dict(batch=i, loss=loss.item(), grad_norm=grad_norms(model), s=time.perf_counter() - start))
        model.zero_grad(set_to_none=True)
        print(f"init, batch {i}: loss {rows[-1]['loss']:.4f} ({rows[-1]['loss'] / ln_v:.4f} x ln V), "
              f"grad norm {rows[-1]['grad_norm']['total']:.4f} ({rows[-1]['s']:.0f} s)", flush=True)
    print("grad norm by kind (init, batch 0): " + ", ".join(
        f"{k} {v:.4f}" for k, v in rows[0]["grad_norm"].items() if k != "total"))
    steps = []
    if args.adamw_steps:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
        tokens = torch.randint(0, cfg.num_tokens, (args.batch, args.seq + 1), generator=generator)
        for step in range(args.adamw_steps):
            loss = model.loss(tokens)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps.append(dict(step=step, loss=loss.item(), grad_norm=norm))
            print(f"AdamW step {step}: loss {loss.item():.4f}, grad norm {norm:.4f}", flush=True)
    report = dict(model=args.model, config=vars(args) | {"out": str(args.out)}, params=model.num_params(),
                  ln_num_tokens=ln_v, init=rows, adamw_steps=steps, machine=machine_info())
    out = args.out or REPO / "bench" / "results" / f"init_check_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
