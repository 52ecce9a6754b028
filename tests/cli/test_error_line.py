"""Bad input through the real CLI, where a user meets it: every case runs `python -m gpt4_lightning.<entry>` in a
subprocess and must exit non-zero with exactly one `error: ` line on stderr that names the thing (key, file,
parameter) and the fix, with no traceback (HYDRA_FULL_ERROR=1 shows one), and leave every file that existed before
(the prepared shards in the cache, checkpoints, run directories) byte-identical.

One tiny model is trained once (5 steps) and the damaged inputs are made from it and its prepared data. A CLI start
costs seconds of imports, so most cases run in process, one after the other, in two Python processes of their own
(`tests.helpers.in_process`: `main()` with the case's `sys.argv`, its stdout and stderr captured); one case or more
per entry point (`real=True`) runs as its own `python -m gpt4_lightning.<entry>`, which also sees what C code writes
to the terminal. The module fixture runs the selected cases concurrently, then each test checks its own output. The
no-change check hashes the whole work directory before and after all of them: any case that modified a file fails
every case, and the report names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers.cli import run, train_args
from tests.helpers.paths import REPO

BASE_RUN = "bad_inputs_base"


class Evil:
    """Stands for any object a checkpoint must not unpickle."""


# ----------------------------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every regular file under `root` (a symlink: its target), by relative path."""
    hashes = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                hashes[rel] = "symlink -> " + os.readlink(path)
            elif os.path.isfile(path):
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                hashes[rel] = digest.hexdigest()
    return hashes


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Pre-existing files that were modified or removed (new files are allowed)."""
    return sorted(p for p, digest in before.items() if after.get(p) != digest)


def with_args(base: list[str], *changes: str) -> list[str]:
    """`base` with `changes` applied: an override of a key already in `base` replaces it."""
    keys = {c.split("=", 1)[0].lstrip("+~") for c in changes}
    return [a for a in base if a.split("=", 1)[0].lstrip("+~") not in keys] + list(changes)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bad(workdir) -> SimpleNamespace:
    """A trained tiny checkpoint (learned positions, so it cannot extrapolate), its prepared data, and damaged
    copies of both, under `workdir/bad_inputs`."""
    root = workdir / "bad_inputs"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    common = with_args(train_args(workdir, 5), "model.use_abs_pos_emb=true", "checkpoint.every_n_steps=5",
                       "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false")
    run(workdir, "train", *with_args(common, f"run_name={BASE_RUN}"))
    ckpt = workdir / "outputs" / BASE_RUN / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    data_dir = Path(state["gpt4_data_dir"])
    assert (data_dir / "manifest.json").is_file() and state["gpt4_config"]["dim"] == 64

    raw = ckpt.read_bytes()
    (root / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    (root / "empty.ckpt").write_bytes(b"")
    torch.save({**state, "x": Evil()}, root / "pickled_object.ckpt")
    torch.save({**state, "gpt4_config": {**state["gpt4_config"], "dim": 96}}, root / "config_lies.ckpt")
    (root / "not_a_checkpoint").mkdir()
    _sharded(state, root / "sharded")
    shutil.copytree(root / "sharded", root / "sharded_missing_shard")
    for shard in (root / "sharded_missing_shard").glob("*.distcp"):
        shard.unlink()

    for name in ("truncated", "corrupt", "version", "dir_shard"):
        shutil.copytree(data_dir, root / f"data_{name}", ignore=shutil.ignore_patterns(".prepare.lock"))
    shard = root / "data_truncated" / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    shard = root / "data_corrupt" / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 1  # same size, one bit off: only the sha256 sees it
    shard.write_bytes(bytes(data))
    manifest = root / "data_version" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 99}))
    (root / "data_dir_shard" / "val_00000.bin").unlink()
    (root / "data_dir_shard" / "val_00000.bin").mkdir()  # unreadable as a file, also for root

    (root / "empty.jsonl").write_bytes(b"")
    (root / "broken.jsonl").write_text((workdir / "corpus.jsonl").read_text()[:3000])  # cut inside a string
    (root / "a_file").write_text("a regular file where a directory is expected\n")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(data_dir / "tokenizer.json"))
    tokenizer.add_tokens(["<zzz>"])  # id 512: one past the model's num_tokens
    tokenizer.save(str(root / "bigger_tokenizer.json"))
    # mixture sources: the base data prepared with another tokenizer, and a source too short for seq_len=64
    other = root / "data_other_tokenizer"
    shutil.copytree(data_dir, other, ignore=shutil.ignore_patterns(".prepare.lock"))
    shutil.copy(root / "bigger_tokenizer.json", other / "tokenizer.json")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer_sha256"] = hashlib.sha256((other / "tokenizer.json").read_bytes()).hexdigest()
    (other / "manifest.json").write_text(json.dumps(manifest))
    from gpt4_lightning.data.shards import Manifest, ShardWriter

    short = root / "data_short"
    short.mkdir()
    shutil.copy(data_dir / "tokenizer.json", short / "tokenizer.json")
    splits = {}
    for split in ("train", "val"):
        writer = ShardWriter(short, split, np.dtype(np.uint16), 1000)
        writer.add(np.arange(40) % 512)  # 40 tokens: no window of 65
        splits[split] = writer.close()
    base = json.loads((data_dir / "manifest.json").read_text())
    Manifest("uint16", 512, base["eos_id"], "tokenizer.json", base["tokenizer_sha256"], splits).save(short)
    return SimpleNamespace(root=root, ckpt=ckpt, data_dir=data_dir, common=common)


def _sharded(state: dict, path: Path) -> None:
    """The layout of a ModelParallelStrategy (FSDP2) checkpoint: torch.distributed.checkpoint shards + meta.pt."""
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process": intended
        dcp.save({"state_dict": state["state_dict"]}, checkpoint_id=str(path), no_dist=True)
    torch.save({k: v for k, v in state.items() if k not in ("state_dict", "optimizer_states")}, path / "meta.pt")


# ----------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    entry: str
    args: Callable[[SimpleNamespace, str], list[str]]
    expect: list[str]  # fragments of the error line: the key/file/parameter and the fix
    marks: list = field(default_factory=list)
    real: bool = False  # through the real CLI in a subprocess of its own (else in process)


def train(*bad_args: str, name: str | None = None) -> Callable[[SimpleNamespace, str], list[str]]:
    """The base run's arguments (same data, so the prepared cache is reused) with `bad_args`, in a run
    directory of the case's own (`outputs/rejected/<case id>`; the cases run concurrently)."""
    def args(b: SimpleNamespace, case_id: str) -> list[str]:
        return with_args(b.common, f"run_name={name or 'rejected/' + case_id}", *(a.format(b=b) for a in bad_args))
    return args


