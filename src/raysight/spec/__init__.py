"""The spec layer: Pydantic models, site grammar, loading and the builder.

Imports no torch, Ray or transformers, so validating a spec is instant and the builder runs
anywhere.
"""

from .builder import SpecBuilder, file, noise, topk, zeros
from .load import SpecError, apply_overrides, dump_spec, load_spec, parse_spec, spec_hash
from .models import Spec
from .sites import Site, SiteError, parse_module_site, parse_value_site

__all__ = [
    "Site",
    "SiteError",
    "Spec",
    "SpecBuilder",
    "SpecError",
    "apply_overrides",
    "dump_spec",
    "file",
    "load_spec",
    "noise",
    "parse_module_site",
    "parse_spec",
    "parse_value_site",
    "spec_hash",
    "topk",
    "zeros",
]
