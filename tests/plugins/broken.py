"""A plug-in module that fails on import (its error must reach the user as one line)."""

raise ImportError("toy plug-in needs a library that is not installed")
