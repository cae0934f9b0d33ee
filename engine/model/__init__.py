"""Base models: finding and loading them, the device they run on, memory they take, probing."""
