"""The LightningModule (training/module.py) under a real Lightning Trainer on CPU, in process: document masking
reaches its loss, token ids are checked on the host, gradients are clipped with the fused optimizer."""

import pytest
import torch

from tests.helpers.models import TINY


def test_document_masking_reaches_the_loss_the_lightning_module_trains_on():
    """data.document_mask: the module's loss is the model's loss with each window's document ids (EOS = 3),
    which differs from the unmasked loss; without the flag it is the unmasked loss."""
    from gpt4_lightning import GPT4Config
    from gpt4_lightning.model.kernels import document_ids
    from gpt4_lightning.training.module import GPT4LitModule

    batch = torch.randint(4, TINY["num_tokens"], (2, 65))
    batch[:, [10, 40]] = 3
    losses = {}
    for masked in (True, False):
        torch.manual_seed(0)
        module = GPT4LitModule(GPT4Config(**TINY), optimizer=torch.optim.AdamW, document_mask=masked, eos_id=3)
        module.configure_model()
        with torch.no_grad():
            losses[masked] = module.model.loss(batch, module.documents(batch))
            expected = module.model.loss(batch, document_ids(batch, 3) if masked else None)
        assert losses[masked] == expected
    assert losses[True] != losses[False]



def test_token_ids_are_checked_on_the_host_not_read_back_in_forward(tmp_path):
    """Trained with the GPT4DataModule, forward's id check is off (it reads ids back from the device: a sync every
    step) and the DataModule checks each batch in host memory instead, so a damaged shard is still one error
    naming the data, also where the bad id is a target only (forward never sees it)."""
    import lightning as L
    import numpy as np

    from gpt4_lightning import GPT4Config
    from gpt4_lightning.data.shards import DataError, Manifest, ShardWriter
    from gpt4_lightning.data.stream.datamodule import GPT4DataModule
    from gpt4_lightning.training.module import GPT4LitModule

    vocab, seq = TINY["num_tokens"], 16
    tokens = np.arange(400) % vocab
    tokens[24 * seq] = vocab + 44  # the last window's last token: a target, no window's input
    splits = {}
    for split in ("train", "val"):
        writer = ShardWriter(tmp_path, split, np.dtype(np.uint16), len(tokens))
        writer.add(tokens if split == "train" else tokens[:100])
        splits[split] = writer.close()
    Manifest("uint16", vocab, 0, "tokenizer.json", "", splits).save(tmp_path)

    module = GPT4LitModule(GPT4Config(**TINY), optimizer=torch.optim.AdamW)
    datamodule = GPT4DataModule(tmp_path, seq_len=seq, batch_size=4, max_token_id=vocab)
    trainer = L.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    with pytest.raises(DataError, match=rf"token ids in \[\d+, {vocab + 44}\], outside the model's "
                                        rf"\[0, num_tokens={vocab}\): a shard is damaged"):
        trainer.fit(module, datamodule=datamodule)
    assert 0 < trainer.global_step < 12  # steps ran until the damaged window's batch
    assert module.model.checks_token_values is False


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true"])
def test_gradients_are_clipped_with_the_fused_optimizer_at_every_precision(tmp_path, precision):
    """`optim.fused: true` with `gradient_clip_val`: Lightning's mixed-precision plugin refuses to clip for a fused
    optimizer (also under bf16-mixed, where nothing is scaled), so the module clips itself; under 16-mixed (a
    GradScaler) the optimizer is built unfused so that clipping sees unscaled gradients. The gradients the step
    used (still there after it) have norm <= the clip value."""
    import functools

    import lightning as L

    from gpt4_lightning import GPT4Config
    from gpt4_lightning.training.module import GPT4LitModule

    clip = 1e-3
    norms = []

    class GradNormAfterStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            norms.append(float(torch.nn.utils.get_total_norm(grads)))

    tokens = torch.randint(0, TINY["num_tokens"], (16, 17))
    loader = torch.utils.data.DataLoader(tokens, batch_size=4)
    module = GPT4LitModule(GPT4Config(**TINY), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, fused=True))
    from lightning.pytorch.plugins import MixedPrecision
    # 16-mixed is refused on CPU by name (Lightning switches to bf16): its plugin, with a CPU GradScaler
    amp = {"16-mixed": {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]}}
    trainer = L.Trainer(max_steps=3, accelerator="cpu", gradient_clip_val=clip, logger=False,
                        **amp.get(precision, {"precision": precision}),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[GradNormAfterStep()], default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert len(norms) == 3 and max(norms) <= clip * 1.01, norms
    fused = trainer.optimizers[0].defaults["fused"]
    assert fused is (precision != "16-mixed")
