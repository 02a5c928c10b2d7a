"""The method registry: one file per method (docs/architecture.md, "How to add a method").

``get_method(name)`` returns the registered :class:`Method`; an unknown name fails listing
the registered ones. Importing this package registers the built-in methods.
"""
from bidm_jax.methods import bbcu, bidm, dorefa, fp, reactnet, reste, xnor, xnorpp  # noqa: F401
from bidm_jax.methods.base import (CalibrationContext, Method, get_method, list_methods,
                                   register_method)

# The methods this package registers (tests that run "every method" run these).
BUILT_IN = ("fp", "bidm", "xnor", "xnor++", "dorefa", "reactnet", "reste", "bbcu")

__all__ = ["Method", "CalibrationContext", "BUILT_IN", "get_method", "list_methods",
           "register_method"]
