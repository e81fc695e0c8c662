"""The foundation every layer stands on: errors, registries, the cache, processes, progress."""
