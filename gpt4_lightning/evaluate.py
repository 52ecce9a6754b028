"""`python -m gpt4_lightning.evaluate`: see `gpt4_lightning.cli.evaluate`."""

from gpt4_lightning.cli.evaluate import main

if __name__ == "__main__":
    main()
