"""Datasets: reading files, detecting their schema, turning rows into training examples."""
