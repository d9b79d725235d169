"""CIFAR-10 on disk and in memory.

- safe_pickle.py: the official pickle files read without trusting them.
- cifar_files.py: finding, downloading, verifying, reading and writing the official batches.
- loader.py: the data set held as tensors: splits, normalisation, augmentation, batches.
"""
