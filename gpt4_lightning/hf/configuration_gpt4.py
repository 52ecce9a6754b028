"""`GPT4LightningConfig`: the GPT4 arguments as a transformers config (`model_type` "gpt4_lightning").

The GPT4 arguments (`model/config.py`'s `GPT4Config` fields) are stored under their own names; the attributes
transformers' generic code reads (vocab size, layers, heads, positions, EOS) are derived from them.
"""

from __future__ import annotations

from transformers import PreTrainedConfig


class GPT4LightningConfig(PreTrainedConfig):
    model_type = "gpt4_lightning"
