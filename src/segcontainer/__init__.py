"""segcontainer: a drop-in, SageMaker-compatible semantic segmentation container."""

__version__ = "0.1.0"
