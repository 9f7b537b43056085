"""The package version, in a module of its own: model directories and downloads record it, and
importing it must not import the package's top level (which reaches ``predict``)."""

__version__ = "0.1.0"
