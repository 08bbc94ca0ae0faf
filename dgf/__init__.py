"""dgf: train the Deep Generative Filter GAN to deblur photos."""

__version__ = "0.1.0"
#: The distribution's name on the package index (pyproject.toml's ``[project] name``);
#: ``dgf`` there is another project. The import name and the commands stay ``dgf``.
DISTRIBUTION = "deep-generative-filter"
