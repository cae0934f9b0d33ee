"""The engine's door: what the app (and any other client) may import.

Torch-free by contract (pyproject.toml's import-linter contracts): the config schema and its
choices, the memory estimate, device profiles, the export formats, user errors and the event
protocol. Everything else in engine/ runs in the engine process.
"""
