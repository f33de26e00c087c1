"""The methods, one package each (config, modules, attach, objective), and the registry that names them."""

from msta_fast.methods.base import Attachment, Encoded, Method, MethodConfig, Objective, OptionError
from msta_fast.methods.registry import get_method, list_methods, register_method

__all__ = ["Attachment", "Encoded", "Method", "MethodConfig", "Objective", "OptionError", "get_method", "list_methods",
           "register_method"]
