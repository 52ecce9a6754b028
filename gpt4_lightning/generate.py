"""`python -m gpt4_lightning.generate`: see `gpt4_lightning.cli.generate`."""

from gpt4_lightning.cli.generate import main

if __name__ == "__main__":
    main()
