"""lstm-pipeline: prepare -> train -> export -> validate for LSTM-family sequence models."""

__version__ = "0.1.0"
