"""Generative and sequential recommendation on the Amazon 2014 5-core benchmarks.

The package is importable without the serving stack (it never imports grpc) so that training, evaluation and
benchmarks run on a plain Python + torch install.
"""
