"""`python -m gpt4_lightning.train`: see `gpt4_lightning.cli.train`."""

from gpt4_lightning.cli.train import main

if __name__ == "__main__":
    main()
