"""A small web app on a finished run: score an X-ray (with Grad-CAM), run a reader study.

``fedsynth serve RUN_DIR [--real-data PATH]`` starts it; :func:`create_app` builds it.
"""

from fedsynth.webapp.app import create_app

__all__ = ["create_app"]
