"""The bottom layer: small helpers every other folder may use and that import nothing of the package — file
writes that survive a crash (`files`), file locks (`locks`), what the environment says about this process
(`env`: rank, world size, the cache directory) and names (`names`: close-match suggestions, dtype names)."""
