"""Data: tokenized shards on disk (`shards`), preparing them (`prepare`), streaming them (`datamodule`)."""
