"""The tokenizer `prepare` encodes with (the `tokenizer` config group), from HF `tokenizers`.

- `kind=file`: an existing `tokenizer.json` (`tokenizer.path`).
- `kind=hub`: `Tokenizer.from_pretrained(tokenizer.name)` (needs the network or the HF cache).
- `kind=bpe`: a byte-level BPE trained on the corpus's train documents (never on val, so val
  loss is measured on text the tokenizer did not see). Byte-level pre-tokenizer and decoder
  make every string encodable with no unknown token and `decode(encode(text)) == text`.

Every kind must have `tokenizer.eos_token` in its vocabulary: `prepare` appends its id after
every document, so a missing EOS is an error (naming the token and the tokenizer) rather than a
silent fallback to some other id. BPE adds the EOS to its special tokens if the config forgot it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gpt4_lightning.data.config import TOKENIZER_KINDS, TokenizerConfig
from gpt4_lightning.data.shards import DataError, Manifest

log = logging.getLogger(__name__)



def _kind(tok_cfg: TokenizerConfig) -> str:
    kind = str(tok_cfg.kind)
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer.kind={kind!r} is not one of {', '.join(TOKENIZER_KINDS)}")
    return kind


def describe(tok_cfg: TokenizerConfig) -> dict[str, Any]:
    """The tokenizer config as JSON, for the output fingerprint (a file is identified by its content)."""
    kind = _kind(tok_cfg)
    desc: dict[str, Any] = {"kind": kind, "eos_token": str(tok_cfg.eos_token)}
    if kind == "bpe":
        desc.update(vocab_size=int(tok_cfg.vocab_size), min_frequency=int(tok_cfg.min_frequency),
                    special_tokens=[str(t) for t in tok_cfg.special_tokens], train_bytes=tok_cfg.train_bytes)
    elif kind == "file":
        path = _tokenizer_path(tok_cfg)
        desc.update(path=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    else:
        desc.update(name=str(tok_cfg.name))
    return desc


def _tokenizer_path(tok_cfg: TokenizerConfig) -> Path:
    path = Path(str(tok_cfg.path)).expanduser()
    if not path.is_file():
        raise DataError(f"tokenizer.path {path} does not exist; point it at a tokenizer.json (or use tokenizer=bpe "
                        "to train one on the corpus)")
    return path.absolute()


def load_tokenizer(tok_cfg: TokenizerConfig) -> Tokenizer | None:
    """The configured tokenizer for `kind=file|hub` (EOS checked), None for `kind=bpe` (trained later)."""
    kind = _kind(tok_cfg)
    if kind == "bpe":
        check_bpe_config(tok_cfg)
        return None
    if kind == "file":
        path = _tokenizer_path(tok_cfg)
        origin = str(path)
        try:
            tokenizer = Tokenizer.from_file(origin)
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise DataError(f"{path} is not a valid tokenizer.json ({e}); point tokenizer.path at one saved by "
                            "HF tokenizers") from e
    else:
        origin = f"hub tokenizer {tok_cfg.name}"
        local = Path(str(tok_cfg.name)).expanduser() / "tokenizer.json"
        try:  # a local directory (a downloaded repo, an export) is read as transformers' from_pretrained would
            tokenizer = Tokenizer.from_file(str(local)) if local.is_file() else Tokenizer.from_pretrained(
                str(tok_cfg.name))
        except Exception as e:  # network, not found, gated: all surface as generic exceptions
            raise DataError(f"cannot load {origin} ({e}); check tokenizer.name and the network, or use "
                            "tokenizer=file tokenizer.path=<tokenizer.json>") from e
    eos_id(tokenizer, str(tok_cfg.eos_token), origin)
    return tokenizer


def check_bpe_config(tok_cfg: TokenizerConfig) -> None:
    specials = list(dict.fromkeys([*map(str, tok_cfg.special_tokens), str(tok_cfg.eos_token)]))
    smallest = len(pre_tokenizers.ByteLevel.alphabet()) + len(specials)
    if int(tok_cfg.vocab_size) < smallest:
        raise ValueError(f"tokenizer.vocab_size={tok_cfg.vocab_size} is too small: a byte-level BPE needs at least "
                         f"{smallest} (256 bytes + {len(specials)} special tokens)")
    if int(tok_cfg.min_frequency) < 0:
        raise ValueError(f"tokenizer.min_frequency={tok_cfg.min_frequency} must be >= 0")


def train_bpe(texts: Iterable[str], tok_cfg: TokenizerConfig) -> Tokenizer:
    """A byte-level BPE trained on `texts` (streamed: the trainer only keeps word counts)."""
    check_bpe_config(tok_cfg)
    eos = str(tok_cfg.eos_token)
    specials = list(dict.fromkeys([*map(str, tok_cfg.special_tokens), eos]))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(tok_cfg.vocab_size), min_frequency=int(tok_cfg.min_frequency), special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    log.info("trained a byte-level BPE: %d tokens (asked %s)", tokenizer.get_vocab_size(), tok_cfg.vocab_size)
    return tokenizer


def eos_id(tokenizer: Tokenizer, eos_token: str, origin: str) -> int:
    token_id = tokenizer.token_to_id(eos_token)
    if token_id is None:
        raise DataError(f"the EOS token {eos_token!r} is not in the vocabulary of {origin}; set tokenizer.eos_token "
                        "to one of its special tokens")
    return token_id


def vocab_size(tokenizer: Tokenizer) -> int:
    """One more than the largest id (what an embedding must hold), counting added tokens."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def tokenizer_and_eos(data_dir: str | None, tokenizer_path: str | None) -> tuple[Tokenizer, int | None]:
    """The tokenizer the model was trained with (from its prepared data dir unless a path is given)."""
    if tokenizer_path is None:
        if data_dir is None:
            raise ValueError("the checkpoint does not name its data directory; pass tokenizer_path=<tokenizer.json>")
        manifest = Manifest.load(data_dir)
        return Tokenizer.from_file(str(Path(data_dir) / manifest.tokenizer_file)), manifest.eos_id
    if not Path(tokenizer_path).is_file():
        raise ValueError(f"tokenizer_path={tokenizer_path} does not exist; point it at a tokenizer.json")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:  # tokenizers raises a bare Exception for anything it cannot parse
        raise ValueError(f"tokenizer_path={tokenizer_path} is not a tokenizer.json HF tokenizers can read ({e}); "
                         "point it at the tokenizer.json of the model's prepared data") from e
    return tokenizer, tokenizer.token_to_id("<|endoftext|>")


