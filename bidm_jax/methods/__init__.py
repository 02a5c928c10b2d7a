"""The method registry: one file per method (docs/architecture.md, "How to add a method").

``get_method(name)`` returns the registered :class:`Method`; an unknown name fails listing
the registered ones. Importing this package registers the built-in methods.
"""
from bidm_jax.methods import (bbcu, bidm, binarydm, binarydm_baseline, dorefa,  # noqa: F401
                              efficientdm, fp, lsq, qdm, reactnet, reste, xnor, xnorpp)
from bidm_jax.methods.base import (CalibrationContext, Method, get_method, list_methods,
                                   register_method)

# The methods this package registers (tests that run "every method" run these).
BUILT_IN = ("fp", "bidm", "xnor", "xnor++", "dorefa", "reactnet", "reste", "bbcu", "binarydm",
            "binarydm_baseline", "lsq", "qdm", "efficientdm")
# The W1A1 methods of BiDM's tables (1-bit activations, one sign plane per weight).
W1A1 = ("bidm", "xnor", "xnor++", "dorefa", "reactnet", "reste", "bbcu")

__all__ = ["Method", "CalibrationContext", "BUILT_IN", "W1A1", "get_method", "list_methods",
           "register_method"]
