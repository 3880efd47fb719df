"""Glioma segmentation model: network, synthetic training data, training, export and evaluation.

Training and export need the ``train`` extra (torch); nothing under ``services/`` imports this package.
"""
