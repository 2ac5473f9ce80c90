"""Offline default studies: real models and data that install from PyPI, built once into the cache directory
in the public file formats the recipes read, so defaults and user data go through the same loaders."""
