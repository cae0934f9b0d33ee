"""EdgeTune's headless training engine. Never imports Qt; importing this package is cheap."""

__version__ = "0.1.0"
