"""Numerics against the lineage: x-transformers' TransformerWrapper(Decoder(...)) with the same
arguments and the same weights gives the same logits, flag by flag."""

import pytest
import torch

from gpt4_lightning import GPT4
from tests.helpers.models import TINY, perturb_
from tests.helpers.xt_reference import build_xtransformers, copy_weights

FLAG_SETS = {
    "all_seed_flags": {},
    "no_dim_scale": dict(attn_qk_norm_dim_scale=False),
    "no_qk_norm": dict(qk_norm=False),
    "no_attn_qk_norm": dict(attn_qk_norm=False),
    "no_alibi": dict(alibi_pos_bias=False),
    "alibi_non_power_of_2": dict(heads=6, alibi_num_heads=3),
    "alibi_all_heads": dict(alibi_num_heads=4),
    "no_rotary_xpos": dict(rotary_xpos=False),
    "multi_kv_heads": dict(attn_one_kv_head=False),
    "abs_pos_emb": dict(use_abs_pos_emb=True),
    "no_flash": dict(attn_flash=False),
    "nothing_positional": dict(alibi_pos_bias=False, rotary_xpos=False),
}


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
def test_logits_match_xtransformers(flags):
    model = perturb_(GPT4(**{**TINY, **flags}))
    reference = build_xtransformers(model.config)
    copy_weights(model, reference)
    tokens = torch.randint(0, TINY["num_tokens"], (2, 100))
    torch.testing.assert_close(model(tokens), reference(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
def test_parameter_count_matches_xtransformers(flags):
    model = GPT4(**{**TINY, **flags})
    reference = build_xtransformers(model.config)
    extra = 0
    if model.config.use_qk_norm and not model.config.attn_qk_norm_dim_scale:
        extra = model.config.heads * model.config.depth  # our qk-norm temperature is learned, theirs fixed
    assert model.num_params() == sum(p.numel() for p in reference.parameters()) + extra