def run_tokenizer(meta: dict[str, Any], tokenizer_path: str | None, eos_token: str) -> tuple[str, str | None]:
    """tokenizer.json text and EOS token of a trained model: `tokenizer_path` (with `eos_token`), else the
    tokenizer of the prepared data its checkpoint names (`format.describe`: data_dir, or a mixture's first
    source), else an export's own (`meta["export"]`)."""
    if tokenizer_path:
        path = Path(tokenizer_path)
        if not path.is_file():
            raise ValueError(f"tokenizer_path={path} does not exist; point it at the tokenizer.json the model was "
                             "trained with")
        return path.read_text(), eos_token
    if meta.get("export"):
        export = Path(meta["export"])
        config = json.loads((export / "tokenizer_config.json").read_text())
        return (export / "tokenizer.json").read_text(), config.get("eos_token")
    sources = meta.get("data_sources") or []
    data_dir = meta.get("data_dir") or (sources[0]["dir"] if sources else None)
    if data_dir is None or not Path(data_dir, "manifest.json").is_file():
        raise ValueError(f"the checkpoint's data directory ({data_dir}) is not here to take the tokenizer from; pass "
                         "tokenizer_path=<the tokenizer.json the model was trained with>")
    manifest = Manifest.load(data_dir, check_sizes=False)
    text = Path(data_dir, manifest.tokenizer_file).read_text()
    return text, Tokenizer.from_str(text).id_to_token(manifest.eos_id)
