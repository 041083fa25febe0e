"""The API's routes, one module per resource, each an ``APIRouter`` that ``server.app``
includes: ``health``, ``status``, ``reconnect``, ``history``, ``notifications``, ``stream`` (the
live status changes) and ``amazon_consent`` (connecting Amazon from the browser)."""
