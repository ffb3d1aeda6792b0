"""runner: declarative PyTorch training experiments in Hydra YAML."""

import warnings

__version__ = "0.1.0"

# hydra-core 1.4 warns at every `instantiate` (its own included) without an execution whitelist:
# here every `_target_` comes from the user's own config files and command line, run as code
# anyway. Here, so that every process of a run (trainer.devices=N) has it too.
warnings.filterwarnings("ignore", message=r"hydra\.utils\.instantiate\(\) resolved _target_")
