"""Offline data preparation: text corpus -> tokenizer + token shards + manifest (`pipeline.prepare`), in parts and
merged (`parts`), and the statistics of a prepared directory (`stats`). Nothing here is imported by training's
streaming side (`data.stream`); the two meet only in the shard format (`data.shards`)."""
