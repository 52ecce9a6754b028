"""The typed configs of the `data` and `tokenizer` groups (`conf/data/*.yaml`, `conf/tokenizer/*.yaml`) and of
`prepare`. Hydra types every value against these at compose time; `__post_init__` holds the range checks,
run when a composed config becomes these objects (`OmegaConf.to_object`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpt4_lightning.data.shards import DataError

SOURCES = ("stdlib", "files", "hf_hub", "mix")
TOKENIZER_KINDS = ("bpe", "file", "hub")
BYTE_ALPHABET = 256  # a byte-level BPE starts from every byte


@dataclass
class SourceConfig:
    """One source of `data=mix`: a prepared directory, a name (metrics `data/<name>/...`, `val/<name>/loss`) and a
    weight (> 0; the weights are normalised)."""

    name: str = "???"
    dir: str = "???"
    weight: float = 1.0


@dataclass
class DataConfig:
    """Where the text comes from (`prepare`) and how training windows are streamed (`GPT4DataModule`).

    source: stdlib (this interpreter's standard library) | files (`path`: a file, folder or glob of
        txt/json/jsonl/parquet) | hf_hub (`name`: a dataset id, streamed; `hub_config`, `hub_split`) | mix
        (`sources`: prepared directories with names and weights, trained on as one weighted stream).
    name: a label (the cache directory's name); the dataset id for hf_hub.
    dir: the prepared directory; None: `<cache_dir>/<name>-<fingerprint of the inputs>`.
    seq_len, batch_size (per rank), num_workers, seed: the DataModule's; verify: sha256 every shard on setup.
    document_mask: a window concatenates EOS-separated documents; with this a token attends only within its own
        document (the EOS opens the next one). Positions run on across the window: ALiBi and rotary-xPos see
        only distances, so a document's attention is the same wherever it starts.
    """

    source: str = "stdlib"
    name: str | None = "stdlib"
    path: str | None = None
    text_field: str = "text"
    hub_config: str | None = None
    hub_split: str = "train"
    dir: str | None = None
    val_fraction: float = 0.02  # of the documents, by a hash of their text
    shard_tokens: int = 16_777_216  # tokens per shard file (32 MiB of uint16)
    seq_len: int = 256
    batch_size: int = 8  # per rank
    num_workers: int = 0
    seed: int = 1234  # the data order's (with the epoch)
    verify: bool = False
    document_mask: bool = False
    sources: list[SourceConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source={self.source!r} is not one of {', '.join(SOURCES)}")
        if self.source == "mix" and not self.sources:
            raise ValueError("data=mix needs its sources: add 'data.sources=[{name:web,dir:/data/web,weight:0.7},"
                             "{name:code,dir:/data/code,weight:0.3}]' (prepared directories)")
        if self.sources and self.source != "mix":
            raise ValueError(f"data.sources is given but data.source={self.source}: select the mixture with data=mix")
        if self.sources and self.dir is not None:
            raise ValueError("data=mix reads data.sources; data.dir must stay null (each source has its dir)")
        if self.sources:
            check_sources([s.name for s in self.sources], [s.weight for s in self.sources])
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
        if self.shard_tokens <= 0:
            raise ValueError(f"data.shard_tokens={self.shard_tokens} must be positive")
        for key in ("seq_len", "batch_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"data.{key}={getattr(self, key)} must be an integer > 0")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 0")


@dataclass
class TokenizerConfig:
    """kind: bpe (a byte-level BPE of `vocab_size` trained on the corpus's train documents; `train_bytes` caps
    its sample, null: all of them) | file (`path`: a tokenizer.json) | hub (`name`: `Tokenizer.from_pretrained`).
    `eos_token` must be in the vocabulary: it ends every document."""

    kind: str = "bpe"
    eos_token: str = "<|endoftext|>"
    vocab_size: int = 8192
    min_frequency: int = 2
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>", "<|pad|>"])
    path: str | None = None
    name: str | None = None
    train_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer.kind={self.kind!r} is not one of {', '.join(TOKENIZER_KINDS)}")
        required = {"file": ("path", "<tokenizer.json>"), "hub": ("name", "<tokenizer id on the hub>")}.get(self.kind)
        if required and not getattr(self, required[0]):
            raise ValueError(f"tokenizer.{required[0]} is required for tokenizer={self.kind}: add "
                             f"tokenizer.{required[0]}={required[1]} to the command line")
        if self.kind == "bpe":
            specials = len(dict.fromkeys([*self.special_tokens, self.eos_token]))
            if self.vocab_size < BYTE_ALPHABET + specials:
                raise ValueError(f"tokenizer.vocab_size={self.vocab_size} is too small: a byte-level BPE needs at "
                                 f"least {BYTE_ALPHABET + specials} ({BYTE_ALPHABET} bytes + {specials} special "
                                 "tokens)")
            if self.min_frequency < 0:
                raise ValueError(f"tokenizer.min_frequency={self.min_frequency} must be >= 0")
            if self.train_bytes is not None and self.train_bytes <= 0:
                raise ValueError(f"tokenizer.train_bytes={self.train_bytes} must be > 0 (or null for all the train "
                                 "text)")


@dataclass
class PrepareConfig:
    """`python -m gpt4_lightning.prepare` (and the data half of `train`)."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    cache_dir: str | None = None  # default: $GPT4_LIGHTNING_CACHE, else ~/.cache/gpt4_lightning
    overwrite: bool = False  # redo even when a complete output for the same inputs exists
    num_proc: int | None = None  # tokenizer processes; None: all cores

    def __post_init__(self) -> None:
        if self.num_proc is not None and self.num_proc < 1:
            raise ValueError(f"num_proc={self.num_proc} must be >= 1 (or null for all cores)")


@dataclass
class PrepareCommandConfig(PrepareConfig):
    """`python -m gpt4_lightning.prepare`: a `PrepareConfig`, and the corpus in parts. `part=k` prepares part k
    of `num_parts` (a Slurm array task each); without `part`, the parts not yet prepared are prepared here and
    all of them merged into one prepared directory."""

    num_parts: int = 1
    part: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_parts < 1:
            raise ValueError(f"num_parts={self.num_parts} must be >= 1")
        if self.part is not None and not 0 <= self.part < self.num_parts:
            raise ValueError(f"part={self.part} must be in [0, num_parts={self.num_parts}): parts are numbered "
                             f"0..{self.num_parts - 1} (e.g. part=$SLURM_ARRAY_TASK_ID with --array=0-"
                             f"{self.num_parts - 1})")


def check_sources(names: list[str], weights: list[float]) -> None:
    """Names unique, weights > 0 (also checked when the config is typed, before anything is loaded)."""
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"data.sources names must be unique; {', '.join(dup)} given more than once")
    for name, weight in zip(names, weights, strict=True):
        if not weight > 0:
            raise DataError(f"data.sources: weight of {name!r} is {weight}; every weight must be > 0 (drop the "
                            "source to leave it out)")
