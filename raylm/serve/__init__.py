"""Serving: a Ray Serve application over raylm models (``raylm serve``).

``build_app`` is the application builder that ``serve run raylm.serve:build_app``, a
Serve config file and a KubeRay RayService name.
"""

from .app import build_app, serve_config

__all__ = ["build_app", "serve_config"]
