"""The package version (a module of its own, so that any module can read it without importing the
package root and its lazy doors to the rest)."""

__version__ = "0.1.0"
