"""lit_imit: one LightningModule per imitation-learning method, trained through one LightningCLI."""

__version__ = "0.1.0"
