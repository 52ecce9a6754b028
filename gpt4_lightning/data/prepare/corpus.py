"""Documents (one `str` each) from the configured text source, in a deterministic order.

Sources (`data.source`):
- `stdlib`: the `.py` files of the running interpreter's standard library (`sysconfig`'s
  "stdlib" path, site-/dist-packages excluded), sorted by relative path: a corpus every
  machine has, so the default run needs no download.
- `files`: a file, a folder (searched recursively) or a glob of `.txt` / `.json` / `.jsonl` /
  `.parquet` files, sorted, each read with HF `datasets` (`load_dataset(<builder>,
  data_files=[file], streaming=True)`). A `.txt` file is one document (`sample_by="document"`);
  the other formats give one document per row, from the `data.text_field` column.
- `hf_hub`: `load_dataset(data.name, data.hub_config, split=data.hub_split, streaming=True)`,
  one document per row from `data.text_field`; streamed, never downloaded whole.

Empty (whitespace-only or null) documents are skipped and counted: they would only add EOS tokens.

Text that is not valid in its encoding (the non-UTF-8 policy): every real corpus has a few such
files, and failing the whole run for them would be unhelpful, while silently replacing bytes
would train on mojibake. So:
- stdlib `.py` files are decoded the way Python itself reads source: per their PEP 263
  declaration (`tokenize.detect_encoding`), so the latin-1 / koi8-r test modules decode
  correctly. A file whose declaration is invalid falls back to strict UTF-8; a file that still
  does not decode (e.g. `test/tokenizedata/badsyntax_pep3120.py`, deliberately invalid) is skipped.
- `files` are UTF-8. A `.txt` / `.json` / `.jsonl` file that is not valid UTF-8 is checked
  before any of its rows is used (one streaming decode pass) and then skipped whole, so a
  skipped file never contributes half its rows.
Skipped files are logged once (warning) and counted in `CorpusStats.skipped_files`, which
`prepare` records in the manifest.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import glob
import hashlib
import io
import logging
import os
import platform
import sysconfig
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpt4_lightning.data.config import SOURCES, DataConfig
from gpt4_lightning.data.shards import DataError

log = logging.getLogger(__name__)

# file suffix -> HF datasets builder
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class CorpusStats:
    """Counts of one pass over the corpus (reset at the start of each pass)."""

    documents: int = 0
    empty_documents: int = 0
    skipped_files: list[str] = field(default_factory=list)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's `.py` files, sorted by relative path (stable across machines)."""
    root = root or stdlib_root()
    if not root.is_dir():
        raise DataError(f"the standard library directory {root} (sysconfig 'stdlib') does not exist; "
                        "use data=files data.path=... instead")
    excluded = {"site-packages", "dist-packages", "__pycache__"}
    files = []
    # os.walk, pruned: rglob would list all of site-packages (torch, ...) before a filter could drop it
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if d not in excluded]
        files += [p for p in (Path(folder, n) for n in names if n.endswith(".py")) if p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_python_source(path: Path) -> str | None:
    """The text of a Python source file as Python decodes it (PEP 263), or None if it does not decode."""
    data = path.read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError:  # unknown or inconsistent declaration: fixtures in test/tokenizedata
        encoding = "utf-8"
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def is_utf8(path: Path, chunk: int = 1 << 20) -> bool:
    """Whether the whole file is valid UTF-8, checked in a streaming pass (constant memory)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def resolve_files(spec: str) -> list[Path]:
    """The text files named by `data.path`: a file, a folder (recursive) or a glob, sorted."""
    if glob.has_magic(spec):
        matches = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)]
        if not matches:
            raise DataError(f"data.path {spec!r} matches no file; check the pattern (globs are relative to "
                            f"the working directory {Path.cwd()})")
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"data.path {path} does not exist; set data.path to a txt/json/jsonl/parquet file, "
                            "a folder of them, or a glob")
        matches = [path]
    files: list[Path] = []
    for match in matches:
        if match.is_dir():
            files += [p for p in match.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS]
        elif match.suffix.lower() in BUILDERS:
            files.append(match)
        elif not glob.has_magic(spec):
            raise DataError(f"data.path {match} is not a {'/'.join(s[1:] for s in BUILDERS)} file; "
                            "convert it or point data.path at one")
    if not files:
        raise DataError(f"data.path {spec!r} holds no {'/'.join(s[1:] for s in BUILDERS)} file; "
                        "point data.path at text files")
    return sorted({p.absolute() for p in files})


@contextlib.contextmanager
def _no_download_count() -> Iterator[None]:
    """`load_dataset` of a local file sends a HEAD request to the hub to count a download of its
    builder (up to a 3 s timeout each, per file, on an offline cluster node); not for local files."""
    import datasets.config

    previous = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = previous


class Corpus:
    """The documents of `data_cfg` (the `data` config group); iterate it once per pass.

    Construction checks the inputs exist (a missing path raises `DataError` before anything is
    written); `describe()` is what the output's fingerprint is computed from.
    """

    def __init__(self, data_cfg: DataConfig) -> None:
        self.source = data_cfg.source
        if self.source not in SOURCES:
            raise ValueError(f"data.source={self.source!r} is not one of {', '.join(SOURCES)}")
        self.text_field = data_cfg.text_field or "text"
        self.name = data_cfg.name or self.source
        self.stats = CorpusStats()
        self._warned: set[str] = set()
        self.files: list[Path] = []
        if self.source == "stdlib":
            self.root = stdlib_root()
            self.files = stdlib_files(self.root)
        elif self.source == "files":
            if not data_cfg.path:
                raise ValueError("data.path is required for data=files: add data.path=<a txt/json/jsonl/parquet "
                                 "file, a folder of them, or a glob> to the command line")
            self.path_spec = str(data_cfg.path)
            self.files = resolve_files(self.path_spec)
        else:
            if not data_cfg.name:
                raise ValueError("data.name is required for data=hf_hub: add data.name=<dataset id on the hub> "
                                 "to the command line")
            self.hub_config = data_cfg.hub_config
            self.hub_split = data_cfg.hub_split or "train"
        self.hub_part: tuple[int, int] | None = None  # (index, count): `IterableDataset.shard`, contiguous
        self._stats: list[os.stat_result] | None = None  # of `files`: one stat each, for describe() and part()

    def part(self, index: int, count: int) -> Corpus:
        """Part `index` of `count` (for `prepare num_parts=count part=index`): a contiguous range of the files,
        each file in the part its middle byte falls in (balanced by bytes; every part at least one
        file), or a hub dataset's data files by `IterableDataset.shard(count, index, contiguous=True)`. The
        parts in order are the corpus in order, so merging them keeps its document order."""
        part = copy.copy(self)
        part.stats, part._warned = CorpusStats(), set()
        if self.source == "hf_hub":
            part.hub_part = (index, count)
            return part
        if count > len(self.files):
            raise DataError(f"num_parts={count} is more than the {len(self.files)} input files of "
                            f"{self.inputs()}; use num_parts <= {len(self.files)} (a part is at least one file)")
        sizes = np.array([st.st_size for st in self._file_stats()], dtype=np.float64)
        middles = np.cumsum(sizes) - sizes / 2  # a file goes to the part its middle byte falls in
        bounds = np.searchsorted(middles, sizes.sum() * np.arange(count + 1) / count, side="left")
        bounds[0], bounds[-1] = 0, len(self.files)
        for k in range(1, count):  # strictly increasing, room left for the parts after k
            bounds[k] = min(max(bounds[k], bounds[k - 1] + 1), len(self.files) - (count - k))
        part.files, part._stats = self.files[bounds[index] : bounds[index + 1]], None
        return part

    def spread(self) -> Corpus:
        """The same documents with the files in a fixed pseudo-random order (by a hash of each file name), so a
        prefix of it (a tokenizer's training sample) spans the corpus instead of its first folder. A hub
        dataset keeps its order."""
        spread = copy.copy(self)
        spread.stats, spread._warned = CorpusStats(), set()
        spread._stats = None
        spread.files = sorted(self.files, key=lambda p: hashlib.blake2b(str(p).encode(), digest_size=8).digest())
        return spread

    def describe(self, detailed: bool = True) -> dict[str, Any]:
        """The inputs, as JSON; `detailed` adds every file's size and mtime (for the fingerprint only)."""
        if self.source == "stdlib":
            return {"source": "stdlib", "python": platform.python_version(),
                    "implementation": platform.python_implementation(), "stdlib": str(self.root),
                    "files": len(self.files)}
        if self.source == "files":
            desc: dict[str, Any] = {"source": "files", "path": self.path_spec, "files": len(self.files),
                                    "text_field": self.text_field}
            if detailed:
                desc["stat"] = [[str(p), st.st_size, st.st_mtime_ns] for p, st in zip(self.files, self._file_stats(),
                                                                                        strict=True)]
            return desc
        return {"source": "hf_hub", "name": self.name, "hub_config": self.hub_config, "split": self.hub_split,
                "text_field": self.text_field}

    def _file_stats(self) -> list[os.stat_result]:
        if self._stats is None:
            self._stats = [p.stat() for p in self.files]
        return self._stats

    def inputs(self) -> str:
        """The inputs in words, for error messages."""
        if self.source == "stdlib":
            return f"the standard library at {self.root}"
        if self.source == "files":
            shown = ", ".join(str(p) for p in self.files[:3]) + (", ..." if len(self.files) > 3 else "")
            return f"data.path={self.path_spec} ({len(self.files)} files: {shown})"
        return f"hub dataset {self.name} (config {self.hub_config}, split {self.hub_split})"

    def __iter__(self) -> Iterator[str]:
        self.stats = CorpusStats()
        texts = {"stdlib": self._stdlib, "files": self._files, "hf_hub": self._hub}[self.source]()
        for text in texts:
            if text is None or not text.strip():
                self.stats.empty_documents += 1
                continue
            self.stats.documents += 1
            yield text

    def _skip(self, path: Path, why: str) -> None:
        self.stats.skipped_files.append(str(path))
        if str(path) not in self._warned:
            self._warned.add(str(path))
            # the stdlib's are CPython's deliberately broken test files: nothing for the user to fix
            log.log(logging.INFO if self.source == "stdlib" else logging.WARNING, "skipping %s: %s", path, why)

    def _stdlib(self) -> Iterator[str | None]:
        for path in self.files:
            text = read_python_source(path)
            if text is None:
                self._skip(path, "does not decode in its declared encoding (nor as UTF-8)")
                continue
            yield text

    def _files(self) -> Iterator[str | None]:
        from datasets import load_dataset

        for path in self.files:
            builder = BUILDERS[path.suffix.lower()]
            if path.stat().st_size == 0:  # no documents (and HF datasets' json reader fails on an empty file)
                continue
            if builder != "parquet" and not is_utf8(path):
                self._skip(path, "not valid UTF-8 (re-encode it to UTF-8 to include it)")
                continue
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            try:
                with _no_download_count():
                    dataset = load_dataset(builder, data_files=[str(path)], split="train", streaming=True, **kwargs)
                yield from self._texts(dataset, "text" if builder == "text" else self.text_field, str(path))
            except UnicodeDecodeError as e:  # not expected after is_utf8; keeps the policy if a builder differs
                self._skip(path, f"not valid UTF-8 ({e})")
            except DataError:
                raise
            except Exception as e:  # malformed JSON/parquet: pyarrow and datasets raise many types
                message = " ".join(str(e).split()) or type(e).__name__
                raise DataError(f"{path} cannot be read as {path.suffix.lower()[1:]} ({message}); fix or remove "
                                "that file (data.path)") from e

    def _hub(self) -> Iterator[str | None]:
        from datasets import load_dataset

        try:
            dataset = load_dataset(self.name, self.hub_config, split=self.hub_split, streaming=True)
        except Exception as e:  # datasets raises many types (not found, offline, bad config name)
            raise DataError(f"cannot open hub dataset {self.name!r} (config {self.hub_config!r}, split "
                            f"{self.hub_split!r}): {type(e).__name__}: {e}; check data.name, data.hub_config, "
                            "data.hub_split and the network (HF_HUB_OFFLINE)") from e
        if self.hub_part is not None:
            index, count = self.hub_part
            if count > dataset.num_shards:
                raise DataError(f"num_parts={count} is more than the {dataset.num_shards} data files of hub dataset "
                                f"{self.name}; use num_parts <= {dataset.num_shards}")
            dataset = dataset.shard(num_shards=count, index=index, contiguous=True)
        yield from self._texts(dataset, self.text_field, f"hub dataset {self.name}")

    def _texts(self, rows: Iterable[dict[str, Any]], column: str, origin: str) -> Iterator[str | None]:
        for row in rows:
            if column not in row:
                raise DataError(f"{origin} has no column {column!r} (columns: {', '.join(map(str, row))}); "
                                "set data.text_field to the column that holds the text")
            text = row[column]
            if text is not None and not isinstance(text, str):
                raise DataError(f"{origin}: column {column!r} holds {type(text).__name__} values, not text; "
                                "set data.text_field to a text column")
            yield text
