"""neuroflow: neuroimaging AI in the clinical workflow."""

__version__ = "0.1.0"