def cli(*bad_args: str) -> Callable[[SimpleNamespace, str], list[str]]:
    return lambda b, case_id: [a.format(b=b) for a in bad_args]


GPUS = torch.cuda.device_count()
CPUS = os.cpu_count() or 1
LONG_PROMPT = " ".join(["word"] * 300)
MIX = "data.sources=[{{{{name:{a},dir:{{b.data_dir}},weight:1}}}},{{{{name:{b},dir:{{b.data_dir}},weight:{w}}}}}]"

CASES = [
    # --- config
    Case("preset-unknown", "train", train("model=nope"), ["model/nope", "available options", "gpt4_tiny"], real=True),
    Case("key-unknown", "train", train("model.dimm=3"), ["model.dimm", "did you mean model.dim"]),
    Case("type-schema", "train", train("model.heads=abc"), ["model.heads=abc", "Integer"]),
    Case("type-int", "train", train("data.batch_size=1.5"), ["data.batch_size=1.5", "an integer"]),
    # every group is typed (gpt4_lightning.config.schema): a wrongly typed value fails at compose time
    Case("type-bool-word", "train", train("parallel.activation_checkpointing=maybe"),
         ["parallel.activation_checkpointing=maybe", "true or false"]),
    Case("type-bool-no", "train", train("parallel.compile=no"), ["parallel.compile=no", "true or false"]),
    Case("type-bool-data", "train", train("data.verify=perhaps"), ["data.verify=perhaps", "true or false"]),
    Case("type-seq-len", "train", train("data.seq_len=1.5"), ["data.seq_len=1.5", "an integer"]),
    Case("type-lr", "train", train("optim.lr=fast"), ["optim.lr=fast", "a number"]),
    Case("type-seed", "train", train("seed=abc"), ["seed=abc", "an integer"]),
    Case("trainer-key-misspelt", "train", train("trainer.max_stepz=3"), ["trainer.max_stepz", "trainer.max_steps"]),
    Case("alibi-heads", "train", train("model.alibi_num_heads=5"), ["alibi_num_heads=5", "heads=4", "lower"]),
    Case("seq-len", "train", train("data.seq_len=512"), ["data.seq_len=512", "model.max_seq_len=128", "lower"]),
    Case("lr-negative", "train", train("optim.lr=-1"), ["optim.lr=-1", "> 0"]),
    Case("devices-cpu", "train", train("trainer.accelerator=cpu", f"trainer.devices={CPUS + 1}"),
         [f"trainer.devices={CPUS + 1}", f"processes on the {CPUS} CPU cores", f"<= {CPUS}"]),
    Case("devices-gpu", "train", train("trainer.accelerator=gpu", f"trainer.devices={GPUS + 1}"),
         ["trainer.", "GPU", "cpu" if GPUS == 0 else f"<= {GPUS}"]),
    Case("fsdp-tensor-parallel", "train", train("trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1",
                                                "trainer.strategy.tensor_parallel_size=2"),
         ["trainer.strategy.tensor_parallel_size=2", "FSDP2 only", "set it to 1"]),
    Case("fsdp-mesh", "train", train("trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1",
                                     "trainer.strategy.data_parallel_size=2"),
         ["trainer.strategy.data_parallel_size=2", "trainer.devices x trainer.num_nodes = 1"]),
    Case("nodes-without-launcher", "train", train("trainer.num_nodes=2"),
         ["trainer.num_nodes=2", "no launcher", "launch/slurm/train.sbatch", "trainer.num_nodes=1"]),
    Case("precision-value", "train", train("trainer.precision=fp8"),
         ["trainer.precision='fp8'", "precision=fp32|bf16_mixed|bf16_true", "bf16-mixed"]),
    Case("trainer-argument", "train", train("+trainer.bogus_arg=1"),
         ["trainer (lightning", "bogus_arg", "check the trainer.* values"]),
    Case("missing-required", "generate", cli(), ["ckpt_path is required", "ckpt_path=<value>"], real=True),
    Case("missing-required-group", "prepare", cli("tokenizer=file"), ["tokenizer.path is required"]),
    # --- data
    Case("data-path-missing", "train", train("data.path={b.root}/nope.jsonl"),
         ["data.path", "nope.jsonl does not exist", "set data.path"]),
    Case("data-dir-missing", "evaluate", cli("ckpt_path={b.ckpt}", "data_dir={b.root}/nope"),
         ["data directory", "nope does not exist", "data_dir"]),
    Case("corpus-empty", "prepare", cli("data=files", "data.path={b.root}/empty.jsonl", "tokenizer.vocab_size=300"),
         ["no text found", "empty.jsonl", "point data.path"]),
    Case("corpus-malformed", "prepare", cli("data=files", "data.path={b.root}/broken.jsonl",
                                            "tokenizer.vocab_size=300"),
         ["broken.jsonl cannot be read as jsonl", "fix or remove"], real=True),
    Case("shard-truncated", "evaluate", cli("ckpt_path={b.ckpt}", "data_dir={b.root}/data_truncated"),
         ["data_truncated/train_00000.bin", "truncated", "overwrite=true"], real=True),
    Case("shard-checksum", "train", train("data.dir={b.root}/data_corrupt", "data.verify=true"),
         ["data_corrupt/train_00000.bin", "sha256", "overwrite=true"], [pytest.mark.slow]),
    Case("manifest-version", "evaluate", cli("ckpt_path={b.ckpt}", "data_dir={b.root}/data_version"),
         ["data_version/manifest.json", "format_version 99", "overwrite=true"]),
    Case("vocab-over-num-tokens", "train", train("model.num_tokens=256"),
         ["vocab of", "is 512", "num_tokens=256", "set model.num_tokens >= 512"], [pytest.mark.slow]),
    Case("shard-unreadable", "evaluate", cli("ckpt_path={b.ckpt}", "data_dir={b.root}/data_dir_shard"),
         ["data_dir_shard/val_00000.bin", "not a regular file", "overwrite=true"]),
    # --- data mixtures (data=mix)
    Case("mix-no-sources", "train", train("data=mix"), ["data=mix needs its sources", "data.sources=[{name:"]),
    Case("mix-key-misspelt", "train", train("data=mix", "data.sources=[{{name:a,dri:x,weight:1}}]"),
         ["data.sources", "dri is not a field of SourceConfig", "did you mean dir?"]),
    Case("mix-names-repeated", "train", train("data=mix", MIX.format(a="a", b="a", w="1")),
         ["data.sources names must be unique", "a given more than once"]),
    Case("mix-weight-zero", "train", train("data=mix", MIX.format(a="a", b="b", w="0")),
         ["weight of 'b' is 0.0", "must be > 0"]),
    Case("mix-tokenizers-differ", "train",
         train("data=mix", "data.sources=[{{name:base,dir:{b.data_dir},weight:1}},"
                           "{{name:other,dir:{b.root}/data_other_tokenizer,weight:1}}]"),
         ["'base'", "'other'", "different tokenizers", "prepare every source with one tokenizer"]),
    Case("mix-vocab-over-num-tokens", "train", train("data=mix", MIX.format(a="a", b="b", w="1"),
                                                     "model.num_tokens=256"),
         ["vocab of the data.sources is 512", "num_tokens=256", "set model.num_tokens >= 512"]),
    Case("mix-seq-len-too-long", "train",
         train("data=mix", "data.sources=[{{name:base,dir:{b.data_dir},weight:1}},"
                           "{{name:short,dir:{b.root}/data_short,weight:1}}]"),
         ["seq_len=64 needs 65 tokens", "source 'short'", "lower data.seq_len"]),
    Case("mix-source-missing", "train",
         train("data=mix", "data.sources=[{{name:base,dir:{b.data_dir},weight:1}},{{name:gone,dir:{b.root}/nope,"
                           "weight:1}}]"),
         ["data.sources 'gone'", "nope does not exist"]),
    Case("mix-prepare", "prepare", cli("data=mix", "data.sources=[{{name:a,dir:{b.data_dir},weight:1}}]"),
         ["data=mix", "nothing to prepare", "prepare each source"]),
    # --- checkpoints
    Case("ckpt-missing-evaluate", "evaluate", cli("ckpt_path={b.root}/nope.ckpt"),
         ["ckpt_path=", "nope.ckpt", "no such checkpoint", "check the path"]),
    Case("ckpt-missing-train", "train", train("ckpt_path={b.root}/nope.ckpt"),
         ["ckpt_path=", "nope.ckpt", "no checkpoint", "check ckpt_path"]),
    *[Case(f"ckpt-truncated-{entry}", entry, cli("ckpt_path={b.root}/truncated.ckpt", *extra),
           ["ckpt_path=", "truncated.ckpt", "truncated or corrupt", "use another checkpoint"])
      for entry, extra in (("generate", ()), ("export", ("out={b.root}/export_truncated",)))],
    Case("ckpt-truncated-train", "train", train("ckpt_path={b.root}/truncated.ckpt"),
         ["truncated.ckpt", "truncated or corrupt", "use another checkpoint"]),
    Case("ckpt-empty", "generate", cli("ckpt_path={b.root}/empty.ckpt"), ["empty.ckpt", "empty (0 bytes)"]),
    Case("ckpt-shape-train", "train", train("ckpt_path={b.ckpt}", "model.dim=96"),
         ["ckpt_path=", "parameter net.token_emb.weight", "[512, 64] in the checkpoint", "[512, 96] in the model",
          "model.dim=64 in the checkpoint, 96 here", "start fresh without ckpt_path"]),
    # resuming the base run itself: Hydra rewrites its .hydra/ and log first; they must come back as they were
    Case("ckpt-shape-resume-run", "train", train("ckpt_path=last", "model.dim=96", name=BASE_RUN),
         ["last.ckpt", "[512, 64] in the checkpoint", "[512, 96] in the model", "model.dim=64"], real=True),
    *[Case(f"ckpt-shape-{entry}", entry, cli("ckpt_path={b.root}/config_lies.ckpt", *extra),
           ["config_lies.ckpt", "does not fit its own model config", "parameter net.token_emb.weight",
            "[512, 64] in the checkpoint", "[512, 96] in the model", "use another checkpoint"])
      for entry, extra in (("evaluate", ()), ("export", ("out={b.root}/export_lies",)))],
    Case("ckpt-pickle-generate", "generate", cli("ckpt_path={b.root}/pickled_object.ckpt"),
         ["pickled_object.ckpt", "Evil object", "weights_only=True"]),
    *[Case(f"ckpt-sharded-missing-{entry}", entry, args,
           ["sharded_missing_shard", "missing its shard file __0_0.distcp", "copy the whole checkpoint directory"])
      for entry, args in (("export", cli("ckpt_path={b.root}/sharded_missing_shard", "out={b.root}/export_shard")),
                          ("train", train("trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1",
                                          "ckpt_path={b.root}/sharded_missing_shard")))],
    Case("ckpt-sharded-plain-trainer", "train", train("ckpt_path={b.root}/sharded"),
         ["sharded (FSDP) checkpoint", "resume it with trainer=fsdp"]),
    Case("ckpt-dir-not-checkpoint", "generate", cli("ckpt_path={b.root}/not_a_checkpoint"),
         ["not_a_checkpoint is a directory but not a sharded checkpoint", "meta.pt"]),
    # --- generation
    Case("prompt-empty", "generate", cli("ckpt_path={b.ckpt}", "prompt="), ["prompt is empty", 'prompt="some text"']),
    Case("prompt-outside-vocab", "generate",
         cli("ckpt_path={b.ckpt}", "tokenizer_path={b.root}/bigger_tokenizer.json", "prompt=hi <zzz>"),
         ["tokenizer_path=", "token id 512", "num_tokens=512", "drop tokenizer_path"]),
    Case("prompt-too-long", "generate", cli("ckpt_path={b.ckpt}", f"prompt={LONG_PROMPT}"),
         ["prompt is", "max_seq_len=128", "shorten the prompt"]),
    Case("max-new-tokens-past-max-seq-len", "generate", cli("ckpt_path={b.ckpt}", "max_new_tokens=200"),
         ["max_new_tokens=200", "max_seq_len=128", "use max_new_tokens <="]),
    Case("temperature-negative", "generate", cli("ckpt_path={b.ckpt}", "temperature=-0.5"),
         ["temperature", ">= 0", "-0.5"]),
    Case("top-p-over-1", "generate", cli("ckpt_path={b.ckpt}", "top_p=1.5"), ["top_p", "(0, 1]", "1.5"]),
    Case("num-samples-zero", "generate", cli("ckpt_path={b.ckpt}", "num_samples=0"), ["num_samples=0", ">= 1"]),
    Case("device-unavailable", "generate", cli("ckpt_path={b.ckpt}", f"device=cuda:{GPUS}"),
         [f"device=cuda:{GPUS}", "GPU"]),
    Case("device-unknown", "generate", cli("ckpt_path={b.ckpt}", "device=tpu9"),
         ["device=tpu9 is not a torch device", "use auto, cpu"]),
    Case("tokenizer-not-json", "generate", cli("ckpt_path={b.ckpt}", "tokenizer_path={b.root}/broken.jsonl"),
         ["tokenizer_path=", "broken.jsonl", "not a tokenizer.json"]),
    Case("evaluate-split", "evaluate", cli("ckpt_path={b.ckpt}", "split=test"), ["split=test", "split=val"]),
    # --- environment (as root, permissions do not stop writes: a path under a regular file does)
    Case("run-dir-under-file", "train", train("hydra.run.dir={b.root}/a_file/run"),
         ["hydra.run.dir=", "a_file, which is a file", "choose another run_name or hydra.run.dir"]),
    Case("cache-dir-under-file", "train", train("cache_dir={b.root}/a_file/cache"),
         ["cache_dir=", "a_file, which is a file", "$GPT4_LIGHTNING_CACHE"]),
    Case("data-dir-is-file", "prepare", cli("data=files", "data.path={b.root}/../corpus.jsonl",
                                            "data.dir={b.root}/a_file"), ["data.dir=", "a_file is a file"]),
    Case("export-out-under-file", "export", cli("ckpt_path={b.ckpt}", "out={b.root}/a_file/exported"),
         ["out=", "a_file, which is a file", "point out at"], real=True),
]
assert len({c.id for c in CASES}) == len(CASES) >= 25
assert {c.entry for c in CASES if c.real} == {c.entry for c in CASES}  # every entry point through the real CLI


