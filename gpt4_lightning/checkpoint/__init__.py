"""The checkpoint format, in one place: names and `last`/`auto` (`paths`), the extra keys (`format`), the
atomic writer (`atomic`, a Lightning callback), and reading without unpickling (`load`).

Nothing is imported here, so reading a checkpoint does not import Lightning."""
