"""mailer: email campaigns with compliance built in.

The library is the pipeline in `mailer.pipeline`; `mailer.cli` is a thin
command line over it.
"""
__version__ = "0.1.0"
