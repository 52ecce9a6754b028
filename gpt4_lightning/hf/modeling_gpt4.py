"""`GPT4ForCausalLM`: the GPT4 decoder as a transformers causal LM (logits, loss, `generate` with transformers'
KV cache). Its submodules are the GPT4's own (`net` = the `Transformer`), so its weights are named as the
framework names them and `GPT4.from_pretrained` reads the same files."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..model.config import GPT4Config
from ..model.transformer import Transformer
from .configuration_gpt4 import GPT4LightningConfig


class _CacheView:
    """transformers' `Cache` (`update(k, v, layer)`, per-layer lengths) seen as the decoder's cache protocol
    (`length`, `update(layer, k, v)`, `advance(n)`)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    @property
    def length(self) -> int:
        return int(self.cache.get_seq_length())

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.cache.update(k, v, layer)

    def advance(self, n: int) -> None:  # the Cache counts its own length
        pass


class GPT4ForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = GPT4LightningConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _supports_cache_class = True

    def __init__(self, config: GPT4LightningConfig) -> None:
        super().__init__(config)
        self.net = Transformer(GPT4Config.from_transformers(config.to_dict()))
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Only the computed buffers (rotary frequencies, ALiBi slopes: non-persistent, so transformers leaves
        them uninitialised) of the modules that hold nothing else: every weight comes from the checkpoint."""
        if (module._non_persistent_buffers_set and hasattr(module, "reset_parameters")
                and not any(True for _ in module.parameters(recurse=False))):
            module.reset_parameters()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.net.token_emb

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: Any = None,
                labels: Tensor | None = None, use_cache: bool | None = None, logits_to_keep: int = 0,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """`input_ids (b, n)` -> logits `(b, n, vocab)`; `labels (b, n)` (shifted here, -100 ignored) -> loss.
        Rows are not padded: positions (ALiBi, xPos) count from each row's first token."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("GPT4ForCausalLM takes unpadded rows only (attention_mask all ones): its positions "
                             "count from the first token of a row; use batch size 1 or rows of one length")
        logits = self.net(input_ids, _CacheView(cache) if cache is not None else None)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                     ignore_index=-100)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)
