"""Segmentation: sliding-window inference through the inference backend, post-processing, volumetry."""
