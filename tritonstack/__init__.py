"""The `tritonstack` command: one console script whose sub-commands call into the packages."""
