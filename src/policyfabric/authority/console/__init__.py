"""The web console: the fabric as a picture, served by the authority itself at ``/`` (``/ui``).

One HTML page, one script and one stylesheet of our own (``static/``), shipped in the wheel:
nothing is loaded from the internet, so the console works on an offline control network. The
page reads only the REST API, with the token the operator gives it, so it sees exactly what
that token sees (a member token: its tenant). ``/docs`` (Swagger UI) is served from the
swagger-ui files of the pinned ``swagger-ui-py`` package for the same reason.
The connectivity matrix and its reasons are computed server-side from the intent
(``matrix.py``, pure) and served as ``GET /v1/matrix``.
"""

from policyfabric.authority.console.web import mount

__all__ = ["mount"]
