"""One FastAPI router per area: ``meta`` (health, tasks), ``scoring``, ``batch``, ``reviews``, ``pages``.

Handlers only translate HTTP to calls on the services in :class:`~rubricate.serve.http.ServerContext`.
"""
