"""seelike: do vision transformers see like convolutional networks, for any timm model."""

__version__ = "0.1.0"
