"""`python -m gpt4_lightning.export`: see `gpt4_lightning.cli.export`."""

from gpt4_lightning.cli.export import main

if __name__ == "__main__":
    main()
