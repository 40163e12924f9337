"""Triton kernels of SGAN (installed as ``sgan.kernels``), one module per operator."""
