"""runner: declarative PyTorch training experiments in Hydra YAML."""

__version__ = "0.1.0"
