"""The fusion model: text + product sighting + face + prosody → intent, view reference, frustration.

``compose`` builds the training and evaluation turns, ``features`` computes and caches each modality's
input with the kiosk's own runtime code, ``nets`` holds the three variants, ``train`` trains and evaluates
them (docs/fusion.md). Export: ``export/fusion.py``; kiosk side: ``runtime/fusion.py``.
"""
