"""`python -m gpt4_lightning.report <run dir>`: see `gpt4_lightning.cli.report`."""

from gpt4_lightning.cli.report import main

if __name__ == "__main__":
    main()
