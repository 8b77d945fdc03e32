"""Sphinx configuration of the mimictheory API reference (`make docs`, warnings are errors)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "mimictheory"
author = "the mimictheory developers"
copyright = "2026, the mimictheory developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
html_theme = "alabaster"
html_static_path = []
html_theme_options = {"page_width": "1100px", "sidebar_width": "220px"}
suppress_warnings = ["myst.header"]
