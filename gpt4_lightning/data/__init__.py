"""Data, two systems that meet in one format: `shards` (token shards + manifest on disk) and `config` (the typed
`data`/`tokenizer` groups) at the base; `prepare/` (offline: text -> shards) and `stream/` (online: shards ->
training windows) above it, independent of each other."""
