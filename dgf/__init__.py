"""dgf: train the Deep Generative Filter GAN to deblur photos."""

__version__ = "0.1.0"
