"""What forecasting and recsys both use: files, data folder, seeding and devices, tuning, training, the trie.

Importing this package (or any module of it but ``training``) loads no torch, so serving can
use it; the modules that need torch import it inside the functions that do.
"""
