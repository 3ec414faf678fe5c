"""Channels and label maps, the data check, preprocessing and augmentation, datasets, loaders."""
