"""Online streaming of prepared shards: the bounded-handle window reader (`windows`), the O(1) seeded shuffle
(`permutation`), weighted mixtures (`mixture`), a prepared directory opened and checked without Lightning or torch
(`opened`), and the Lightning DataModule (`datamodule`). It reads only the shard format (`data.shards`)."""
