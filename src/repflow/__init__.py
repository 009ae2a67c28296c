"""repflow: train, sample and evaluate diffusion transformers that lean on pretrained representations."""

__version__ = "0.1.0"
