"""Apps and konnectors: installing them from their sources, and where they live."""
