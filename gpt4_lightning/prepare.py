"""`python -m gpt4_lightning.prepare`: see `gpt4_lightning.cli.prepare`."""

from gpt4_lightning.cli.prepare import main

if __name__ == "__main__":
    main()