def _timed(workdir: Path, case: Case, bad: SimpleNamespace) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    proc = run(workdir, case.entry, *case.args(bad, case.id), check=False)
    proc.seconds = time.perf_counter() - start
    return proc


def _in_process(workdir: Path, cases: list[Case], bad: SimpleNamespace, files: Path) -> dict[str, Any]:
    """`cases` one after another in one `tests.helpers.in_process` process: id -> its CompletedProcess."""
    if not cases:
        return {}
    spec, results = files / f"{cases[0].id}.cases.json", files / f"{cases[0].id}.results.json"
    spec.write_text(json.dumps([{"id": c.id, "entry": c.entry, "args": c.args(bad, c.id)} for c in cases]))
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(workdir / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("HYDRA_FULL_ERROR", None)
    runner = subprocess.run([sys.executable, "-m", "tests.helpers.in_process", str(spec), str(results)],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)
    assert runner.returncode == 0, runner.stderr[-3000:]
    procs = {}
    for case_id, r in json.loads(results.read_text()).items():
        procs[case_id] = subprocess.CompletedProcess(case_id, r["returncode"], r["stdout"], r["stderr"])
        procs[case_id].seconds = r["seconds"]
    return procs


@pytest.fixture(scope="module")
def outcomes(request, workdir, bad, tmp_path_factory) -> SimpleNamespace:
    """Run the selected cases, the real CLI ones and two in-process batches concurrently; hash the work
    directory before and after."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params}
    cases = [c for c in CASES if c.id in selected] or CASES
    real, in_process = [c for c in cases if c.real], [c for c in cases if not c.real]
    files = tmp_path_factory.mktemp("in_process")  # outside workdir, which must not change
    before = snapshot(workdir)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:  # the two batches start first
        batches = [pool.submit(_in_process, workdir, in_process[i::2], bad, files) for i in range(2)]
        singles = {c.id: pool.submit(_timed, workdir, c, bad) for c in real}
        procs = {case_id: future.result() for case_id, future in singles.items()}
        for batch in batches:
            procs.update(batch.result())
    seconds = time.perf_counter() - start
    slowest = sorted(procs.items(), key=lambda kv: -kv[1].seconds)[:3]
    print(f"\n{len(cases)} bad-input commands ({len(real)} real CLI runs) in {seconds:.1f} s (slowest: "
          + ", ".join(f"{k} {p.seconds:.1f} s" for k, p in slowest) + ")")
    return SimpleNamespace(procs=procs, changed=changed_files(before, snapshot(workdir)))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(case, outcomes):
    proc = outcomes.procs[case.id]
    tail = proc.stderr[-3000:]
    assert proc.returncode in (1, 2), (proc.returncode, tail)
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, tail
    for fragment in case.expect:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in proc.stderr, tail
    assert not outcomes.changed, f"pre-existing files changed by the bad-input runs: {outcomes.changed}"


def test_rejected_commands_leave_no_run_directory(workdir, outcomes):
    """Hydra makes the run directory (config, log) before the task runs; a command rejected before it wrote
    anything of its own removes it again."""
    rejected = workdir / "outputs" / "rejected"
    left = sorted(str(p.relative_to(rejected)) for p in rejected.rglob("*")) if rejected.exists() else []
    assert not left, left


def test_hydra_full_error_shows_the_traceback(workdir, bad):
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(workdir / "cache"), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, "-m", "gpt4_lightning.generate", f"ckpt_path={bad.root}/nope.ckpt"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "no such checkpoint" in proc.stderr, proc.stderr[-3000:]
    assert not error_lines(proc.stderr)
