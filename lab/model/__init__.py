"""The scenario model: YAML in, typed and validated scenarios and their matrix of cells out.

Pure: no I/O beyond reading the YAML (and listing the fragments it may name)."""
