"""The bottom layer: helpers every other part of the package may use, importing nothing else
from it."""
