"""Build the lineage's model (x-transformers `TransformerWrapper(Decoder(...))`) with the same
arguments as a `GPT4`, and copy a GPT4's weights into it, for parity tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from gpt4_lightning import GPT4, GPT4Config


def build_xtransformers(cfg: GPT4Config) -> nn.Module:
    from x_transformers import Decoder, TransformerWrapper

    decoder = Decoder(
        dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, attn_dim_head=cfg.dim_head,
        alibi_pos_bias=cfg.alibi_pos_bias, alibi_num_heads=cfg.alibi_num_heads,
        rotary_xpos=cfg.rotary_xpos, rotary_emb_dim=cfg.rotary_dim if cfg.rotary_xpos else None,
        attn_flash=cfg.attn_flash, attn_one_kv_head=cfg.attn_one_kv_head,
        attn_qk_norm=cfg.use_qk_norm, attn_qk_norm_dim_scale=cfg.attn_qk_norm_dim_scale,
        ff_mult=cfg.ff_mult,
        # x-transformers drops learned absolute positions when rotary is on; GPT4 honours the flag
        disable_abs_pos_emb=not cfg.use_abs_pos_emb, verbose=False,
    )
    return TransformerWrapper(num_tokens=cfg.num_tokens, max_seq_len=cfg.max_seq_len,
                              use_abs_pos_emb=cfg.use_abs_pos_emb, attn_layers=decoder)


def copy_norm(xt_norm: nn.Module, norm: nn.Module) -> None:
    # x-transformers stores gains as offsets from 1 (`unit_offset`) by default
    xt_norm.gamma.copy_(norm.gamma - float(xt_norm.unit_offset))


@torch.no_grad()
def copy_weights(model: GPT4, xt: nn.Module) -> None:
    """Copy `model`'s parameters into the x-transformers model `xt` (same arguments)."""
    net, cfg = model.net, model.config
    xt.token_emb.emb.weight.copy_(net.token_emb.weight)
    if cfg.use_abs_pos_emb:
        xt.pos_emb.emb.weight.copy_(net.abs_pos_emb.weight)
    xt.to_logits.weight.copy_(net.to_logits.weight)
    copy_norm(xt.attn_layers.final_norm, net.decoder.norm)
    h, kvh, d = cfg.heads, cfg.kv_heads, cfg.dim_head
    for i, block in enumerate(net.decoder.blocks):
        attn_layer, ff_layer = xt.attn_layers.layers[2 * i], xt.attn_layers.layers[2 * i + 1]
        copy_norm(attn_layer[0][0], block.attn_norm)
        q, k, v = block.attn.to_qkv.weight.split((h * d, kvh * d, kvh * d), dim=0)
        xattn = attn_layer[1]
        xattn.to_q.weight.copy_(q)
        xattn.to_k.weight.copy_(k)
        xattn.to_v.weight.copy_(v)
        xattn.to_out.weight.copy_(block.attn.to_out.weight)
        if cfg.use_qk_norm and cfg.attn_qk_norm_dim_scale:
            xattn.qk_norm_q_scale.copy_(block.attn.qk_norm.q_scale)
            xattn.qk_norm_k_scale.copy_(block.attn.qk_norm.k_scale)
        copy_norm(ff_layer[0][0], block.ff_norm)
        ff_layer[1].ff[0][0].weight.copy_(block.ff.proj_in.weight)
        ff_layer[1].ff[0][0].bias.copy_(block.ff.proj_in.bias)
        ff_layer[1].ff[2].weight.copy_(block.ff.proj_out.weight)
        ff_layer[1].ff[2].bias.copy_(block.ff.proj_out.bias)
