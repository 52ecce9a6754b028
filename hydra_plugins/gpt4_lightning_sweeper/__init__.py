"""Hydra finds its plugins under `hydra_plugins`: the sweeper of `python -m gpt4_lightning.train -m` lives here."""
