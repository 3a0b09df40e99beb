"""Helpers the engine (trainer) and the preprocessing (preprocess) share: user errors, atomic files, the data
folder layout, dataset images and captions, CPU thread settings. Imports nothing from either."""
